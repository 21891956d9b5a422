"""Evaluation metrics across tasks: directions, Δm, and the consistency energy of transfers.

Each task's own metrics live in its module (:mod:`xtc.tasks.seg`: confusion matrix and mIoU;
:mod:`xtc.tasks.depth`: depth errors; :mod:`xtc.tasks.normal`: angle errors) and are
re-exported here. Every meter keeps its state in tensors and exposes ``state()``,
``load_state()`` and ``merge()``, so a distributed run can all-reduce ``state()`` and load it
back. All metrics are split-level: sums over every valid pixel of the split, never means of
per-batch means (unlike the paper's code, docs/method.md §7 and §11 items 15-17).

Directions and tasks of metric names come from the task registry (:data:`HIGHER_IS_BETTER`
and :data:`METRIC_TASK` are live views of it), so a task added later is known here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from xtc.tasks import TASKS, split_edge
from xtc.tasks.base import Meter
from xtc.tasks.depth import (DEPTH_EPS, DepthMeter, depth_error_sums,  # noqa: F401
                             depth_metrics)
from xtc.tasks.normal import NormalMeter, angle_error  # noqa: F401
from xtc.tasks.seg import (SegmentationMeter, confusion_matrix, iou_from_confusion,  # noqa: F401
                           legacy_miou_per_image, miou_from_confusion, pixel_acc_from_confusion)

__all__ = ["DELTA_M_CONVENTION", "DEPTH_EPS", "HIGHER_IS_BETTER", "confusion_matrix",
           "iou_from_confusion", "miou_from_confusion", "pixel_acc_from_confusion",
           "legacy_miou_per_image", "depth_error_sums", "depth_metrics", "angle_error",
           "consistency_energy_maps", "edge_energy_maps", "delta_m", "delta_m_task",
           "METRIC_TASK", "higher_is_better", "SegmentationMeter", "DepthMeter", "NormalMeter",
           "ConsistencyMeter"]

_Meter = Meter  # the meters' base class (xtc.tasks.base.Meter)


class _RegistryView(Mapping):
    """A read-only dict computed from the task registry at every access."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self) -> Iterator:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


# metric name -> True when higher is better (every task's metrics)
HIGHER_IS_BETTER: Mapping = _RegistryView(
    lambda: {m.name: m.higher_is_better for _, m in TASKS.all_metrics()})
# metric name -> the task it belongs to, for the task-weighted Δm
METRIC_TASK: Mapping = _RegistryView(lambda: {m.name: t for t, m in TASKS.all_metrics()})


# ----------------------------------------------------------------------------- consistency
def edge_energy_maps(predictions: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-pixel energy (B,H,W) of every transfer ``a2b`` in ``predictions`` against the
    direct prediction ``b``, as the target task defines it (``Task.energy_map``: KL for
    segmentation, |difference| for depth, 1 - cos for normals)."""
    out = {}
    for name, value in predictions.items():
        try:
            source, target = split_edge(name)
        except ValueError:
            continue
        if source in TASKS and target in TASKS and target in predictions:
            out[name] = TASKS.get(target)().energy_map(predictions[target], value)
    return out


def consistency_energy_maps(predictions: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-pixel consistency energy of each task that receives transfers (docs/method.md §4.3):
    ``<task>`` (B,H,W) is the mean over its incoming edges of :func:`edge_energy_maps`.

    Two tasks: ``seg`` is KL(softmax(seg) || softmax(depth2seg)) summed over the K classes
    (the authors' code divided it by K), ``depth`` is |seg2depth - depth| in depth units.
    """
    per_target: dict[str, list[Tensor]] = {}
    for name, energy in edge_energy_maps(predictions).items():
        per_target.setdefault(split_edge(name)[1], []).append(energy)
    if not per_target:
        raise ValueError(f"no transferred prediction <a>2<b> among {sorted(predictions)}: "
                         f"consistency energy needs an xtc model's outputs")
    return {t: maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)
            for t, maps in per_target.items()}


# ----------------------------------------------------------------------------- delta_m
# ----------------------------------------------------------------------------- delta_m
DELTA_M_CONVENTION = (
    "Δm% = (100/T) Σ_k (-1)^δ_k (M_k - M_base,k) / M_base,k, δ_k = 1 if higher is better: lower is "
    "better, negative = improvement over the baselines (the sign of Liu et al. 2021, CAGrad, and "
    "Navon et al. 2022, Nash-MTL; Maninis et al. 2019 define it with the opposite sign, higher is "
    "better). Metric-weighted: the mean over all T metrics. Task-weighted (Senushkin et al. 2023, "
    "Aligned-MTL): the mean over tasks of each task's mean over its metrics, so a task with many "
    "metrics (5 for surface normals) does not outweigh the others.")

def higher_is_better(metric: str) -> bool:
    """Direction of any logged metric name (``val_``/``test_`` prefixes allowed), for model
    selection.

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
        raise ValueError(f"{caller}: unknown direction for {unknown}; "
                         f"pass higher_is_better={{name: True/False}}")
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
        >>> # both 10% better
        >>> round(delta_m({"miou": 0.55, "abs_err": 0.9}, {"miou": 0.5, "abs_err": 1.0}), 6)
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
        >>> # seg -10%, depth 0%
        >>> round(delta_m_task({"miou": 0.55, "abs_err": 1.0, "rel_err": 1.0},
        ...                    {"miou": 0.5, "abs_err": 1.0, "rel_err": 1.0}), 6)
        -5.0
    """
    changes = _relative_changes(results, baselines, higher_is_better, "delta_m_task")
    tasks = {**METRIC_TASK, **(metric_task or {})}
    unknown = [k for k in changes if k not in tasks]
    if unknown:
        raise ValueError(f"delta_m_task: no task known for {unknown}; "
                         f"pass metric_task={{name: task}}")
    per_task: dict[str, list[float]] = {}
    for k, v in changes.items():
        per_task.setdefault(tasks[k], []).append(v)
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)



# ----------------------------------------------------------------------------- meters
class ConsistencyMeter(Meter):
    """Split-level consistency energy (docs/method.md §4.3, with the authors' quirks fixed).

    ``<b>_energy``: for each task b that receives transfers, the mean per-pixel energy of its
    incoming edges (``Task.energy_map``) over b's valid pixels; ``energy``: the mean over
    those tasks (two tasks: 0.5 seg_energy + 0.5 depth_energy); ``seg_agreement``: the
    fraction of valid pixels where a transfer into seg has the direct seg's argmax.

    Args:
        num_classes: K (checked against the ``seg`` prediction).
        edges: the transfers to measure (default the paper's ``seg2depth``, ``depth2seg``).
    """

    _state_names = ("sums",)

    def __init__(self, num_classes: int, edges: Optional[list[str]] = None) -> None:
        self.num_classes = num_classes
        self.edges = list(edges) if edges is not None else ["seg2depth", "depth2seg"]
        self.targets = list(dict.fromkeys(split_edge(e)[1] for e in self.edges))
        self.reset()

    def reset(self) -> None:  # per target: energy sum, pixel count; then agreeing, seg count
        self.sums = torch.zeros(2 * len(self.targets) + 2, dtype=torch.float64)

    @torch.no_grad()
    def update(self, predictions: dict[str, Tensor], batch: Optional[dict] = None, *,
               depth_mask: Optional[Tensor] = None, seg_valid: Optional[Tensor] = None) -> None:
        """predictions: the model's dict; ``batch`` gives each target task's valid pixels
        (``Task.valid``); without it, ``depth_mask`` (B,1,H,W) and ``seg_valid`` (B,H,W)
        bool do for the two-task graph (None: every pixel)."""
        if "seg" in predictions and predictions["seg"].shape[1] != self.num_classes:
            raise ValueError(f"'seg' has {predictions['seg'].shape[1]} classes, meter expects "
                             f"{self.num_classes}")
        legacy = {"depth": depth_mask, "seg": seg_valid}
        device = predictions[self.targets[0]].device
        self._follow(device)
        parts = []
        agree = torch.zeros((), dtype=torch.float64, device=device)
        seg_count = torch.zeros((), dtype=torch.float64, device=device)
        for target in self.targets:
            task = TASKS.get(target)()
            incoming = [e for e in self.edges if split_edge(e)[1] == target]
            direct = predictions[target]
            valid = task.valid(batch) if batch is not None else legacy.get(target)
            shape = (direct.shape[0], *direct.shape[2:])
            valid = (torch.ones(shape, dtype=torch.bool, device=device) if valid is None
                     else valid.reshape(shape).bool())
            energy = torch.zeros((), dtype=torch.float64, device=device)
            for name in incoming:
                energy = energy + task.energy_map(direct, predictions[name])[valid].double().sum()
                if target == "seg":
                    agree = agree + task.agreement(direct, predictions[name])[valid].double().sum()
                    seg_count = seg_count + valid.sum().double()
            parts += [energy, valid.sum().double() * len(incoming)]
        self.sums += torch.stack(parts + [agree, seg_count])

    def compute(self) -> dict[str, float]:
        values = self.sums.tolist()
        out, energies = {}, []
        for i, target in enumerate(self.targets):
            total, count = values[2 * i], values[2 * i + 1]
            out[f"{target}_energy"] = total / count if count else float("nan")
            energies.append(out[f"{target}_energy"])
        out["energy"] = sum(e / len(energies) for e in energies)
        if "seg" in self.targets:
            agree, n = values[-2], values[-1]
            out["seg_agreement"] = agree / n if n else float("nan")
        return out
