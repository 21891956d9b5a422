"""xtc.analysis.alignment: AUROC, correlations, tidy curves, energy-vs-error on a tiny model."""

import math

import numpy as np
import pytest
import torch

from xtc import config
from xtc.analysis import alignment
from xtc.analysis.alignment import auroc, pearson, rankdata, spearman


def test_auroc_perfect_random_and_hand_computed():
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 1.0
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    # pairs (pos, neg): 0.35 beats 0.1 only; 0.8 beats both -> 3 of 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts one half
    rng = np.random.default_rng(0)
    assert auroc(rng.random(20000), rng.random(20000) > 0.7) == pytest.approx(0.5, abs=0.02)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_ranks_and_correlations():
    np.testing.assert_allclose(rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    x = np.arange(50.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.exp(x / 10)) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, np.exp(x / 10)) < 0.99
    assert math.isnan(pearson(x, np.ones_like(x)))
    rng = np.random.default_rng(1)
    assert abs(spearman(rng.random(5000), rng.random(5000))) < 0.05


def test_alignment_curves_on_fake_histories():
    histories = {
        "consistency": [{"epoch": 0, "train_grad_cos_seg": 0.1, "train_grad_cos_depth": 0.2,
                         "val_energy": 1.0, "val_seg_energy": 1.5, "val_depth_energy": 0.5},
                        {"epoch": 1, "train_grad_cos_seg": 0.3, "train_grad_cos_depth": 0.4,
                         "val_energy": 0.8, "val_seg_energy": 1.1, "val_depth_energy": 0.5}],
        "mtl": [{"epoch": 0, "val_miou": 0.2}],
    }
    rows = alignment.alignment_curves(histories)
    assert [(r["run"], r["epoch"]) for r in rows] == [("consistency", 0), ("consistency", 1),
                                                      ("mtl", 0)]
    assert all(set(r) == set(alignment.CURVE_COLUMNS) for r in rows)
    assert rows[1]["grad_cos_seg"] == 0.3 and rows[1]["energy"] == 0.8
    assert math.isnan(rows[2]["grad_cos_depth"]) and math.isnan(rows[2]["energy"])


def test_energy_maps_and_correlation_on_a_tiny_model():
    from xtc.analysis.landscape import sample_batches
    from xtc.models import build_model_from_config

    cfg = config.load(None, ["data.height=64", "data.width=64", "data.train_size=24",
                             "data.test_size=8", "model.encoder=resnet18",
                             "model.decoder_width=16", "model.transfer_width=8",
                             "train.device=cpu"])
    torch.manual_seed(0)
    model = build_model_from_config(cfg, num_classes=7)
    batches = sample_batches(cfg, "test", n_batches=2, batch_size=2)
    maps = alignment.energy_maps(model, batches[0])
    assert maps["image"].shape == (2, 64, 64, 3)
    for key in ("seg_energy", "depth_energy", "seg_error", "depth_error"):
        assert maps[key].shape == (2, 64, 64)
    assert np.isnan(maps["seg_error"][batches[0]["seg_target"].numpy() < 0]).all()
    stats = alignment.energy_error_correlation(model, batches, max_images=3)
    for task in ("seg", "depth"):
        assert stats[task]["n_images"] == 3
        assert 0.0 <= stats[task]["auroc"] <= 1.0 or math.isnan(stats[task]["auroc"])
    assert stats["depth"]["positive_rate"] == pytest.approx(0.5, abs=0.05)
    rows = alignment.correlation_table({"x": stats})
    assert [r["task"] for r in rows] == ["seg", "depth"]
    mtl = build_model_from_config(config.load(None, ["model.method=mtl", "model.encoder=resnet18",
                                                     "model.decoder_width=16"]), 7)
    with pytest.raises(ValueError, match="xtc model"):
        alignment.energy_maps(mtl, batches[0])


def test_alignment_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from xtc.viz import alignment_plots

    rows = alignment.alignment_curves({"a": [{"epoch": 0, "train_grad_cos_seg": 0.1}],
                                       "b": [{"epoch": 0, "val_energy": 0.3}]})
    fig = alignment_plots.plot_alignment_curves(rows, path=tmp_path / "c.png")
    assert len(fig.axes) == 4 and (tmp_path / "c.png").exists()
    rng = np.random.default_rng(0)
    m = {k: rng.random((2, 8, 8))
         for k in ("seg_error", "seg_energy", "depth_error", "depth_energy")}
    m["depth_error"][0, 0, 0] = np.nan
    m["image"] = rng.random((2, 8, 8, 3))
    fig = alignment_plots.plot_energy_maps({"a": m, "b": m}, n=1)
    assert len([ax for ax in fig.axes if ax.images]) == 10  # 2 rows x 5 panels
    assert "<table>" in alignment_plots.table(rows).data
