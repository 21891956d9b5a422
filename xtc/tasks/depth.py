"""Depth: one channel in the dataset's unit (inverse depth for Cityscapes and the synthetic
city, metres for NYUv2), masked L1 by default, the split-level depth errors.

Batch: ``depth_target`` (B,1,H,W), 0 = invalid, and ``depth_mask`` (B,1,H,W) bool. Prediction
``depth`` (B,1,H,W), unbounded, fed raw to a transfer net (docs/method.md §2.2-2.3).
Augmentation: a scale-crop by s multiplies inverse depth by s and divides metres by s.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from xtc.errors import ConfigError
from xtc.tasks.base import TASKS, Meter, Metric, Task, fill_invalid, heat, masked_image_mean

DEPTH_KINDS = ("l1", "mse", "logl1", "smoothl1")
TRANSFER_KINDS = ("ssim",) + DEPTH_KINDS  # loss.seg2depth_loss: every transfer into depth
DEPTH_EPS = 1e-6  # predictions are clamped to this before log and ratios (the head is unbounded)


# ----------------------------------------------------------------------------- losses
def depth_error(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
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
    raise ConfigError(f"unknown depth loss kind '{kind}'; choose one of {list(DEPTH_KINDS)}")


def depth_loss(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
               kind: str = "l1") -> Tensor:
    """Masked direct depth loss (docs/method.md §3.1).

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
    return masked_image_mean(depth_error(pred, fill_invalid(pred, target, mask), kind), mask)


def ssim_dissimilarity(x: Tensor, y: Tensor, mask: Optional[Tensor] = None,
                       max_val: float = 1.0, window_size: int = 3) -> Tensor:
    """Masked structural dissimilarity clamp((1 - SSIM) / 2, 0, 1) (docs/method.md §3.3).

    Uses ``kornia.metrics.ssim`` (Gaussian window, 'same' padding; the authors used 3x3 average
    pooling). SSIM's constants C1 = (0.01 max_val)^2, C2 = (0.03 max_val)^2 assume values in
    [0, max_val]: ``max_val=1`` suits inverse depth (Cityscapes, synthetic city); pass the depth
    range for metric depth (NYUv2, ~10 m), which the authors did not (§11 defect 13).
    Invalid pixels are zeroed in both maps before SSIM (as the authors did, so they look the
    same to every window) and excluded from the per-image mean; then batch mean.

    Shapes: x, y, mask (B, 1, H, W). Returns a scalar; 0 for identical maps.
    """
    import kornia  # heavy import kept local: `import xtc` stays fast

    if mask is not None:
        x = torch.where(mask.bool(), x, torch.zeros_like(x))
        y = torch.where(mask.bool(), y, torch.zeros_like(y))
    ssim = kornia.metrics.ssim(x, y, window_size, max_val=max_val)
    return masked_image_mean(((1.0 - ssim) / 2.0).clamp(0.0, 1.0), mask)


def seg2depth_loss(transferred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                   kind: str = "l1", ssim_max_val: float = 1.0) -> Tensor:
    """Transferred-depth loss, for every transfer into depth (``seg2depth``,
    ``normal2depth``): masked ``l1`` (paper default) or ``ssim``; the direct-depth kinds (mse,
    logl1, smoothl1) are accepted too. Shapes (B, 1, H, W); target must carry no grad."""
    if transferred.shape != target.shape:
        raise ValueError(f"seg2depth_loss: transferred {tuple(transferred.shape)} and target "
                         f"{tuple(target.shape)} must have the same (B, 1, H, W) shape")
    target = fill_invalid(transferred, target, mask)
    if kind == "ssim":
        return ssim_dissimilarity(transferred, target, mask, ssim_max_val)
    if kind not in DEPTH_KINDS:
        raise ConfigError(f"unknown seg2depth loss '{kind}'; choose one of {list(TRANSFER_KINDS)}")
    return masked_image_mean(depth_error(transferred, target, kind), mask)


# ----------------------------------------------------------------------------- metrics
_DEPTH_KEYS = ("count", "abs", "rel", "sq", "log_sq", "d1", "d2", "d3")


def depth_error_sums(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                     eps: float = DEPTH_EPS) -> Tensor:
    """Float64 sums (8,) over valid pixels: count, Σ|p-t|, Σ|p-t|/t, Σ(p-t)², Σ(log p - log t)²,
    and the counts of max(p/t, t/p) < 1.25^k for k = 1, 2, 3.

    pred, target: (B,1,H,W) in the same unit (inverse depth or metres); valid = target > 0,
    AND ``mask`` if given. p is clamped to ``eps`` for the log and the ratios only.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         f"must match (B,1,H,W)")
    valid = target > 0
    if mask is not None:
        valid = valid & mask.reshape(target.shape).bool()
    # Elementwise in float32 over every pixel, with no boolean indexing (a nonzero() and a gather
    # per call): invalid pixels get p = t = 1, so they add 0 to every error sum and exactly 1 to
    # every ratio count, which is subtracted. Per-batch float32 sums, accumulated in float64.
    n_valid = valid.sum()
    n_invalid = valid.numel() - n_valid
    p = torch.where(valid, pred.float(), 1.0)
    t = torch.where(valid, target.float(), 1.0)
    pc = p.clamp_min(eps)
    d = (p - t).abs()
    ratio = torch.maximum(pc / t, t / pc)
    sums = [d.sum(), (d / t).sum(), d.square().sum(), (pc.log() - t.log()).square().sum()]
    counts = [(ratio < 1.25 ** k).sum() - n_invalid for k in (1, 2, 3)]
    return torch.stack([n_valid.double()] + [x.double() for x in sums + counts])


def _depth_metrics_from_sums(s: Tensor) -> dict[str, float]:
    n, a, r, sq, lsq, d1, d2, d3 = s.tolist()
    if n == 0:
        return {k: float("nan") for k in ("abs_err", "rel_err", "rmse", "log_rmse",
                                          "delta1", "delta2", "delta3")}
    return {"abs_err": a / n, "rel_err": r / n, "rmse": math.sqrt(sq / n),
            "log_rmse": math.sqrt(lsq / n),
            "delta1": d1 / n, "delta2": d2 / n, "delta3": d3 / n}


def depth_metrics(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """abs_err = mean|p-t|, rel_err = mean|p-t|/t (a ratio, not x100), rmse = sqrt mean (p-t)²,
    log_rmse = sqrt mean (log max(p,eps) - log t)², delta_k = frac max(p/t,t/p) < 1.25^k.

    Means over all valid pixels (target > 0 and ``mask``); units of abs_err/rmse are the inputs'.
    """
    return _depth_metrics_from_sums(depth_error_sums(pred, target, mask))



class DepthMeter(Meter):
    """Split-level depth errors (see :func:`depth_metrics`), float64 sums over all valid pixels.

    Units follow the inputs: inverse depth (Cityscapes, synthetic city) or metres (NYUv2).
    """

    _state_names = ("sums",)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(_DEPTH_KEYS), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred, target (B,1,H,W); mask (B,1,H,W) bool, ANDed with target > 0."""
        self._follow(target.device)
        self.sums += depth_error_sums(pred, target, mask)

    def compute(self) -> dict[str, float]:
        return _depth_metrics_from_sums(self.sums)



# ----------------------------------------------------------------------------- the task
@TASKS.register("depth")
class Depth(Task):
    """Depth in the dataset's unit (``loss.depth_loss`` for the direct loss,
    ``loss.seg2depth_loss`` for every transfer into depth)."""

    title = "depth"
    batch_keys = ("depth_target", "depth_mask")
    augment = {"depth_target": "depth", "depth_mask": "mask"}
    metrics = (Metric("abs_err", False, "depth unit"), Metric("rel_err", False, "ratio"),
               Metric("rmse", False, "depth unit", delta_m=False),
               Metric("log_rmse", False, "log depth unit", delta_m=False),
               Metric("delta1", True, "fraction", delta_m=False),
               Metric("delta2", True, "fraction", delta_m=False),
               Metric("delta3", True, "fraction", delta_m=False))
    loss_term_unit = "depth unit"
    energy_unit = "|transferred - direct| (depth unit)"
    error_unit = "|error| (depth unit)"

    @classmethod
    def from_config(cls, config, num_classes: int, ssim_max_val: float = 1.0,
                    **context) -> "Depth":
        return cls(num_classes, kind=config.loss.depth_loss,
                   transfer_kind=config.loss.seg2depth_loss, ssim_max_val=ssim_max_val)

    def channels(self) -> int:
        return 1

    def target(self, batch: dict) -> Tensor:
        return batch["depth_target"]

    def valid(self, batch: dict) -> Optional[Tensor]:
        return batch.get("depth_mask")

    def loss(self, prediction: Tensor, batch: dict) -> Tensor:
        return depth_loss(prediction, batch["depth_target"], batch.get("depth_mask"),
                          self.options.get("kind", "l1"))

    def pseudo_target(self, prediction: Tensor) -> Tensor:
        return prediction.detach()

    def transfer_loss(self, transferred: Tensor, target: Tensor, batch: dict) -> Tensor:
        return seg2depth_loss(transferred, target, batch.get("depth_mask"),
                              self.options.get("transfer_kind", "l1"),
                              self.options.get("ssim_max_val", 1.0))

    def meter(self) -> "DepthMeter":
        return DepthMeter()

    def measure(self, meter: "DepthMeter", prediction: Tensor, batch: dict) -> None:
        meter.update(prediction, batch["depth_target"], batch.get("depth_mask"))

    def energy_map(self, direct: Tensor, transferred: Tensor) -> Tensor:
        """|transferred - direct| in depth units."""
        if direct.shape != transferred.shape:
            raise ValueError(f"depth energy: direct {tuple(direct.shape)} and transferred "
                             f"{tuple(transferred.shape)} must match (B,1,H,W)")
        return (transferred.float() - direct.float()).abs().squeeze(1)

    def error_map(self, prediction: Tensor, batch: dict) -> Tensor:
        target = batch["depth_target"]
        valid = (target > 0) & batch.get("depth_mask", target > 0).bool()
        return torch.where(valid, (prediction.float() - target).abs(), 0.0).squeeze(1)

    def draw(self, value: Tensor, valid: Optional[Tensor] = None):
        return heat(value.reshape(value.shape[-2:]), None if valid is None
                    else valid.reshape(value.shape[-2:]))
