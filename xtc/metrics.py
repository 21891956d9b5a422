"""Evaluation metrics: segmentation (confusion matrix), depth errors, consistency energy, delta_m.

Pure functions of tensors come first; the meters below only accumulate their sums and counts
(kornia style). Every meter keeps its state in tensors and exposes ``state()``,
``load_state()`` and ``merge()``, so a distributed run can all-reduce ``state()`` and load it
back. All metrics are split-level: sums over every valid pixel of the split, never means of
per-batch means (unlike the paper's code, paper-spec §7 and §11 items 15-17).

Conventions (design.md): ``seg_target`` (B,H,W) int64 with -1 = ignore; segmentation
predictions are logits (B,K,H,W) float or labels (B,H,W) int; depth ``pred`` and ``target`` are
(B,1,H,W) with target 0 = invalid. Depth units are those of the inputs: inverse depth
(Cityscapes, synthetic city) or metres (NYUv2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DELTA_M_CONVENTION", "DEPTH_EPS", "HIGHER_IS_BETTER", "confusion_matrix",
           "iou_from_confusion", "miou_from_confusion", "pixel_acc_from_confusion",
           "legacy_miou_per_image", "depth_error_sums", "depth_metrics",
           "consistency_energy_maps", "delta_m", "delta_m_task", "METRIC_TASK", "higher_is_better",
           "SegmentationMeter", "DepthMeter", "ConsistencyMeter"]

DEPTH_EPS = 1e-6  # predictions are clamped to this before log and ratios (the depth head is unbounded)


# ----------------------------------------------------------------------------- segmentation
def _as_labels(logits_or_labels: Tensor, num_classes: int) -> Tensor:
    """Logits (B,K,H,W) float -> argmax labels (B,H,W); labels (B,H,W) int pass through."""
    x = logits_or_labels
    if x.is_floating_point():
        if x.dim() != 4 or x.shape[1] != num_classes:
            raise ValueError(f"segmentation logits must be (B,{num_classes},H,W); got {tuple(x.shape)}")
        return x.max(1).indices  # = argmax(1) (first maximum), ~7x faster on CPU
    if x.dim() != 3:
        raise ValueError(f"segmentation labels must be (B,H,W) integers; got {tuple(x.shape)}")
    return x.long()


def _check_label_range(labels: Tensor, k: int, message: str) -> None:
    """Labels outside [0, k) would be counted in another image's or class's bin: refuse them."""
    if labels.numel():
        lo, hi = torch.aminmax(labels)  # one pass
        if lo < 0 or hi >= k:
            raise ValueError(f"{message}; got range [{int(lo)}, {int(hi)}]")


def _per_image_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int,
                         pred_checked: bool = False) -> Tensor:
    """(B,K,K) int64 confusion per image (rows = ground truth, cols = prediction), one bincount.

    Ignored pixels go to one extra bin that is dropped, so no boolean indexing (which costs a
    nonzero() and a gather over every pixel). ``pred_checked``: pred came from an argmax over
    K classes, so its range check is skipped.
    """
    if pred.shape != target.shape or target.dim() != 3:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B,H,W)")
    k, b = num_classes, target.shape[0]
    valid = target != ignore_index
    _check_label_range(torch.where(valid, target, 0), k,
                       f"target labels must be in [0,{k}) or ignore_index={ignore_index}")
    if not pred_checked:
        _check_label_range(pred, k, f"predicted labels must be in [0,{k})")
    bins = b * k * k
    dtype = torch.int32 if bins < 2**31 else torch.int64  # int32 halves the memory traffic
    image = torch.arange(b, device=target.device, dtype=dtype).view(-1, 1, 1) * (k * k)
    idx = torch.where(valid, image + target.to(dtype) * k + pred.to(dtype), bins)
    return torch.bincount(idx.reshape(-1), minlength=bins + 1)[:bins].view(b, k, k)


def confusion_matrix(pred_labels: Tensor, target: Tensor, num_classes: int, ignore_index: int = -1) -> Tensor:
    """Confusion matrix (K,K) int64, rows = ground truth, cols = prediction.

    pred_labels: (B,H,W) int in [0,K) (or logits (B,K,H,W), argmaxed); target: (B,H,W) int with
    ``ignore_index`` pixels left out entirely.

    Example:
        >>> confusion_matrix(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 0, -1]]]), 2)
        tensor([[1, 1],
                [0, 0]])
    """
    pred = _as_labels(pred_labels, num_classes)
    return _per_image_confusion(pred, target, num_classes, ignore_index,
                                pred_checked=pred_labels.is_floating_point()).sum(0)


def iou_from_confusion(conf: Tensor) -> Tensor:
    """Per-class IoU_j = C_jj / (sum_i C_ji + sum_i C_ij - C_jj), float64 (K,).

    NaN where the union is 0, i.e. class j is absent from both prediction and ground truth.
    """
    conf = conf.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def miou_from_confusion(conf: Tensor) -> float:
    """Mean IoU over classes with a non-empty union (NaN classes excluded)."""
    return float(iou_from_confusion(conf).nanmean())


def pixel_acc_from_confusion(conf: Tensor) -> float:
    """Pixel accuracy = trace(C) / sum(C) over non-ignored pixels (NaN if there are none)."""
    total = conf.sum()
    return float(conf.diagonal().sum().double() / total) if total > 0 else float("nan")


def _legacy_from_per_image(per_image: Tensor) -> Tensor:
    conf = per_image.double()
    inter = conf.diagonal(dim1=1, dim2=2)  # (B,K)
    union = conf.sum(1) + conf.sum(2) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return iou.sum(1) / present.sum(1)  # NaN for an image with no valid pixel


def legacy_miou_per_image(pred_labels: Tensor, target: Tensor, num_classes: int,
                          ignore_index: int = -1) -> Tensor:
    """LEGACY per-image mIoU of the paper's code (MTAN's old formula, paper-spec §7), (B,) float64.

    Per image, over valid pixels: IoU_j = I_j / U_j for each class with U_j > 0 (a class predicted
    but absent from the ground truth counts 0), mean over those classes. Averaging this over
    images gives values ~8% below the dataset-level mIoU; use it only to compare with the paper.
    NaN for an image without valid pixels.
    """
    pred = _as_labels(pred_labels, num_classes)
    return _legacy_from_per_image(_per_image_confusion(pred, target, num_classes, ignore_index,
                                                       pred_checked=pred_labels.is_floating_point()))


# ----------------------------------------------------------------------------- depth
_DEPTH_KEYS = ("count", "abs", "rel", "sq", "log_sq", "d1", "d2", "d3")


def depth_error_sums(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                     eps: float = DEPTH_EPS) -> Tensor:
    """Float64 sums (8,) over valid pixels: count, Σ|p-t|, Σ|p-t|/t, Σ(p-t)², Σ(log p - log t)²,
    and the counts of max(p/t, t/p) < 1.25^k for k = 1, 2, 3.

    pred, target: (B,1,H,W) in the same unit (inverse depth or metres); valid = target > 0,
    AND ``mask`` if given. p is clamped to ``eps`` for the log and the ratios only.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth pred {tuple(pred.shape)} and target {tuple(target.shape)} must match (B,1,H,W)")
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
        return {k: float("nan") for k in ("abs_err", "rel_err", "rmse", "log_rmse", "delta1", "delta2", "delta3")}
    return {"abs_err": a / n, "rel_err": r / n, "rmse": math.sqrt(sq / n), "log_rmse": math.sqrt(lsq / n),
            "delta1": d1 / n, "delta2": d2 / n, "delta3": d3 / n}


def depth_metrics(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """abs_err = mean|p-t|, rel_err = mean|p-t|/t (a ratio, not x100), rmse = sqrt mean (p-t)²,
    log_rmse = sqrt mean (log max(p,eps) - log t)², delta_k = frac max(p/t,t/p) < 1.25^k.

    Means over all valid pixels (target > 0 and ``mask``); units of abs_err/rmse are the inputs'.
    """
    return _depth_metrics_from_sums(depth_error_sums(pred, target, mask))


# ----------------------------------------------------------------------------- consistency
def consistency_energy_maps(predictions: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-pixel consistency energy between transferred and direct predictions (paper-spec §4.3).

    ``seg`` (B,H,W): KL(softmax(seg) || softmax(depth2seg)) summed over the K classes (the
    authors' code divided it by K). ``depth`` (B,H,W): |seg2depth - depth| in depth units.
    """
    seg, d2s = predictions["seg"], predictions["depth2seg"]
    if seg.shape != d2s.shape or seg.dim() != 4:
        raise ValueError(f"'seg' {tuple(seg.shape)} and 'depth2seg' {tuple(d2s.shape)} must both be (B,K,H,W)")
    log_p, log_q = F.log_softmax(seg.float(), 1), F.log_softmax(d2s.float(), 1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    depth, s2d = predictions["depth"], predictions["seg2depth"]
    if depth.shape != s2d.shape:
        raise ValueError(f"'depth' {tuple(depth.shape)} and 'seg2depth' {tuple(s2d.shape)} must match (B,1,H,W)")
    return {"seg": kl, "depth": (s2d.float() - depth.float()).abs().squeeze(1)}


# ----------------------------------------------------------------------------- delta_m
DELTA_M_CONVENTION = (
    "Δm% = (100/T) Σ_k (-1)^δ_k (M_k - M_base,k) / M_base,k, δ_k = 1 if higher is better: lower is "
    "better, negative = improvement over the baselines (the sign of Liu et al. 2021, CAGrad, and "
    "Navon et al. 2022, Nash-MTL; Maninis et al. 2019 define it with the opposite sign, higher is "
    "better). Metric-weighted: the mean over all T metrics. Task-weighted (Senushkin et al. 2023, "
    "Aligned-MTL): the mean over tasks of each task's mean over its metrics, so a task with many "
    "metrics (5 for surface normals) does not outweigh the others.")

HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "pixel_acc": True, "delta1": True, "delta2": True, "delta3": True,
    "abs_err": False, "rel_err": False, "rmse": False, "log_rmse": False,
    # NYUv2 surface normals (MTAN protocol): angle errors in degrees, within-t° shares as fractions
    "normal_mean": False, "normal_median": False, "normal_11": True, "normal_22": True, "normal_30": True,
}

# The task each metric belongs to, for the task-weighted Δm.
METRIC_TASK: dict[str, str] = {
    "miou": "seg", "pixel_acc": "seg",
    **{m: "depth" for m in ("abs_err", "rel_err", "rmse", "log_rmse", "delta1", "delta2", "delta3")},
    **{m: "normal" for m in ("normal_mean", "normal_median", "normal_11", "normal_22", "normal_30")},
}

def higher_is_better(metric: str) -> bool:
    """Direction of any logged metric name (``val_``/``test_`` prefixes allowed), for model selection.

    Known: :data:`HIGHER_IS_BETTER`, ``miou_legacy`` and ``seg_agreement`` (higher); losses
    (``*loss*``) and energies (``*energy``) (lower). Anything else is an error.
    """
    name = metric.removeprefix("val_").removeprefix("test_")
    if name in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[name]
    if name in ("miou_legacy", "seg_agreement"):
        return True
    if "loss" in name or name.endswith("energy"):
        return False
    raise ValueError(f"unknown metric {metric!r}: choose one of {sorted(HIGHER_IS_BETTER)}, "
                     f"miou_legacy, seg_agreement, a loss (val_loss, loss_seg, ...) or an energy")


def _relative_changes(results: dict[str, float], baselines: dict[str, float],
                      higher_is_better: dict[str, bool] | None, caller: str) -> dict[str, float]:
    """(-1)^δ_k (M_k - M_b,k) / M_b,k per metric both contain (positive = worse)."""
    direction = {**HIGHER_IS_BETTER, **(higher_is_better or {})}
    common = [k for k in results if k in baselines]
    if not common:
        raise ValueError(f"{caller}: no metric in common between results {sorted(results)} "
                         f"and baselines {sorted(baselines)}")
    unknown = [k for k in common if k not in direction]
    if unknown:
        raise ValueError(f"{caller}: unknown direction for {unknown}; pass higher_is_better={{name: True/False}}")
    out = {}
    for k in common:
        base = float(baselines[k])
        if base == 0:
            raise ValueError(f"{caller}: baseline for {k!r} is 0, the relative change is undefined")
        out[k] = (-1.0 if direction[k] else 1.0) * (float(results[k]) - base) / base
    return out


def delta_m(results: dict[str, float], baselines: dict[str, float],
            higher_is_better: dict[str, bool] | None = None) -> float:
    """Metric-weighted Δm% of ``results`` against ``baselines`` over the metrics both contain.

    Δm% = (100/T) Σ_k (-1)^{δ_k} (M_m,k - M_b,k) / M_b,k, δ_k = 1 if higher is better, so
    **lower Δm is better and a negative value is an improvement** over the baselines
    (:data:`DELTA_M_CONVENTION`). ``higher_is_better`` extends/overrides :data:`HIGHER_IS_BETTER`.

    Example:
        >>> round(delta_m({"miou": 0.55, "abs_err": 0.9}, {"miou": 0.5, "abs_err": 1.0}), 6)  # both 10% better
        -10.0
    """
    changes = _relative_changes(results, baselines, higher_is_better, "delta_m")
    return 100.0 * sum(changes.values()) / len(changes)


def delta_m_task(results: dict[str, float], baselines: dict[str, float],
                 higher_is_better: dict[str, bool] | None = None,
                 metric_task: dict[str, str] | None = None) -> float:
    """Task-weighted Δm% (Senushkin et al. 2023): the mean over tasks of each task's mean
    relative change, over the metrics both contain; same sign as :func:`delta_m`.

    Equal to :func:`delta_m` when every task has as many metrics as the others.
    ``metric_task`` extends/overrides :data:`METRIC_TASK` (metric -> task name).

    Example:
        >>> round(delta_m_task({"miou": 0.55, "abs_err": 1.0, "rel_err": 1.0},
        ...                    {"miou": 0.5, "abs_err": 1.0, "rel_err": 1.0}), 6)  # seg -10%, depth 0%
        -5.0
    """
    changes = _relative_changes(results, baselines, higher_is_better, "delta_m_task")
    tasks = {**METRIC_TASK, **(metric_task or {})}
    unknown = [k for k in changes if k not in tasks]
    if unknown:
        raise ValueError(f"delta_m_task: no task known for {unknown}; pass metric_task={{name: task}}")
    per_task: dict[str, list[float]] = {}
    for k, v in changes.items():
        per_task.setdefault(tasks[k], []).append(v)
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


# ----------------------------------------------------------------------------- meters
class _Meter:
    """Tensor state named in ``_state_names``; summable across processes."""

    _state_names: tuple[str, ...] = ()

    def state(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).clone() for n in self._state_names}

    def load_state(self, state: dict[str, Tensor]) -> None:
        for n in self._state_names:
            cur = getattr(self, n)
            if state[n].shape != cur.shape:
                raise ValueError(f"state {n!r} has shape {tuple(state[n].shape)}, expected {tuple(cur.shape)}")
            setattr(self, n, state[n].to(cur.dtype).clone())

    def merge(self, other: "_Meter") -> None:
        """Add another meter's sums into this one (same as having seen both streams)."""
        for n in self._state_names:
            cur = getattr(self, n)
            setattr(self, n, cur + getattr(other, n).to(cur.device, cur.dtype))

    def _follow(self, device: torch.device) -> None:
        for n in self._state_names:
            setattr(self, n, getattr(self, n).to(device))


class SegmentationMeter(_Meter):
    """Dataset-level mIoU and pixel accuracy from one confusion matrix, plus the legacy mIoU.

    ``confusion`` (K,K) int64, rows = ground truth, cols = prediction. ``compute()`` returns
    ``miou``, ``pixel_acc``, ``iou_per_class`` (NaN for a class absent from prediction and
    ground truth over the whole split, excluded from the mean) and ``miou_legacy``: LEGACY,
    the paper code's per-image mIoU averaged over images (see :func:`legacy_miou_per_image`).
    """

    _state_names = ("confusion", "legacy_sum", "legacy_count")

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64)
        self.legacy_sum = torch.zeros((), dtype=torch.float64)
        self.legacy_count = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits_or_labels: Tensor, target: Tensor) -> None:
        pred = _as_labels(logits_or_labels, self.num_classes)
        self._follow(target.device)
        per_image = _per_image_confusion(pred, target, self.num_classes, self.ignore_index,
                                         pred_checked=logits_or_labels.is_floating_point())
        self.confusion += per_image.sum(0)
        legacy = _legacy_from_per_image(per_image)
        ok = ~legacy.isnan()  # images without any valid pixel are skipped
        self.legacy_sum += legacy[ok].sum()
        self.legacy_count += ok.sum()

    def compute(self) -> dict:
        n = int(self.legacy_count)
        return {"miou": miou_from_confusion(self.confusion),
                "pixel_acc": pixel_acc_from_confusion(self.confusion),
                "iou_per_class": iou_from_confusion(self.confusion).tolist(),
                "miou_legacy": float(self.legacy_sum) / n if n else float("nan")}


class DepthMeter(_Meter):
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


class ConsistencyMeter(_Meter):
    """Split-level consistency energy (paper-spec §4.3, with the authors' quirks fixed).

    seg_energy = mean per-pixel KL(softmax(seg) || softmax(depth2seg)) (over ``seg_valid``
    pixels if given); depth_energy = mean |seg2depth - depth| (over ``depth_mask`` pixels if
    given); energy = 0.5 seg_energy + 0.5 depth_energy; seg_agreement = fraction of (seg_valid)
    pixels where argmax(depth2seg) == argmax(seg).
    """

    _state_names = ("sums",)  # seg KL sum, seg pixel count, agreeing pixels, depth sum, depth count

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(5, dtype=torch.float64)

    @torch.no_grad()
    def update(self, predictions: dict[str, Tensor], depth_mask: Tensor | None = None,
               seg_valid: Tensor | None = None) -> None:
        """predictions: model dict; depth_mask (B,1,H,W) or (B,H,W) bool; seg_valid (B,H,W) bool."""
        if predictions["seg"].shape[1] != self.num_classes:
            raise ValueError(f"'seg' has {predictions['seg'].shape[1]} classes, meter expects {self.num_classes}")
        maps = consistency_energy_maps(predictions)
        self._follow(maps["seg"].device)
        sv = torch.ones_like(maps["seg"], dtype=torch.bool) if seg_valid is None \
            else seg_valid.reshape(maps["seg"].shape).bool()
        dv = torch.ones_like(maps["depth"], dtype=torch.bool) if depth_mask is None \
            else depth_mask.reshape(maps["depth"].shape).bool()
        agree = predictions["depth2seg"].max(1).indices == predictions["seg"].max(1).indices
        self.sums += torch.stack([maps["seg"][sv].double().sum(), sv.sum().double(), agree[sv].sum().double(),
                                  maps["depth"][dv].double().sum(), dv.sum().double()])

    def compute(self) -> dict[str, float]:
        kl, n_seg, agree, dep, n_dep = self.sums.tolist()
        seg_e = kl / n_seg if n_seg else float("nan")
        dep_e = dep / n_dep if n_dep else float("nan")
        return {"seg_energy": seg_e, "depth_energy": dep_e, "energy": 0.5 * seg_e + 0.5 * dep_e,
                "seg_agreement": agree / n_seg if n_seg else float("nan")}
