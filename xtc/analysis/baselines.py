"""Trivial predictors every result should beat: the floor a report compares against.

* segmentation: the training split's most frequent class, predicted everywhere;
* depth: the training split's mean valid depth, predicted everywhere;
* normals (when the data have them): the training split's mean valid normal (normalised),
  predicted everywhere.

Both are fitted on ``train`` and scored on another split with the same meters as the models,
so "3x the majority-class mIoU" or "half the mean-depth error" are measured, not assumed.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from xtc.metrics import DepthMeter, NormalMeter, SegmentationMeter


def constant_baselines(train_set, eval_set, batch_size: int = 32) -> dict:
    """Fit the two constant predictors on ``train_set``, score them on ``eval_set``.

    Returns ``majority_class``, ``majority_miou``, ``majority_pixel_acc``, ``mean_depth``
    (in the dataset's depth units), ``mean_depth_abs_err`` and ``mean_depth_rel_err``; with
    normals also ``mean_normal`` (x, y, z) and ``mean_normal_<metric>`` for the five angle
    metrics (``mean_normal_normal_mean`` is its mean angle error, in degrees).
    """
    k = train_set.num_classes
    counts = torch.zeros(k, dtype=torch.float64)
    depth_sum, depth_count = 0.0, 0
    normal_sum = torch.zeros(3, dtype=torch.float64)
    has_normals = False
    for batch in DataLoader(train_set, batch_size=batch_size):
        labels = batch["seg_target"]
        counts += torch.bincount(labels[labels >= 0], minlength=k).double()
        depth_sum += float(batch["depth_target"][batch["depth_mask"]].double().sum())
        depth_count += int(batch["depth_mask"].sum())
        if "normal_target" in batch:
            has_normals = True
            valid = batch["normal_mask"].expand_as(batch["normal_target"])
            normal_sum += torch.where(valid, batch["normal_target"], 0.0).double().sum((0, 2, 3))
    majority = int(counts.argmax())
    mean_depth = depth_sum / max(depth_count, 1)
    mean_normal = torch.nn.functional.normalize(normal_sum, dim=0).float()

    seg, depth, normal = SegmentationMeter(k), DepthMeter(), NormalMeter()
    for batch in DataLoader(eval_set, batch_size=batch_size):
        seg.update(torch.full_like(batch["seg_target"], majority), batch["seg_target"])
        depth.update(torch.full_like(batch["depth_target"], mean_depth), batch["depth_target"],
                     batch["depth_mask"])
        if has_normals and "normal_target" in batch:
            target = batch["normal_target"]
            normal.update(mean_normal.view(1, 3, 1, 1).expand_as(target), target,
                          batch["normal_mask"])
    s, d = seg.compute(), depth.compute()
    out = {"majority_class": train_set.class_names[majority], "majority_miou": s["miou"],
           "majority_pixel_acc": s["pixel_acc"], "mean_depth": mean_depth,
           "mean_depth_abs_err": d["abs_err"], "mean_depth_rel_err": d["rel_err"]}
    if has_normals:
        out["mean_normal"] = mean_normal.tolist()
        out.update({f"mean_normal_{m}": v for m, v in normal.compute().items()})
    return out


def beside(metrics: dict, floor: dict, depth_units: str = "inverse depth") -> list[dict]:
    """Rows ``metric, better, this run, constant predictor`` for a run's test ``metrics``
    next to :func:`constant_baselines` ``floor``: what 00_quickstart prints so a reader can
    tell a trained model from a constant one.

    >>> beside({"miou": 0.4, "abs_err": 0.05}, {"majority_miou": 0.07,
    ...        "mean_depth_abs_err": 0.1})[0]["constant predictor"]
    0.07
    """
    pairs = [("miou", "majority_miou", "mIoU (fraction)", "↑"),
             ("pixel_acc", "majority_pixel_acc", "pixel accuracy (fraction)", "↑"),
             ("abs_err", "mean_depth_abs_err", f"abs_err ({depth_units})", "↓"),
             ("rel_err", "mean_depth_rel_err", "rel_err (fraction)", "↓"),
             ("normal_mean", "mean_normal_normal_mean", "mean angle error (degrees)", "↓"),
             ("normal_median", "mean_normal_normal_median", "median angle error (degrees)", "↓"),
             ("normal_11", "mean_normal_normal_11", "within 11.25° (fraction)", "↑"),
             ("normal_30", "mean_normal_normal_30", "within 30° (fraction)", "↑")]
    return [{"metric": label, "better": better, "this run": metrics[ours],
             "constant predictor": floor[theirs]}
            for ours, theirs, label, better in pairs if ours in metrics and theirs in floor]
