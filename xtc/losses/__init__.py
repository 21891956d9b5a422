"""Losses: direct, cross-task (consistency / alignment), weighting, and ``build_criterion``.

The criterion computes the terms ``seg``, ``depth``, ``seg2depth``, ``depth2seg`` (as the method
has them), groups them per paper-spec §3.4 with each cross-task term beside the direct loss of
the decoder it trains,

    L_S = (1 - lambda1) L_seg + lambda1 L_seg2depth,   L_D = (1 - lambda2) L_depth + lambda2 L_depth2seg

(``mtl``: L_S = L_seg, L_D = L_depth; STL: the one direct loss), and lets the weighting combine
the groups into ``total``.

Examples:
    >>> import xtc.config, xtc.models
    >>> cfg = xtc.config.load(None, ["model.method=mtl", "loss.weighting=fixed"])
    >>> criterion = build_criterion(cfg)
    >>> sorted(criterion.weighting.names)
    ['depth', 'seg']
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from xtc.losses.cross_task import (CrossTaskLoss, alignment_loss, consistency_loss,
                                   cross_task_loss, depth2seg_loss, pseudo_targets,
                                   seg2depth_loss, ssim_dissimilarity)
from xtc.losses.direct import DepthLoss, SegLoss, depth_loss, seg_loss
from xtc.losses.weighting import WEIGHTINGS, Weighting, build_weighting

__all__ = ["Criterion", "CrossTaskLoss", "DepthLoss", "SegLoss", "WEIGHTINGS", "Weighting",
           "alignment_loss", "build_criterion", "build_weighting", "consistency_loss",
           "cross_task_loss", "depth2seg_loss", "depth_loss", "pseudo_targets",
           "seg2depth_loss", "seg_loss", "ssim_dissimilarity", "ssim_max_val"]

_TASKS = {"stl-seg": ("seg",), "stl-depth": ("depth",), "mtl": ("seg", "depth"),
          "xtc": ("seg", "depth")}


class Criterion(nn.Module):
    """``criterion(predictions, batch) -> {term: scalar, ..., "total": scalar}``.

    Args:
        method: ``stl-seg | stl-depth | mtl | xtc``.
        weighting: a :class:`Weighting` over the groups ``seg`` (L_S) and/or ``depth`` (L_D).
        lambda1, lambda2: cross-task weights inside the groups (paper: 0.01 Cityscapes).
        depth_kind: direct depth loss (``l1`` default).
        cross_task: a :class:`CrossTaskLoss` (xtc only).

    For ``xtc`` predictions without the transferred outputs (``model(x, direct_only=True)``)
    the cross-task terms are left out and L_S = L_seg, L_D = L_depth, as for ``mtl``.
    """

    def __init__(self, method: str, weighting: Weighting, lambda1: float = 0.01,
                 lambda2: float = 0.01, depth_kind: str = "l1",
                 cross_task: Optional[CrossTaskLoss] = None):
        super().__init__()
        if method not in _TASKS:
            raise ValueError(f"unknown method '{method}'; choose one of {sorted(_TASKS)}")
        self.method = method
        self.tasks = _TASKS[method]
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.weighting = weighting
        self.seg = SegLoss()
        self.depth = DepthLoss(depth_kind)
        self.cross_task = cross_task

    def forward(self, predictions: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if "seg" in self.tasks:
            terms["seg"] = self.seg(predictions["seg"], batch["seg_target"])
        if "depth" in self.tasks:
            terms["depth"] = self.depth(predictions["depth"], batch["depth_target"],
                                        batch.get("depth_mask"))
        groups = dict(terms)
        if self.cross_task is not None and "seg2depth" in predictions:
            terms.update(self.cross_task(predictions, batch))
            groups["seg"] = (1 - self.lambda1) * terms["seg"] + self.lambda1 * terms["seg2depth"]
            groups["depth"] = ((1 - self.lambda2) * terms["depth"]
                               + self.lambda2 * terms["depth2seg"])
        terms["total"] = self.weighting(groups)
        return terms

    def after_step(self) -> None:
        """Call after ``optimizer.step()`` (GradNorm renormalises its weights)."""
        self.weighting.after_step()

    def end_epoch(self, reduce=None) -> None:
        """Call once per training epoch (DWA rolls its loss history); ``reduce`` sums a
        tensor over ranks under DDP (None in one process), so DWA's means are global."""
        self.weighting.end_epoch(reduce)


def build_criterion(config: Any, model: Optional[nn.Module] = None) -> Criterion:
    """Build the criterion from a full :class:`xtc.config.Config` (``model.method``, ``loss.*``).

    ``model`` is needed for ``loss.weighting=gradnorm`` (its ``last_shared_layer()``).
    Single-task methods use ``loss.single_task_weighting`` (default ``fixed``: one loss needs
    no balancing, and the authors' STL runs had none; uncertainty weighting would rescale it).
    """
    method, loss = config.model.method, config.loss
    weighting_name = loss.single_task_weighting if len(_TASKS.get(method, ())) == 1 \
        else loss.weighting
    if method not in _TASKS:
        raise ValueError(f"unknown method '{method}'; choose one of {sorted(_TASKS)}")
    shared = None
    if weighting_name == "gradnorm":
        if model is None:
            raise ValueError("loss.weighting=gradnorm needs the model: call "
                             "build_criterion(config, model) so GradNorm can use "
                             "model.last_shared_layer()")
        shared = model.last_shared_layer()
    weighting = build_weighting(weighting_name, _TASKS[method],
                                uncertainty_form=loss.uncertainty_form,
                                gradnorm_alpha=loss.gradnorm_alpha,
                                dwa_temperature=loss.dwa_temperature, shared_parameter=shared)
    cross = None
    if method == "xtc":
        cross = CrossTaskLoss(loss.cross_task, loss.seg2depth_loss, loss.depth2seg_loss,
                              loss.label_smoothing, ssim_max_val(config))
    return Criterion(method, weighting, loss.lambda1, loss.lambda2, loss.depth_loss, cross)


def ssim_max_val(config: Any) -> float:
    """SSIM's dynamic range for the transferred-depth loss: ``loss.ssim_max_val``, or the
    upper end of the dataset's depth range (``depth_range``: 1.0 for inverse depth, the
    authors' value; 10 m for NYUv2, whose depth in metres would otherwise saturate SSIM's
    constants, which assume values in [0, max_val])."""
    if config.loss.ssim_max_val is not None:
        return float(config.loss.ssim_max_val)
    from xtc.data import DATASETS

    return float(DATASETS.get(config.data.name).depth_range[1])
