"""Direct (per-task, supervised) losses (paper-spec §3.1).

Pure functions of tensors, then thin modules that store the hyperparameters (style rule 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_KINDS = ("l1", "mse", "logl1", "smoothl1")
IGNORE_INDEX = -1


def seg_loss(logits: torch.Tensor, target: torch.Tensor,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over non-ignored pixels (paper-spec §3.1).

    Args:
        logits: (B, K, H, W) segmentation logits.
        target: (B, H, W) long class indices, ``ignore_index`` (-1) = ignore.

    Returns:
        Scalar: the mean over all non-ignored pixels of the batch. A batch with every pixel
        ignored gives 0 (still connected to ``logits``, so backward works) rather than NaN.

    Examples:
        >>> seg_loss(torch.zeros(1, 4, 2, 2), torch.tensor([[[0, 1], [-1, 3]]]))
        tensor(1.3863)
    """
    _check_seg(logits, target, "seg_loss")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    valid = (target != ignore_index).sum()
    return total / valid.clamp_min(1)


def depth_error(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-pixel phi(pred - target): |e| (l1), e^2 (mse), log(1+|e|) (logl1), smooth-L1 beta=1."""
    e = pred - target
    if kind == "l1":
        return e.abs()
    if kind == "mse":
        return e.square()
    if kind == "logl1":
        return torch.log1p(e.abs())
    if kind == "smoothl1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    raise ValueError(f"unknown depth loss kind '{kind}'; choose one of {list(DEPTH_KINDS)}")


def masked_image_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean per image, then mean over the images with at least one valid pixel.

    values, mask: (B, 1, H, W); mask bool (None = all valid). No valid pixel anywhere -> 0
    (connected to ``values``). Invalid pixels are selected away with ``where`` so a NaN/inf
    there cannot leak into the value or the gradient.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.bool().expand_as(values)
    values = torch.where(mask, values, torch.zeros_like(values))
    count = mask.flatten(1).sum(1)                        # (B,)
    per_image = values.flatten(1).sum(1) / count.clamp_min(1)
    has_valid = (count > 0).to(values.dtype)
    return (per_image * has_valid).sum() / has_valid.sum().clamp_min(1)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
               kind: str = "l1") -> torch.Tensor:
    """Masked direct depth loss (paper-spec §3.1).

    L = mean_b [ sum_p m_b(p) phi(pred_b(p) - target_b(p)) / sum_p m_b(p) ], over images with
    valid pixels. Depth units are the dataset's (metres for NYUv2, inverse depth for
    Cityscapes and the synthetic city).

    Args:
        pred, target: (B, 1, H, W) depth; mask: (B, 1, H, W) bool, True = valid (None = all).
        kind: ``l1`` (paper default) | ``mse`` | ``logl1`` | ``smoothl1``.

    Examples:
        >>> p, t = torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[0.0, 0.0]]]])
        >>> depth_loss(p, t, torch.tensor([[[[True, False]]]]))
        tensor(1.)
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"depth_loss expects pred and target of shape (B, 1, H, W); got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None and mask.shape != pred.shape:
        raise ValueError(f"depth mask must have shape {tuple(pred.shape)}; got "
                         f"{tuple(mask.shape)}")
    return masked_image_mean(depth_error(pred, _fill_invalid(pred, target, mask), kind), mask)


def _fill_invalid(pred: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """Target with invalid pixels set to the (detached) prediction: a NaN/inf there would
    otherwise reach the gradient through phi' (0 * NaN = NaN)."""
    if mask is None:
        return target
    return torch.where(mask.bool(), target, pred.detach())


def _check_seg(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{name} expects logits (B, K, H, W) and target (B, H, W); got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"{name}: target must be a long tensor of class indices; got "
                         f"{target.dtype}")


class SegLoss(nn.Module):
    """Module form of :func:`seg_loss`."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return seg_loss(logits, target, self.ignore_index)


class DepthLoss(nn.Module):
    """Module form of :func:`depth_loss`."""

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in DEPTH_KINDS:
            raise ValueError(f"unknown depth loss kind '{kind}'; choose one of {list(DEPTH_KINDS)}")
        self.kind = kind

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return depth_loss(pred, target, mask, self.kind)
