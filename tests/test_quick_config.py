"""The demo config learns: on the synthetic test split it beats the trivial predictors by
the margins issue #2 asks for (3x the majority-class mIoU, half the mean-depth error)."""

from pathlib import Path

import pytest
import torch

from xtc import config, train
from xtc.analysis import baselines
from xtc.data import build_dataset_from_config


def test_constant_baselines_by_hand():
    class Tiny(torch.utils.data.Dataset):
        num_classes, class_names = 2, ["a", "b"]

        def __init__(self, labels, depth):
            self.labels, self.depth = labels, depth

        def __len__(self):
            return 1

        def __getitem__(self, i):
            depth = torch.tensor(self.depth).view(1, 1, 4)
            return {"seg_target": torch.tensor(self.labels).view(1, 4), "depth_target": depth,
                    "depth_mask": depth > 0}

    train_set = Tiny([1, 1, 0, -1], [1.0, 2.0, 3.0, 0.0])  # majority 'b'; mean depth 2
    test_set = Tiny([0, 1, 1, 1], [2.0, 4.0, 0.0, 1.0])
    out = baselines.constant_baselines(train_set, test_set)
    assert out["majority_class"] == "b" and out["mean_depth"] == pytest.approx(2.0)
    assert out["majority_miou"] == pytest.approx((0 + 3 / 4) / 2)  # IoU a = 0, IoU b = 3/4
    assert out["mean_depth_abs_err"] == pytest.approx((0 + 2 + 1) / 3)


@pytest.mark.slow
def test_synthetic_quick_beats_the_trivial_predictors():
    path = Path(__file__).resolve().parent.parent / "configs" / "synthetic-quick.yaml"
    cfg = config.load(path, ["train.device=cpu"])
    run = train.fit(cfg, progress=False)
    floor = baselines.constant_baselines(build_dataset_from_config(cfg.data, "train"),
                                         build_dataset_from_config(cfg.data, "test"))
    assert run.test_metrics["miou"] >= 3 * floor["majority_miou"]
    assert run.test_metrics["abs_err"] <= 0.5 * floor["mean_depth_abs_err"]
