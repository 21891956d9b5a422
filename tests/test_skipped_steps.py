"""train.nonfinite=skip with one NaN image: every weighting keeps training, only that image's
batch is skipped each epoch, and no weighting state records the skipped step (DWA's epoch
means, GradNorm's L(0))."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import TINY
from xtc import config, train

# 10 pool images, val_fraction 0.2: 8 train images = 2 batches of 4, every image in every
# epoch (no max_steps cap), so the NaN image is in exactly one batch per epoch.
SETTINGS = [*TINY, "data.train_size=10", "data.test_size=4", "data.height=32",
            "data.width=64", "train.batch_size=4", "train.epochs=3", "train.nonfinite=skip",
            "model.method=mtl"]


class _NaNImage:
    """The dataset with item ``bad``'s image all NaN (the loaders refuse such files)."""

    def __init__(self, inner, bad: int):
        self.inner, self.bad = inner, bad

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        item = self.inner[index]
        if index == self.bad:
            item = {**item, "image": torch.full_like(item["image"], float("nan"))}
        return item

    def __getattr__(self, name):  # num_classes, depth_units, fingerprint, set_epoch, ...
        return getattr(self.inner, name)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["dwa", "gradnorm", "uncertainty", "fixed"])
def test_one_nan_image_skips_only_its_batch(weighting, monkeypatch):
    cfg = config.load(None, [*SETTINGS, f"loss.weighting={weighting}"])
    real = train.build_dataset_from_config
    train_set = real(cfg.data, "train")
    # The NaN image goes in epoch 0's FIRST batch: GradNorm's L(0) candidate is then bad.
    first_batch = list(train._loader(train_set, cfg, shuffle=True, epoch=0).sampler)
    bad = first_batch[0]
    monkeypatch.setattr(train, "build_dataset_from_config",
                        lambda data, split, tasks=None: _NaNImage(train_set, bad)
                        if split == "train" else real(data, split, tasks))
    run = train.fit(cfg, progress=False)

    steps = len(train_set) // cfg.train.batch_size
    assert steps == 2
    assert len(run.history) == 3
    for epoch in run.history:
        assert epoch["train_skipped_fraction"] == pytest.approx(1 / steps), epoch
        assert all(math.isfinite(w) for w in epoch["weights"].values()), epoch
        assert math.isfinite(epoch["train_total"]), epoch
        # the skipped forward's BatchNorm statistics were rolled back: evaluation stays finite
        assert (math.isfinite(epoch["val_direct_loss"])
                and math.isfinite(epoch["val_abs_err"])), epoch
    for name, parameter in run.model.named_parameters():
        assert torch.isfinite(parameter).all(), name
    for name, buffer in run.model.named_buffers():
        assert torch.isfinite(buffer.float()).all(), name
    if weighting in ("dwa", "gradnorm"):  # the weights did move (not stuck at their start)
        assert run.history[-1]["weights"] != pytest.approx({"seg": 1.0, "depth": 1.0})
