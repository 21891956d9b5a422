"""Cross-task losses: consistency (vs detached direct predictions) and alignment (vs ground truth).

paper-spec §3.2-3.3. A transferred prediction is compared with a *target* that carries no
gradient: the ``pseudo_target`` (stop-grad direct prediction) for consistency, the ground
truth for alignment. So a cross-task term trains its transfer net, the *source* decoder and
the encoder, never the decoder that produced the target (the gradient-routing property).

Masks, the same for both versions: seg2depth uses the batch's ``depth_mask``; depth2seg ignores
pixels whose ground truth ``seg_target`` is -1 (as the authors' Cityscapes code masks the
consistency term with the label mask), so both versions see the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xtc.losses.direct import (DEPTH_KINDS, IGNORE_INDEX, _check_seg, _fill_invalid,
                               depth_error, masked_image_mean)

SEG2DEPTH_KINDS = ("ssim",) + DEPTH_KINDS
DEPTH2SEG_KINDS = ("ce", "kl")
CROSS_TASK_MODES = ("consistency", "alignment", "both")


def pseudo_targets(predictions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached direct predictions: ``depth`` (B, 1, H, W) and ``seg`` = argmax labels (B, H, W)."""
    return {"depth": predictions["depth"].detach(),
            "seg": predictions["seg"].detach().max(dim=1).indices}  # = argmax, faster on CPU


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                       max_val: float = 1.0, window_size: int = 3) -> torch.Tensor:
    """Masked structural dissimilarity clamp((1 - SSIM) / 2, 0, 1) (paper-spec §3.3).

    Uses ``kornia.metrics.ssim`` (Gaussian window, 'same' padding; the authors used 3x3 average
    pooling). SSIM's constants C1 = (0.01 max_val)^2, C2 = (0.03 max_val)^2 assume values in
    [0, max_val]: ``max_val=1`` suits inverse depth (Cityscapes, synthetic city); pass the depth
    range for metric depth (NYUv2, ~10 m), which the authors did not (§11 defect 13).
    Invalid pixels are zeroed in both maps before SSIM (as the authors did, so they look the
    same to every window) and excluded from the per-image mean; then batch mean.

    Shapes: x, y, mask (B, 1, H, W). Returns a scalar; 0 for identical maps.
    """
    import kornia  # heavy import kept local (style rule 7)

    if mask is not None:
        x = torch.where(mask.bool(), x, torch.zeros_like(x))
        y = torch.where(mask.bool(), y, torch.zeros_like(y))
    ssim = kornia.metrics.ssim(x, y, window_size, max_val=max_val)
    return masked_image_mean(((1.0 - ssim) / 2.0).clamp(0.0, 1.0), mask)


def seg2depth_loss(transferred: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor | None = None, kind: str = "l1",
                   ssim_max_val: float = 1.0) -> torch.Tensor:
    """Transferred-depth loss: masked ``l1`` (paper default) or ``ssim``; the direct-depth kinds
    (mse, logl1, smoothl1) are accepted too. Shapes (B, 1, H, W); target must carry no grad."""
    if transferred.shape != target.shape:
        raise ValueError(f"seg2depth_loss: transferred {tuple(transferred.shape)} and target "
                         f"{tuple(target.shape)} must have the same (B, 1, H, W) shape")
    target = _fill_invalid(transferred, target, mask)
    if kind == "ssim":
        return ssim_dissimilarity(transferred, target, mask, ssim_max_val)
    if kind not in DEPTH_KINDS:
        raise ValueError(f"unknown seg2depth loss '{kind}'; choose one of {list(SEG2DEPTH_KINDS)}")
    return masked_image_mean(depth_error(transferred, target, kind), mask)


def depth2seg_loss(logits: torch.Tensor, target_labels: torch.Tensor, kind: str = "ce",
                   label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Transferred-segmentation loss against (pseudo-)labels (paper-spec §3.3).

    q is the smoothed one-hot target: 1 - eps on the label, eps / (K - 1) elsewhere.
    ``ce``: -sum_c q_c log softmax(logits)_c; ``kl``: KL(q || softmax(logits)) =
    sum_c q_c (log q_c - log p_c) with 0 log 0 = 0 (a correct version of the authors' broken
    option, §11 defect 13; same gradient as ``ce``, minus the constant entropy of q).
    Both are averaged over the non-ignored pixels only (the authors counted masked pixels in
    the denominator); no valid pixel -> 0, connected to ``logits``.

    Shapes: logits (B, K, H, W); target_labels (B, H, W) long, ``ignore_index`` = ignore.
    """
    _check_seg(logits, target_labels, "depth2seg_loss")
    if kind not in DEPTH2SEG_KINDS:
        raise ValueError(f"unknown depth2seg loss '{kind}'; choose one of {list(DEPTH2SEG_KINDS)}")
    num_classes = logits.shape[1]
    eps = float(label_smoothing)
    valid = target_labels != ignore_index                          # (B, H, W)
    labels = torch.where(valid, target_labels, torch.zeros_like(target_labels))
    # one-hot by scatter: F.one_hot range-checks its input with two host syncs per call (a
    # GPU stall every step); labels are in range here. Built (B,H,W,K) and permuted, the
    # layout F.one_hot gave, so the loss is bit-identical to it.
    one_hot = (logits.new_zeros(*labels.shape, num_classes)
               .scatter_(-1, labels.unsqueeze(-1), 1.0).permute(0, 3, 1, 2))  # (B,K,H,W)
    q = one_hot * (1.0 - eps) + (1.0 - one_hot) * (eps / (num_classes - 1))
    log_p = F.log_softmax(logits, dim=1)
    per_pixel = -(q * log_p).sum(dim=1)                            # (B, H, W)
    if kind == "kl":
        per_pixel = per_pixel + torch.xlogy(q, q).sum(dim=1)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)


def _transferred_terms(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                       depth_target: torch.Tensor, seg_labels: torch.Tensor,
                       seg2depth: str, depth2seg: str, label_smoothing: float,
                       ssim_max_val: float) -> dict[str, torch.Tensor]:
    mask = batch.get("depth_mask")
    seg_gt = batch.get("seg_target")
    if seg_gt is not None:  # the ground-truth ignore mask applies to both versions
        seg_labels = torch.where(seg_gt == IGNORE_INDEX, torch.full_like(seg_labels, IGNORE_INDEX),
                                 seg_labels)
    return {
        "seg2depth": seg2depth_loss(predictions["seg2depth"], depth_target, mask, seg2depth,
                                    ssim_max_val),
        "depth2seg": depth2seg_loss(predictions["depth2seg"], seg_labels, depth2seg,
                                    label_smoothing),
    }


def consistency_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                     seg2depth: str = "l1", depth2seg: str = "ce", label_smoothing: float = 0.0,
                     ssim_max_val: float = 1.0) -> dict[str, torch.Tensor]:
    """Cross-task consistency (the authors' ``xtsc``; paper-spec §3.2): transferred predictions
    vs the :func:`pseudo_targets` (stop-grad direct depth, argmax of stop-grad direct logits).

    Label-free except for the masks (``depth_mask``, ``seg_target == -1``), used when present.
    Returns ``{"seg2depth": scalar, "depth2seg": scalar}``.
    """
    pseudo = pseudo_targets(predictions)
    return _transferred_terms(predictions, batch, pseudo["depth"], pseudo["seg"], seg2depth,
                              depth2seg, label_smoothing, ssim_max_val)


def alignment_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                   seg2depth: str = "l1", depth2seg: str = "ce", label_smoothing: float = 0.0,
                   ssim_max_val: float = 1.0) -> dict[str, torch.Tensor]:
    """Alignment (the authors' ``xtc``, Zamir et al. 2020's X-TC): transferred predictions vs
    the ground truth ``depth_target`` / ``seg_target``. Returns the same keys as
    :func:`consistency_loss`."""
    return _transferred_terms(predictions, batch, batch["depth_target"], batch["seg_target"],
                              seg2depth, depth2seg, label_smoothing, ssim_max_val)


def cross_task_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    mode: str = "consistency", **kinds) -> dict[str, torch.Tensor]:
    """``consistency`` | ``alignment`` | ``both`` (the mean of the two, so lambda keeps its scale)."""
    if mode == "consistency":
        return consistency_loss(predictions, batch, **kinds)
    if mode == "alignment":
        return alignment_loss(predictions, batch, **kinds)
    if mode == "both":
        a = consistency_loss(predictions, batch, **kinds)
        b = alignment_loss(predictions, batch, **kinds)
        return {k: 0.5 * (a[k] + b[k]) for k in a}
    raise ValueError(f"unknown cross_task '{mode}'; choose one of {list(CROSS_TASK_MODES)}")


class CrossTaskLoss(nn.Module):
    """Module form of :func:`cross_task_loss`; stores the mode and the loss kinds."""

    def __init__(self, mode: str = "consistency", seg2depth: str = "l1", depth2seg: str = "ce",
                 label_smoothing: float = 0.0, ssim_max_val: float = 1.0):
        super().__init__()
        if mode not in CROSS_TASK_MODES:
            raise ValueError(f"unknown cross_task '{mode}'; choose one of {list(CROSS_TASK_MODES)}")
        if seg2depth not in SEG2DEPTH_KINDS:
            raise ValueError(f"unknown seg2depth loss '{seg2depth}'; choose one of "
                             f"{list(SEG2DEPTH_KINDS)}")
        if depth2seg not in DEPTH2SEG_KINDS:
            raise ValueError(f"unknown depth2seg loss '{depth2seg}'; choose one of "
                             f"{list(DEPTH2SEG_KINDS)}")
        self.mode = mode
        self.kinds = dict(seg2depth=seg2depth, depth2seg=depth2seg,
                          label_smoothing=label_smoothing, ssim_max_val=ssim_max_val)

    def forward(self, predictions: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return cross_task_loss(predictions, batch, self.mode, **self.kinds)
