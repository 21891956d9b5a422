"""Losses: direct, cross-task (consistency / alignment), weighting, and ``build_criterion``.

The criterion computes a direct term per task (``seg``, ``depth``, ``normal``, as the method
has them) and, for ``xtc``, a cross-task term per edge ``a2b`` of the transfer graph. It groups
them per docs/method.md §3.4, each cross-task term beside the direct loss of the decoder it
trains (its *source* task a), generalised to any graph:

    L_a = (1 - lambda_a) L_a + lambda_a * mean_{b : a2b in the graph} L_a2b

so for the paper's two tasks L_S = (1 - lambda1) L_seg + lambda1 L_seg2depth and
L_D = (1 - lambda2) L_depth + lambda2 L_depth2seg. A task without outgoing edges keeps
L_a; ``mtl`` and STL have no edges. The weighting combines the groups into ``total``.

Examples:
    >>> import xtc.config
    >>> cfg = xtc.config.load(None, ["model.method=mtl", "loss.weighting=fixed"])
    >>> criterion = build_criterion(cfg)
    >>> sorted(criterion.weighting.names)
    ['depth', 'seg']
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from xtc.losses.cross_task import (CrossTaskLoss, alignment_loss, consistency_loss,
                                   cross_task_loss, depth2seg_loss, edge_terms, pseudo_targets,
                                   seg2depth_loss, ssim_dissimilarity)
from xtc.losses.direct import DepthLoss, NormalLoss, SegLoss, depth_loss, normal_loss, seg_loss
from xtc.losses.aggregation import AGGREGATORS, NONE as NO_AGGREGATOR, Aggregation
from xtc.losses.weighting import WEIGHTINGS, Weighting, build_weighting
from xtc.tasks import METHODS, TASKS, Task, lambdas_of, split_edge, transfers_of

__all__ = ["AGGREGATORS", "Aggregation", "Criterion", "CrossTaskLoss", "DepthLoss", "NormalLoss",
           "SegLoss", "WEIGHTINGS", "Weighting", "alignment_loss", "build_criterion",
           "build_weighting", "consistency_loss", "cross_task_loss", "depth2seg_loss",
           "depth_loss", "edge_terms", "normal_loss", "pseudo_targets", "seg2depth_loss",
           "seg_loss", "ssim_dissimilarity", "ssim_max_val", "task_instances"]


class Criterion(nn.Module):
    """``criterion(predictions, batch) -> {term: scalar, ..., "total": scalar}``.

    Args:
        tasks: the configured :class:`Task` of every task with a decoder, in order.
        weighting: a :class:`Weighting` over the task groups (one per task).
        lambdas: task -> lambda_a, the cross-task share of its group (module docstring).
        cross_task: a :class:`CrossTaskLoss` over the graph's edges (``xtc`` only).

    Predictions without the transferred outputs (``model(x, direct_only=True)``) leave the
    cross-task terms out: L_a = its direct loss, as for ``mtl``.
    """

    def __init__(self, tasks: dict[str, Task], weighting: Weighting,
                 lambdas: Optional[dict[str, float]] = None,
                 cross_task: Optional[CrossTaskLoss] = None,
                 aggregation: Optional[Aggregation] = None):
        super().__init__()
        self.task_specs = dict(tasks)
        self.tasks = tuple(tasks)
        self.lambdas = {t: float((lambdas or {}).get(t, 0.0)) for t in self.tasks}
        self.weighting = weighting
        self.cross_task = cross_task
        self.edges = list(cross_task.edges) if cross_task is not None else []
        self.outgoing = {t: [e for e in self.edges if split_edge(e)[0] == t] for t in self.tasks}
        self.aggregation = aggregation  # None: one backward of ``total``

    def forward(self, predictions: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {t: task.loss(predictions[t], batch) for t, task in self.task_specs.items()}
        if self.cross_task is not None and self.edges and self.edges[0] in predictions:
            terms.update(self.cross_task(predictions, batch))
        terms["total"] = self.weighting(self.groups(terms))
        return terms

    def groups(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L_a per task from the loss terms (the module docstring's grouping)."""
        groups = {t: terms[t] for t in self.tasks}
        for t, out in self.outgoing.items():
            if not out or out[0] not in terms:
                continue
            cross = terms[out[0]] if len(out) == 1 else torch.stack([terms[e] for e in out]).mean()
            groups[t] = (1 - self.lambdas[t]) * terms[t] + self.lambdas[t] * cross
        return groups

    def objective_names(self, mode: str = "tasks") -> tuple[str, ...]:
        """The aggregator's objectives: the task groups (``tasks``), or every direct and
        cross-task term (``terms``), in a fixed order."""
        return self.tasks if mode == "tasks" else (*self.tasks, *self.edges)

    def objectives(self, terms: dict[str, torch.Tensor], mode: str = "tasks"
                   ) -> dict[str, torch.Tensor]:
        """The objectives of :meth:`objective_names` from a step's loss terms."""
        return self.groups(terms) if mode == "tasks" else {
            n: terms[n] for n in self.objective_names(mode)}

    def optimised_parameters(self) -> list[nn.Parameter]:
        """What the run's optimiser steps besides the model (learned loss weights)."""
        return self.weighting.optimised_parameters()

    def after_step(self) -> None:
        """Call after ``optimizer.step()`` (GradNorm renormalises its weights)."""
        self.weighting.after_step()

    def end_epoch(self, reduce=None) -> None:
        """Call once per training epoch (DWA rolls its loss history); ``reduce`` sums a
        tensor over ranks under DDP (None in one process), so DWA's means are global."""
        self.weighting.end_epoch(reduce)


def task_instances(config: Any, num_classes: int, names: Optional[Sequence[str]] = None
                   ) -> dict[str, Task]:
    """The configured :class:`Task` of every task of ``config``'s method (or ``names``)."""
    names = names if names is not None else METHODS.get(config.model.method).tasks_for(
        config.model.tasks)
    return {t: TASKS.get(t).from_config(config, num_classes, ssim_max_val=ssim_max_val(config))
            for t in names}


def build_criterion(config: Any, model: Optional[nn.Module] = None,
                    num_classes: Optional[int] = None) -> Criterion:
    """Build the criterion from a full :class:`xtc.config.Config`.

    ``model`` is needed for ``loss.weighting=gradnorm`` (its ``last_shared_layer()``) and
    for ``loss.aggregator`` (its encoder's features), and gives the number of classes (else
    ``num_classes``, else the dataset's). Single-task methods use
    ``loss.single_task_weighting`` (default ``fixed``: one loss needs no balancing, and the
    authors' STL runs had none; uncertainty weighting would rescale it).
    """
    method, loss = METHODS.get(config.model.method), config.loss
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None) or _dataset_classes(config)
    tasks = task_instances(config, num_classes)
    weighting_name = loss.single_task_weighting if method.single_task else loss.weighting
    shared = None
    if weighting_name == "gradnorm":
        if model is None:
            raise ValueError("loss.weighting=gradnorm needs the model: call "
                             "build_criterion(config, model) so GradNorm can use "
                             "model.last_shared_layer()")
        shared = model.last_shared_layer()
    weighting = build_weighting(weighting_name, tuple(tasks),
                                uncertainty_form=loss.uncertainty_form,
                                gradnorm_alpha=loss.gradnorm_alpha,
                                dwa_temperature=loss.dwa_temperature,
                                famo_lr=loss.famo_lr, famo_weight_decay=loss.famo_weight_decay,
                                shared_parameter=shared)
    cross = None
    if method.transfers:
        cross = CrossTaskLoss(loss.cross_task, loss.seg2depth_loss, loss.depth2seg_loss,
                              loss.label_smoothing, ssim_max_val(config),
                              edges=transfers_of(config), tasks=tasks)
    criterion = Criterion(tasks, weighting, lambdas_of(config), cross)
    if loss.aggregator != NO_AGGREGATOR:
        criterion.aggregation = Aggregation(loss.aggregator,
                                            criterion.objective_names(loss.objectives),
                                            loss.aggregator_args, loss.objectives)
        if model is not None:
            criterion.aggregation.attach(model)
    return criterion


def ssim_max_val(config: Any) -> float:
    """SSIM's dynamic range for the transferred-depth loss: ``loss.ssim_max_val``, or the
    upper end of the dataset's depth range (``depth_range``: 1.0 for inverse depth, the
    authors' value; 10 m for NYUv2, whose depth in metres would otherwise saturate SSIM's
    constants, which assume values in [0, max_val])."""
    if config.loss.ssim_max_val is not None:
        return float(config.loss.ssim_max_val)
    from xtc.data import DATASETS

    return float(DATASETS.get(config.data.name).depth_range[1])


def _dataset_classes(config: Any) -> int:
    from xtc.data import num_classes

    return num_classes(config.data)
