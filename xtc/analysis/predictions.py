"""Predictions and error maps for a batch: the one forward-and-map path that the explorer
(:func:`xtc.viz.explorer.predict`), the prediction gallery
(:func:`xtc.viz.plots.show_predictions`) and the alignment maps
(:func:`xtc.analysis.alignment.energy_maps`) share, so a task's valid pixels and error
units are defined once (by its :class:`xtc.tasks.Task`).

    >>> import torch
    >>> from xtc.tasks import TASKS
    >>> depth = TASKS.get("depth")(7)
    >>> batch = {"depth_target": torch.tensor([[[[1.0, 0.0]]]]),
    ...          "depth_mask": torch.tensor([[[[1.0, 1.0]]]])}
    >>> valid_mask("depth", depth, batch)  # a zero depth has no ground truth
    tensor([[[ True, False]]])
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from xtc.tasks import TASKS, Task


def task_specs(model) -> dict[str, Task]:
    """The model's Task instances (``model.specs``), else fresh ones with its class count."""
    specs = getattr(model, "specs", None)
    return dict(specs) if specs else {t: TASKS.get(t)(model.num_classes) for t in model.tasks}


def valid_mask(task: str, spec: Task, batch: Mapping[str, torch.Tensor]
               ) -> Optional[torch.Tensor]:
    """(B,H,W) bool: where ``task`` has ground truth (``Task.valid``; depth also needs a
    positive target, as its error map does); None: every pixel."""
    valid = spec.valid(batch)
    if task == "depth" and "depth_target" in batch:
        positive = batch["depth_target"] > 0
        valid = positive if valid is None else valid.bool() & positive
    return None if valid is None else valid.reshape(valid.shape[0], *valid.shape[-2:]).bool()


@torch.no_grad()
def predict_batch(model, batch: Mapping[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(batch, predictions)``: the batch's tensors on the model's device and the model's
    outputs (every task and transfer ``a2b``) as float32, in eval mode without gradients."""
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    return batch, {k: v.float() for k, v in model(batch["image"]).items()}


def error_maps(predictions: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
               specs: Mapping[str, Task]) -> dict[str, torch.Tensor]:
    """Task -> (B,H,W) float error of its direct prediction (``Task.error_map``: seg 1
    wrong / 0 right, depth |pred - target|, normals the angle in degrees), NaN where the task
    has no ground truth; tasks without an error map are left out."""
    out = {}
    for task, spec in specs.items():
        try:
            error = spec.error_map(predictions[task], batch).float()
        except NotImplementedError:  # a task without an error map has no error to detect
            continue
        valid = valid_mask(task, spec, batch)
        out[task] = error if valid is None else torch.where(
            valid, error, torch.full_like(error, float("nan")))
    return out
