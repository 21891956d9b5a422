"""The paper's two claims as measured quantities (docs/method.md §4.3).

Pure computation (torch + numpy; figures live in ``xtc.viz.alignment_plots``):

* :func:`alignment_curves` -- tidy rows (one per run and epoch) of the gradient cosine between
  each direct loss and its cross-task term on the shared encoder (logged by ``fit`` when
  ``train.grad_cosine_every > 0``) and of the validation consistency energy.
* :func:`energy_error_correlation` -- does the consistency energy point at errors? Pearson and
  Spearman correlation between energy and error per pixel and per image, and the AUROC of the
  energy as a detector of erroneous pixels.
* :func:`energy_maps` -- numpy maps of one batch for plotting (energy next to error).

Any task set: the tasks and edges come from the model (``model.tasks``, ``model.edges``) and
the task registry. Energies are those of :func:`xtc.metrics.edge_energy_maps` per edge
``a2b`` (``Task.energy_map`` of b: KL(softmax(b) || softmax(a2b)) for segmentation,
|a2b - b| in the dataset's depth units for depth, 1 - cos for normals) and of
:func:`xtc.metrics.consistency_energy_maps` per task (the mean over its incoming edges; with
two tasks seg energy is the depth2seg edge's, depth energy the seg2depth edge's). Errors are
those of b's direct prediction (``Task.error_map``) on b's valid pixels: seg -- the pixel is
misclassified (ignore pixels left out); depth -- |depth - depth_target| on valid pixels
(``depth_mask``); normals -- the angle to the ground truth in degrees (``normal_mask``).
AUROC positives: for a binary error (seg) the erroneous pixels; otherwise pixels whose error
is above the median error of the evaluated pixels.

Examples:
    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> round(spearman([1, 2, 3, 4], [1, 4, 9, 16]), 6)
    1.0
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["CURVE_COLUMNS", "alignment_curves", "curve_columns", "curve_tasks", "summarize_curves",
           "auroc", "pearson", "spearman", "rankdata", "energy_error_correlation",
           "energy_sources", "correlation_table", "energy_maps", "history_of"]

CURVE_COLUMNS = ("run", "epoch", "grad_cos_seg", "grad_cos_depth", "energy", "seg_energy",
                 "depth_energy", "seg_agreement")  # the two-task columns, always present
_HISTORY_KEYS = {"grad_cos_seg": "train_grad_cos_seg", "grad_cos_depth": "train_grad_cos_depth",
                 "energy": "val_energy", "seg_energy": "val_seg_energy",
                 "depth_energy": "val_depth_energy", "seg_agreement": "val_seg_agreement"}


def _history_keys(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, str]:
    """Column -> history key: the two-task columns, then ``grad_cos_<t>`` and ``<t>_energy``
    of every other registered task some history logged (``train_grad_cos_<t>``,
    ``val_<t>_energy``), in registry order."""
    from xtc.tasks import TASKS

    logged = {k for history in histories.values() for entry in history for k in entry}
    keys = dict(_HISTORY_KEYS)
    for task in TASKS.in_order():
        for column, key in ((f"grad_cos_{task}", f"train_grad_cos_{task}"),
                            (f"{task}_energy", f"val_{task}_energy")):
            if column not in keys and key in logged:
                keys[column] = key
    return keys


def curve_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of :func:`alignment_curves` rows: :data:`CURVE_COLUMNS`, then the extra
    tasks' ``grad_cos_<t>`` / ``<t>_energy``."""
    extra = [k for r in rows for k in r if k not in CURVE_COLUMNS]
    return [*CURVE_COLUMNS, *dict.fromkeys(extra)]


def curve_tasks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tasks the rows have a gradient-cosine or energy column for, in registry order
    (two tasks: seg, depth)."""
    from xtc.tasks import TASKS

    columns = set(curve_columns(rows))
    return [t for t in TASKS.in_order()
            if f"grad_cos_{t}" in columns or f"{t}_energy" in columns]


# ----------------------------------------------------------------------------- histories
def alignment_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Tidy rows ``{run, epoch, grad_cos_seg, grad_cos_depth, energy, seg_energy,
    depth_energy, seg_agreement}`` from ``{run name: history}``, plus ``grad_cos_<t>`` and
    ``<t>_energy`` for every other task a history logged (a three-task run: ``grad_cos_normal``
    = cos(∇L_normal, ∇ mean of L_normal2seg, L_normal2depth), ``normal_energy``).

    A history is ``Run.history`` or ``results.json["history"]`` (one dict per epoch). Values a
    run did not log (no ``train.grad_cosine_every``, or an ``mtl`` run without energies) are
    NaN, so every row has every column.
    """
    keys = _history_keys(histories)
    rows = []
    for run, history in histories.items():
        for position, entry in enumerate(history):
            row = {"run": run, "epoch": int(entry.get("epoch", position))}
            for column, key in keys.items():
                value = entry.get(key)
                row[column] = float(value) if value is not None else float("nan")
            rows.append(row)
    return rows


def summarize_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per run, from :func:`alignment_curves` rows: the mean gradient cosines over the logged
    epochs (``grad_cos_seg_mean``, ``grad_cos_depth_mean``, ``grad_cos_<t>_mean`` for every
    task of the rows) and the first and last epoch's validation energies (``energy_first``,
    ``energy_last``, same for every ``<t>_energy``). NaN where a run logged nothing."""
    tasks = curve_tasks(rows)
    columns = set(curve_columns(rows))
    cosines = [c for c in [f"grad_cos_{t}" for t in tasks] if c in columns]
    energies = ["energy"] + [c for c in [f"{t}_energy" for t in tasks] if c in columns]
    out: dict[str, dict[str, float]] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
        summary = {}
        for key in cosines:
            values = np.array([r.get(key, np.nan) for r in mine], dtype=float)
            summary[f"{key}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() \
                else float("nan")
        for key in energies:
            summary[f"{key}_first"] = mine[0].get(key, float("nan"))
            summary[f"{key}_last"] = mine[-1].get(key, float("nan"))
        out[run] = summary
    return out


def history_of(run_dir) -> list[dict]:
    """The per-epoch history stored in ``run_dir/results.json``."""
    from xtc import results

    return results.read(run_dir).get("history", [])


# ----------------------------------------------------------------------------- statistics
def rankdata(values) -> np.ndarray:
    """1-based ranks, ties get their average rank (as ``scipy.stats.rankdata``)."""
    values = np.asarray(values, dtype=float).ravel()
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant or has < 2 values."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.size < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(rankdata(x), rankdata(y))


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``labels`` (1 = positive).

    Rank formula (Mann-Whitney U / (n_pos n_neg)), ties counted as 1/2; NaN when one class is
    absent. 1 = every positive scores above every negative, 0.5 = chance.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"auroc: scores {scores.shape} and labels {labels.shape} must match")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(rankdata(scores)[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# ----------------------------------------------------------------------------- energy vs error
@torch.no_grad()
def energy_maps(model, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Numpy maps of one batch, for plotting: ``image`` (B,H,W,3); for every task t of the
    model ``<t>_pred`` and ``<t>_target`` (seg: (B,H,W) labels, -1 ignore; depth (B,H,W);
    normals (B,H,W,3) unit vectors), ``<t>_error`` (B,H,W float, NaN where t has no ground
    truth: seg 1 misclassified / 0 correct, depth |pred - target|, normals the angle in
    degrees); ``<t>_energy`` (B,H,W) for every task that receives transfers (the mean over
    its incoming edges) and ``<a2b>_energy`` per edge. Two tasks: ``seg_pred``,
    ``seg_target``, ``seg_error``, ``seg_energy``, ``depth_pred``, ``depth_target``,
    ``depth_error``, ``depth_energy`` (plus ``seg2depth_energy`` = ``depth_energy`` and
    ``depth2seg_energy`` = ``seg_energy``). The model must be an ``xtc`` model (it needs
    the transferred predictions); it is left in eval mode.
    """
    from xtc.analysis.predictions import error_maps, predict_batch, task_specs
    from xtc.metrics import consistency_energy_maps, edge_energy_maps

    if getattr(model, "transfer", None) is None:
        raise ValueError("energy maps need an xtc model (with transfer nets such as "
                         "seg2depth / depth2seg); this model has none: train with "
                         "model.method=xtc")
    batch, predictions = predict_batch(model, batch)
    specs = task_specs(model)
    out = {"image": batch["image"].permute(0, 2, 3, 1)}
    for task in model.tasks:
        spec, pred = specs[task], predictions[task]
        if task == "seg":
            out["seg_pred"], out["seg_target"] = pred.max(1).indices, batch["seg_target"]
        elif pred.shape[1] == 1:
            out[f"{task}_pred"] = pred[:, 0]
            out[f"{task}_target"] = spec.target(batch)[:, 0].float()
        else:
            out[f"{task}_pred"] = torch.nn.functional.normalize(pred, dim=1).permute(0, 2, 3, 1)
            out[f"{task}_target"] = spec.target(batch).float().permute(0, 2, 3, 1)
    for task, error in error_maps(predictions, batch, specs).items():
        out[f"{task}_error"] = error
    for task, energy in consistency_energy_maps(predictions).items():
        out[f"{task}_energy"] = energy
    for name, energy in edge_energy_maps(predictions).items():
        out[f"{name}_energy"] = energy
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def energy_sources(maps: Mapping[str, np.ndarray],
                   edges: Optional[bool] = None) -> list[tuple[str, str]]:
    """``(key, task)`` pairs to correlate from :func:`energy_maps` keys: every task with an
    error and an energy (``seg``, ``depth``, ``normal``: its mean energy), then, with
    ``edges`` (default: when some task receives more than one transfer), every edge ``a2b``
    (its own energy, against b's error). Two tasks: ``[("seg", "seg"), ("depth", "depth")]``."""
    from xtc.tasks import TASKS, split_edge

    tasks = [t for t in TASKS.in_order() if f"{t}_error" in maps and f"{t}_energy" in maps]
    pairs = []
    for key in maps:
        if not key.endswith("_energy"):
            continue
        try:
            source, target = split_edge(key[:-len("_energy")])
        except ValueError:
            continue
        if source in TASKS and target in tasks:
            pairs.append((key[:-len("_energy")], target))
    if edges is None:
        targets = [t for _, t in pairs]
        edges = any(targets.count(t) > 1 for t in targets)
    return [(t, t) for t in tasks] + (pairs if edges else [])


def energy_error_correlation(model, loader: Iterable[Mapping[str, torch.Tensor]],
                             max_images: Optional[int] = None, max_pixels: int = 200_000,
                             seed: int = 0, edges: Optional[bool] = None
                             ) -> dict[str, dict[str, float]]:
    """How well the consistency energy predicts the error, per task (``seg``, ``depth``,
    ``normal``, ...: the task's mean energy over its incoming edges against its error) and,
    with ``edges`` (default: when some task receives more than one transfer, e.g. three
    tasks), per edge ``a2b`` (that transfer's energy against b's error).

    Per key: ``pixel_pearson``, ``pixel_spearman`` (energy vs error over all evaluated
    pixels; at most ``max_pixels``, a seeded random subset, for the statistics), ``image_pearson``,
    ``image_spearman`` (mean energy vs mean error per image), ``auroc`` (energy as a detector of
    erroneous pixels, see the module docstring), ``positive_rate`` (share of erroneous
    pixels), ``n_pixels``, ``n_images``. NaN where a statistic is undefined (e.g. no error).
    Two tasks: exactly the keys ``seg`` and ``depth``.
    """
    pixels: dict[str, tuple[list, list]] = {}
    images: dict[str, tuple[list, list]] = {}
    sources: Optional[list[tuple[str, str]]] = None
    seen = 0
    for batch in loader:
        maps = energy_maps(model, batch)
        if sources is None:
            sources = energy_sources(maps, edges)
            for key, _ in sources:
                pixels[key], images[key] = ([], []), ([], [])
        for b in range(maps["image"].shape[0]):
            if max_images is not None and seen >= max_images:
                break
            seen += 1
            for key, task in sources:
                err, eng = maps[f"{task}_error"][b], maps[f"{key}_energy"][b]
                ok = np.isfinite(err)
                if ok.any():
                    pixels[key][0].append(eng[ok])
                    pixels[key][1].append(err[ok])
                    images[key][0].append(float(eng[ok].mean()))
                    images[key][1].append(float(err[ok].mean()))
        if max_images is not None and seen >= max_images:
            break
    rng = np.random.default_rng(seed)
    out = {}
    for key, _ in sources or []:
        energy = np.concatenate(pixels[key][0]) if pixels[key][0] else np.zeros(0)
        error = np.concatenate(pixels[key][1]) if pixels[key][1] else np.zeros(0)
        if energy.size > max_pixels:
            keep = rng.choice(energy.size, max_pixels, replace=False)
            energy, error = energy[keep], error[keep]
        binary = bool(error.size) and bool(np.isin(error, (0.0, 1.0)).all())
        positive = error > 0.5 if binary else error > np.median(error) if error.size else error
        out[key] = {"pixel_pearson": pearson(energy, error),
                    "pixel_spearman": spearman(energy, error),
                    "image_pearson": pearson(*images[key]),
                    "image_spearman": spearman(*images[key]),
                    "auroc": auroc(energy, positive),
                    "positive_rate": float(positive.mean()) if positive.size else float("nan"),
                    "n_pixels": int(energy.size), "n_images": len(images[key][0])}
    return out


def correlation_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                      columns: Optional[Sequence[str]] = None) -> list[dict]:
    """Rows ``{run, task, auroc, pixel_pearson, ...}`` from ``{run: energy_error_correlation(...)}``
    (only ``columns`` of the statistics when given); ``task`` is a task (its mean energy) or
    an edge ``a2b`` (that transfer's energy against b's error)."""
    return [{"run": run, "task": task,
             **{k: v for k, v in stats.items() if columns is None or k in columns}}
            for run, per_task in results.items() for task, stats in per_task.items()]
