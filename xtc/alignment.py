"""The paper's two claims as measured quantities (paper-spec §4.3; anchors.md §5 item 2).

Pure computation (torch + numpy; figures live in ``xtc.viz.alignment_plots``):

* :func:`alignment_curves` -- tidy rows (one per run and epoch) of the gradient cosine between
  each direct loss and its cross-task term on the shared encoder (logged by ``fit`` when
  ``train.grad_cosine_every > 0``) and of the validation consistency energy.
* :func:`energy_error_correlation` -- does the consistency energy point at errors? Pearson and
  Spearman correlation between energy and error per pixel and per image, and the AUROC of the
  energy as a detector of erroneous pixels.
* :func:`energy_maps` -- numpy maps of one batch for plotting (energy next to error).

Energies are those of :func:`xtc.metrics.consistency_energy_maps`: seg energy is
KL(softmax(seg) || softmax(depth2seg)) per pixel, depth energy |seg2depth - depth| per pixel
(depth units of the dataset). Errors: seg -- the pixel is misclassified (ignore pixels left
out); depth -- |depth - depth_target| on valid pixels (``depth_mask``). AUROC positives: seg --
misclassified pixels; depth -- pixels whose absolute error is above the median absolute error
of the evaluated pixels.

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

__all__ = ["CURVE_COLUMNS", "alignment_curves", "summarize_curves", "auroc", "pearson", "spearman", "rankdata",
           "energy_error_correlation", "correlation_table", "energy_maps", "history_of"]

CURVE_COLUMNS = ("run", "epoch", "grad_cos_seg", "grad_cos_depth", "energy", "seg_energy",
                 "depth_energy", "seg_agreement")
_HISTORY_KEYS = {"grad_cos_seg": "train_grad_cos_seg", "grad_cos_depth": "train_grad_cos_depth",
                 "energy": "val_energy", "seg_energy": "val_seg_energy",
                 "depth_energy": "val_depth_energy", "seg_agreement": "val_seg_agreement"}


# ----------------------------------------------------------------------------- histories
def alignment_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Tidy rows ``{run, epoch, grad_cos_seg, grad_cos_depth, energy, seg_energy,
    depth_energy, seg_agreement}`` from ``{run name: history}``.

    A history is ``Run.history`` or ``results.json["history"]`` (one dict per epoch). Values a
    run did not log (no ``train.grad_cosine_every``, or an ``mtl`` run without energies) are
    NaN, so every row has every column.
    """
    rows = []
    for run, history in histories.items():
        for position, entry in enumerate(history):
            row = {"run": run, "epoch": int(entry.get("epoch", position))}
            for column, key in _HISTORY_KEYS.items():
                value = entry.get(key)
                row[column] = float(value) if value is not None else float("nan")
            rows.append(row)
    return rows


def summarize_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per run, from :func:`alignment_curves` rows: the mean gradient cosines over the logged
    epochs (``grad_cos_seg_mean``, ``grad_cos_depth_mean``) and the first and last epoch's
    validation energies (``energy_first``, ``energy_last``, same for ``seg_energy`` and
    ``depth_energy``). NaN where a run logged nothing."""
    out: dict[str, dict[str, float]] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["epoch"])
        summary = {}
        for key in ("grad_cos_seg", "grad_cos_depth"):
            values = np.array([r[key] for r in mine], dtype=float)
            summary[f"{key}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() \
                else float("nan")
        for key in ("energy", "seg_energy", "depth_energy"):
            summary[f"{key}_first"], summary[f"{key}_last"] = mine[0][key], mine[-1][key]
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
    """Numpy maps of one batch, for plotting: ``image`` (B,H,W,3), ``seg_pred``,
    ``seg_target`` (B,H,W int, -1 ignore), ``seg_error`` (B,H,W float: 1 misclassified,
    0 correct, NaN ignored), ``seg_energy``, ``depth_pred``, ``depth_target``, ``depth_error``
    (|pred - target|, NaN where invalid), ``depth_energy`` (B,H,W float). The model must be
    an ``xtc`` model (it needs the transferred predictions); it is left in eval mode.
    """
    from xtc.metrics import consistency_energy_maps

    if getattr(model, "transfer", None) is None:
        raise ValueError("energy maps need an xtc model (with seg2depth / depth2seg transfer "
                         "nets); this model has none: train with model.method=xtc")
    model.eval()
    device = next(model.parameters()).device
    images = batch["image"].to(device)
    predictions = {k: v.float() for k, v in model(images).items()}
    energy = consistency_energy_maps(predictions)
    seg_target = batch["seg_target"].to(device)
    seg_pred = predictions["seg"].max(1).indices
    seg_error = (seg_pred != seg_target).float()
    seg_error[seg_target < 0] = float("nan")
    depth_pred = predictions["depth"][:, 0]
    depth_target = batch["depth_target"].to(device)[:, 0]
    valid = batch.get("depth_mask", batch["depth_target"] > 0).to(device)[:, 0].bool()
    valid = valid & (depth_target > 0)
    depth_error = (depth_pred - depth_target).abs()
    depth_error[~valid] = float("nan")
    out = {"image": images.permute(0, 2, 3, 1), "seg_pred": seg_pred, "seg_target": seg_target,
           "seg_error": seg_error, "seg_energy": energy["seg"], "depth_pred": depth_pred,
           "depth_target": depth_target, "depth_error": depth_error,
           "depth_energy": energy["depth"]}
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def energy_error_correlation(model, loader: Iterable[Mapping[str, torch.Tensor]],
                             max_images: Optional[int] = None, max_pixels: int = 200_000,
                             seed: int = 0) -> dict[str, dict[str, float]]:
    """How well the consistency energy predicts the error, for ``seg`` and ``depth``.

    Per task: ``pixel_pearson``, ``pixel_spearman`` (energy vs error over all evaluated
    pixels; at most ``max_pixels``, a seeded random subset, for the statistics), ``image_pearson``,
    ``image_spearman`` (mean energy vs mean error per image), ``auroc`` (energy as a detector of
    erroneous pixels, see the module docstring), ``positive_rate`` (share of erroneous
    pixels), ``n_pixels``, ``n_images``. NaN where a statistic is undefined (e.g. no error).
    """
    pixels = {"seg": ([], []), "depth": ([], [])}
    images = {"seg": ([], []), "depth": ([], [])}
    seen = 0
    for batch in loader:
        maps = energy_maps(model, batch)
        for b in range(maps["image"].shape[0]):
            if max_images is not None and seen >= max_images:
                break
            seen += 1
            for task in ("seg", "depth"):
                err, eng = maps[f"{task}_error"][b], maps[f"{task}_energy"][b]
                ok = np.isfinite(err)
                if ok.any():
                    pixels[task][0].append(eng[ok])
                    pixels[task][1].append(err[ok])
                    images[task][0].append(float(eng[ok].mean()))
                    images[task][1].append(float(err[ok].mean()))
        if max_images is not None and seen >= max_images:
            break
    rng = np.random.default_rng(seed)
    out = {}
    for task in ("seg", "depth"):
        energy = np.concatenate(pixels[task][0]) if pixels[task][0] else np.zeros(0)
        error = np.concatenate(pixels[task][1]) if pixels[task][1] else np.zeros(0)
        if energy.size > max_pixels:
            keep = rng.choice(energy.size, max_pixels, replace=False)
            energy, error = energy[keep], error[keep]
        positive = error > 0.5 if task == "seg" else error > np.median(error) if error.size else error
        out[task] = {"pixel_pearson": pearson(energy, error),
                     "pixel_spearman": spearman(energy, error),
                     "image_pearson": pearson(*images[task]),
                     "image_spearman": spearman(*images[task]),
                     "auroc": auroc(energy, positive),
                     "positive_rate": float(positive.mean()) if positive.size else float("nan"),
                     "n_pixels": int(energy.size), "n_images": len(images[task][0])}
    return out


def correlation_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                      columns: Optional[Sequence[str]] = None) -> list[dict]:
    """Rows ``{run, task, auroc, pixel_pearson, ...}`` from ``{run: energy_error_correlation(...)}``
    (only ``columns`` of the statistics when given)."""
    return [{"run": run, "task": task,
             **{k: v for k, v in stats.items() if columns is None or k in columns}}
            for run, per_task in results.items() for task, stats in per_task.items()]
