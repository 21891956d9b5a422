"""Surface normals: three channels, normalised to unit length, 1 - cosine loss, angle metrics.

Batch: ``normal_target`` (B,3,H,W), unit vectors where valid, and ``normal_mask`` (B,1,H,W)
bool. Prediction ``normal`` (B,3,H,W), unconstrained; it is normalised to unit length before
every loss and metric, and fed to a transfer net as unit vectors.

Convention (camera frame): x to the right, y up, z toward the camera, so a surface seen
from the front has n_z > 0, a floor or road under a level camera is (0, 1, 0). A horizontal
flip negates n_x; a scale-crop leaves normals unchanged (they do not scale like depth). The
synthetic city ships normals in this convention; NYUv2's ``normal/`` files are read as they
are (x is the horizontal image axis there too, which is all the flip relies on).

Loss (MTAN, Liu et al. 2019): 1 - cos(n_pred, n_gt) averaged over every valid pixel of the
batch; ``loss.normal_loss=l1`` takes sum_c |n_pred - n_gt| on unit vectors instead.

Metrics (MTAN protocol), over every valid pixel of the split, angles in degrees:
``normal_mean``, ``normal_median``, and the fractions of pixels under 11.25, 22.5 and 30
degrees: ``normal_11``, ``normal_22``, ``normal_30``. The median is the split's, streamed
through a histogram of :data:`MEDIAN_BINS` bins over [0, 180] degrees: the reported value is
the centre of the bin holding the lower median (the ceil(n/2)-th smallest angle, what
``torch.median`` returns), so it is within half a bin (:data:`MEDIAN_ERROR_DEG` = 0.005
degrees) of the exact one. Mean and fractions are exact sums.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from xtc.errors import ConfigError
from xtc.tasks.base import TASKS, Meter, Metric, Task

LOSS_KINDS = ("cosine", "l1")
THRESHOLDS = (11.25, 22.5, 30.0)
MEDIAN_BINS = 18000  # 0.01-degree bins over [0, 180]
MEDIAN_ERROR_DEG = 180.0 / MEDIAN_BINS / 2


def unit(vectors: Tensor) -> Tensor:
    """Normalise (B,3,H,W) vectors to unit length along dim 1 (zero vectors stay zero)."""
    return F.normalize(vectors, dim=1, eps=1e-12)


def normal_loss(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                kind: str = "cosine") -> Tensor:
    """Direct or transferred normal loss over the valid pixels of the batch.

    ``cosine``: mean of 1 - <unit(pred), target>; ``l1``: mean of sum_c |unit(pred) - target|.
    pred (B,3,H,W) any length; target (B,3,H,W) unit vectors (no grad); mask (B,1,H,W) bool.
    No valid pixel gives 0, connected to ``pred``.

    Examples:
        >>> p = torch.tensor([[[[2.0]], [[0.0]], [[0.0]]]])  # (1,3,1,1), along x
        >>> t = torch.tensor([[[[0.0]], [[1.0]], [[0.0]]]])  # along y: 90 degrees away
        >>> normal_loss(p, t)
        tensor(1.)
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"normal_loss expects pred and target of shape (B, 3, H, W); got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if kind not in LOSS_KINDS:
        raise ConfigError(f"unknown normal loss '{kind}'; choose one of {list(LOSS_KINDS)}")
    p = unit(pred)
    valid = (torch.ones_like(pred[:, :1], dtype=torch.bool) if mask is None
             else mask.bool().reshape(pred[:, :1].shape))
    t = torch.where(valid, target, p.detach())  # a NaN/inf target cannot reach the gradient
    per_pixel = (1.0 - (p * t).sum(1, keepdim=True) if kind == "cosine"
                 else (p - t).abs().sum(1, keepdim=True))
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)


def angle_error(pred: Tensor, target: Tensor) -> Tensor:
    """(B,H,W) angle in degrees between unit(pred) and unit(target), from atan2(|p x t|,
    p . t), which stays accurate near 0 and 180 degrees (acos does not)."""
    p, t = unit(pred.float()), unit(target.float())
    cross = torch.linalg.vector_norm(torch.cross(p, t, dim=1), dim=1)
    return torch.rad2deg(torch.atan2(cross, (p * t).sum(1)))


class NormalMeter(Meter):
    """Split-level angle metrics (module docstring). State: ``sums`` (count, sum of angles,
    counts under each threshold) and ``histogram`` (:data:`MEDIAN_BINS` bins), float64."""

    _state_names = ("sums", "histogram")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2 + len(THRESHOLDS), dtype=torch.float64)
        self.histogram = torch.zeros(MEDIAN_BINS, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        """pred (B,3,H,W); target (B,3,H,W) unit vectors; mask (B,1,H,W) bool (None: all)."""
        self._follow(target.device)
        angles = angle_error(pred, target)
        if mask is not None:
            angles = angles[mask.reshape(angles.shape).bool()]
        angles = angles.reshape(-1)
        counts = [(angles < t).sum() for t in THRESHOLDS]
        self.sums += torch.stack([angles.new_tensor(float(angles.numel())).double(),
                                  angles.double().sum(), *(c.double() for c in counts)])
        bins = (angles.double() * (MEDIAN_BINS / 180.0)).long().clamp_(0, MEDIAN_BINS - 1)
        self.histogram += torch.bincount(bins, minlength=MEDIAN_BINS).double()

    def compute(self) -> dict[str, float]:
        n, total, *under = self.sums.tolist()
        if n == 0:
            return {m.name: float("nan") for m in Normals.metrics}
        cumulative = torch.cumsum(self.histogram, 0)
        k = math.ceil(n / 2)  # the lower median's rank
        index = int(torch.searchsorted(cumulative, torch.tensor(float(k), dtype=torch.float64,
                                                                 device=cumulative.device)))
        median = (index + 0.5) * 180.0 / MEDIAN_BINS
        return {"normal_mean": total / n, "normal_median": median,
                **{f"normal_{int(t)}": c / n for t, c in zip(THRESHOLDS, under)}}


@TASKS.register("normal")
class Normals(Task):
    """Surface normals (``loss.normal_loss`` for the direct loss and every transfer into
    normals)."""

    title = "surface normals"
    batch_keys = ("normal_target", "normal_mask")
    augment = {"normal_target": "vectors", "normal_mask": "mask"}
    metrics = (Metric("normal_mean", False, "degrees"), Metric("normal_median", False, "degrees"),
               Metric("normal_11", True, "fraction"), Metric("normal_22", True, "fraction"),
               Metric("normal_30", True, "fraction"))
    loss_term_unit = "1 - cos"
    energy_unit = "1 - cos(transferred, direct)"
    error_unit = "angle error (degrees)"

    @classmethod
    def from_config(cls, config, num_classes: int, **context) -> "Normals":
        return cls(num_classes, kind=config.loss.normal_loss)

    def channels(self) -> int:
        return 3

    def target(self, batch: dict) -> Tensor:
        return batch["normal_target"]

    def valid(self, batch: dict) -> Optional[Tensor]:
        return batch.get("normal_mask")

    def loss(self, prediction: Tensor, batch: dict) -> Tensor:
        return normal_loss(prediction, batch["normal_target"], batch.get("normal_mask"),
                           self.options.get("kind", "cosine"))

    def pseudo_target(self, prediction: Tensor) -> Tensor:
        return unit(prediction.detach())

    def transfer_loss(self, transferred: Tensor, target: Tensor, batch: dict) -> Tensor:
        return normal_loss(transferred, target, batch.get("normal_mask"),
                           self.options.get("kind", "cosine"))

    def transfer_input(self, prediction: Tensor) -> Tensor:
        return unit(prediction)

    def meter(self) -> NormalMeter:
        return NormalMeter()

    def measure(self, meter: NormalMeter, prediction: Tensor, batch: dict) -> None:
        meter.update(prediction, batch["normal_target"], batch.get("normal_mask"))

    def energy_map(self, direct: Tensor, transferred: Tensor) -> Tensor:
        """1 - cos between the transferred and the direct normals."""
        if direct.shape != transferred.shape:
            raise ValueError(f"normal energy: direct {tuple(direct.shape)} and transferred "
                             f"{tuple(transferred.shape)} must match (B,3,H,W)")
        return 1.0 - (unit(direct.float()) * unit(transferred.float())).sum(1)

    def error_map(self, prediction: Tensor, batch: dict) -> Tensor:
        angles = angle_error(prediction, batch["normal_target"])
        mask = batch.get("normal_mask")
        return angles if mask is None else torch.where(mask[:, 0].bool(), angles, 0.0)

    def draw(self, value: Tensor, valid: Optional[Tensor] = None):
        """(n + 1) / 2 as RGB: red = right, green = up, blue = toward the camera."""
        n = unit(value.detach().float().cpu()[None])[0]
        rgb = ((n + 1) / 2).permute(1, 2, 0).numpy()
        if valid is not None:
            rgb = rgb * valid.detach().cpu().reshape(rgb.shape[:2] + (1,)).numpy()
        return rgb
