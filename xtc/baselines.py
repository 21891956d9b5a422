"""Trivial predictors every result should beat: the floor a report compares against.

* segmentation: the training split's most frequent class, predicted everywhere;
* depth: the training split's mean valid depth, predicted everywhere.

Both are fitted on ``train`` and scored on another split with the same meters as the models,
so "3x the majority-class mIoU" or "half the mean-depth error" are measured, not assumed.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from xtc.metrics import DepthMeter, SegmentationMeter


def constant_baselines(train_set, eval_set, batch_size: int = 32) -> dict:
    """Fit the two constant predictors on ``train_set``, score them on ``eval_set``.

    Returns ``majority_class``, ``majority_miou``, ``majority_pixel_acc``, ``mean_depth``
    (in the dataset's depth units), ``mean_depth_abs_err`` and ``mean_depth_rel_err``.
    """
    k = train_set.num_classes
    counts = torch.zeros(k, dtype=torch.float64)
    depth_sum, depth_count = 0.0, 0
    for batch in DataLoader(train_set, batch_size=batch_size):
        labels = batch["seg_target"]
        counts += torch.bincount(labels[labels >= 0], minlength=k).double()
        depth_sum += float(batch["depth_target"][batch["depth_mask"]].double().sum())
        depth_count += int(batch["depth_mask"].sum())
    majority = int(counts.argmax())
    mean_depth = depth_sum / max(depth_count, 1)

    seg, depth = SegmentationMeter(k), DepthMeter()
    for batch in DataLoader(eval_set, batch_size=batch_size):
        seg.update(torch.full_like(batch["seg_target"], majority), batch["seg_target"])
        depth.update(torch.full_like(batch["depth_target"], mean_depth), batch["depth_target"],
                     batch["depth_mask"])
    s, d = seg.compute(), depth.compute()
    return {"majority_class": train_set.class_names[majority], "majority_miou": s["miou"],
            "majority_pixel_acc": s["pixel_acc"], "mean_depth": mean_depth,
            "mean_depth_abs_err": d["abs_err"], "mean_depth_rel_err": d["rel_err"]}
