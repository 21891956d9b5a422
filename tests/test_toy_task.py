"""Adding a task is one module: a toy fourth task (segment boundaries, derived from the
segmentation target) registered inside this file alone trains with mtl and xtc."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xtc import config, selection, train
from xtc.tasks import METHODS, TASKS, Meter, Metric, Task


def boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(B,H,W) labels -> (B,1,H,W) float: 1 where the right or lower neighbour differs."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, :-1, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    return edge[:, None].float()


class BoundaryMeter(Meter):
    _state_names = ("sums",)

    def __init__(self):
        self.sums = torch.zeros(3, dtype=torch.float64)  # true positives, predicted, actual

    def update(self, logits, target, valid):
        self._follow(target.device)
        pred, gt = (logits > 0) & valid, (target > 0.5) & valid
        self.sums += torch.stack([(pred & gt).sum(), pred.sum(), gt.sum()]).double()

    def compute(self):
        tp, predicted, actual = self.sums.tolist()
        union = predicted + actual - tp
        return {"boundary_iou": tp / union if union else float("nan")}


class Boundary(Task):
    title = "segment boundaries"
    batch_keys = ("seg_target",)  # derived: no key of its own, nothing to augment
    metrics = (Metric("boundary_iou", True, "fraction"),)

    def channels(self):
        return 1

    def target(self, batch):
        return boundaries(batch["seg_target"])

    def valid(self, batch):
        return (batch["seg_target"] >= 0)[:, None]

    def _bce(self, logits, target, batch):
        valid = self.valid(batch)
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp_min(1)

    def loss(self, prediction, batch):
        return self._bce(prediction, self.target(batch), batch)

    def pseudo_target(self, prediction):
        return (prediction.detach() > 0).float()

    def transfer_loss(self, transferred, target, batch):
        return self._bce(transferred, target, batch)

    def transfer_input(self, prediction):
        return torch.sigmoid(prediction)

    def meter(self):
        return BoundaryMeter()

    def measure(self, meter, prediction, batch):
        meter.update(prediction, self.target(batch), self.valid(batch))

    def energy_map(self, direct, transferred):
        return (torch.sigmoid(transferred) - torch.sigmoid(direct)).abs().squeeze(1)


@pytest.fixture
def boundary_task():
    TASKS.register("boundary")(Boundary)
    yield "boundary"
    TASKS.unregister("boundary")


def test_registering_a_task_makes_it_known_everywhere(boundary_task) -> None:
    assert "stl-boundary" in METHODS
    assert "boundary_iou" in selection.select_names(["seg", "boundary"], cross_task=False)
    cfg = config.load(None, ["model.tasks=[seg,depth,boundary]", "train.select=boundary_iou"])
    assert cfg.model.tasks == ["seg", "depth", "boundary"]
    from xtc.metrics import METRIC_TASK, higher_is_better

    assert METRIC_TASK["boundary_iou"] == "boundary" and higher_is_better("val_boundary_iou")


def test_unregistered_task_is_refused_with_the_valid_names() -> None:
    with pytest.raises(config.ConfigError,
                       match=r"model.tasks=.*boundary.*\['depth', 'normal', 'seg'\]"):
        config.load(None, ["model.tasks=[seg,boundary]"])


@pytest.mark.parametrize("method", ["mtl", "xtc"])
def test_toy_fourth_task_trains(boundary_task, tiny_config, method: str) -> None:
    cfg = tiny_config(f"model.method={method}", "model.tasks=[seg,depth,normal,boundary]",
                      "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4")
    run = train.fit(cfg, progress=False)
    assert math.isfinite(run.test_metrics["boundary_iou"])
    assert {"miou", "abs_err", "normal_mean"} <= set(run.test_metrics)
    losses = {k for k in run.history[0] if k.startswith("train_")}
    assert "train_boundary" in losses
    if method == "xtc":  # twelve edges over four tasks, each with its term
        assert len(run.model.transfer) == 12
        assert {"train_boundary2seg", "train_seg2boundary", "train_normal2boundary"} <= losses
        assert "boundary_energy" in run.test_metrics
