"""Model selection, evaluation protocols, seeds and history names (xtc.selection, fit)."""

import math

import pytest

from xtc import config, selection, train
from xtc.config import ConfigError
from xtc.data import build_dataset_from_config
from xtc.losses import build_criterion, ssim_max_val
from xtc.losses.weighting import FixedWeighting, UncertaintyWeighting

# Two validations of the demo's mtl-s0 (issue: epoch 2 was kept although its depth was worse).
EPOCH_1 = {"miou": 0.300, "pixel_acc": 0.800, "abs_err": 0.0423, "rel_err": 0.50,
           "loss_seg": 0.90, "loss_depth": 0.060, "direct_loss": 0.960}
EPOCH_2 = {"miou": 0.305, "pixel_acc": 0.802, "abs_err": 0.0482, "rel_err": 0.52,
           "loss_seg": 0.85, "loss_depth": 0.066, "direct_loss": 0.916}


def test_delta_m_score_is_task_weighted_and_hand_computed():
    first = {"miou": 0.5, "pixel_acc": 0.8, "abs_err": 0.1, "rel_err": 0.4}
    later = {"miou": 0.55, "pixel_acc": 0.8, "abs_err": 0.1, "rel_err": 0.2}
    # seg: (-10% + 0) / 2 = -5 ; depth: (0 - 50%) / 2 = -25 ; tasks equal: (-5 - 25) / 2
    assert selection.score("delta_m", later, first, ("seg", "depth")) == pytest.approx(-15.0)
    assert selection.score("delta_m", first, first, ("seg", "depth")) == 0.0
    # STL: its one task
    assert selection.score("delta_m", later, first, ("depth",)) == pytest.approx(-25.0)


def test_default_rule_does_not_select_on_segmentation_alone():
    """val_loss (CE + L1, CE ~10x larger) prefers epoch 2; the task-weighted Δm sees that
    depth got 14% worse while segmentation gained 1%, and keeps epoch 1."""
    assert config.load(None).train.select == "delta_m"
    by_loss = [selection.score("val_loss", v, EPOCH_1, ("seg", "depth"))
               for v in (EPOCH_1, EPOCH_2)]
    by_delta = [selection.score("delta_m", v, EPOCH_1, ("seg", "depth"))
                for v in (EPOCH_1, EPOCH_2)]
    assert by_loss.index(min(by_loss)) == 1
    assert by_delta.index(min(by_delta)) == 0


def test_zero_first_value_is_left_out_with_a_warning():
    with pytest.warns(UserWarning, match="miou"):
        value = selection.score("delta_m", {"miou": 0.1, "pixel_acc": 0.9},
                                {"miou": 0.0, "pixel_acc": 0.8}, ("seg",))
    assert value == pytest.approx(-12.5)


@pytest.mark.parametrize("bad", ["mIoU", "val_loss_seg", "abs_error"])
def test_select_typo_fails_when_the_config_loads(bad):
    with pytest.raises(ConfigError, match="train.select"):
        config.load(None, [f"train.select={bad}"])


def test_select_must_exist_for_the_method():
    with pytest.raises(ConfigError, match="stl-depth"):
        config.load(None, ["model.method=stl-depth", "train.select=miou"])
    assert config.load(None, ["model.method=stl-depth", "train.select=abs_err"])
    assert config.load(None, ["train.select=val_loss"]).train.select == "val_loss"


def test_xtc_protocol_refuses_an_empty_val_split():
    with pytest.raises(ConfigError, match="val_fraction"):
        config.load(None, ["data.val_fraction=0"])
    assert config.load(None, ["data.val_fraction=0", "train.protocol=mtan"])


def test_single_task_runs_use_no_weighting_by_default():
    stl = config.load(None, ["model.method=stl-seg", "loss.weighting=uncertainty"])
    assert isinstance(build_criterion(stl).weighting, FixedWeighting)
    mtl = config.load(None, ["model.method=mtl", "loss.weighting=uncertainty"])
    assert isinstance(build_criterion(mtl).weighting, UncertaintyWeighting)
    opt_in = config.load(None, ["model.method=stl-seg", "loss.single_task_weighting=uncertainty"])
    assert isinstance(build_criterion(opt_in).weighting, UncertaintyWeighting)


def test_ssim_max_val_follows_the_dataset_depth_range():
    assert ssim_max_val(config.load(None)) == 1.0  # inverse depth
    assert ssim_max_val(config.load(None, ["data.name=nyuv2"])) == 10.0  # metres
    assert ssim_max_val(config.load(None, ["data.name=nyuv2", "loss.ssim_max_val=8"])) == 8.0
    cfg = config.load(None, ["data.name=nyuv2", "loss.seg2depth_loss=ssim"])
    assert build_criterion(cfg).task_specs["depth"].options["ssim_max_val"] == 10.0
    with pytest.raises(ConfigError, match="ssim_max_val"):
        config.load(None, ["loss.ssim_max_val=0"])


def test_train_seed_varies_the_val_split_and_augmentation_but_not_the_test_images(tiny_config):
    a, b = tiny_config("train.seed=0"), tiny_config("train.seed=1")
    assert a.data.split_seed == 0 and b.data.split_seed == 1
    val_a, val_b = (build_dataset_from_config(c.data, "val") for c in (a, b))
    assert list(val_a.indices) != list(val_b.indices)
    train_a, train_b = (build_dataset_from_config(c.data, "train") for c in (a, b))
    common = sorted(set(train_a.indices) & set(train_b.indices))[0]
    ia, ib = list(train_a.indices).index(common), list(train_b.indices).index(common)
    assert not train_a[ia]["image"].equal(train_b[ib]["image"])  # other crop / flip draws
    test_a, test_b = (build_dataset_from_config(c.data, "test") for c in (a, b))
    assert test_a[0]["image"].equal(test_b[0]["image"])
    pinned = tiny_config("train.seed=1", "data.split_seed=0")
    assert list(build_dataset_from_config(pinned.data, "val").indices) == list(val_a.indices)


def test_history_names_and_the_logged_learning_rate(tiny_config):
    cfg = tiny_config("optim.step_size=1", "optim.gamma=0.5", "train.max_steps_per_epoch=2")
    run = train.fit(cfg, progress=False)
    assert [h["lr"] for h in run.history] == [0.001, 0.0005]  # the rate each epoch used
    keys = set(run.history[0])
    assert "val_direct_loss" in keys and "val_val_loss" not in keys
    assert "val_loss" not in run.test_metrics and "direct_loss" in run.test_metrics
    assert run.history[0]["selection_score"] == 0.0  # Δm of the first validation vs itself


def test_mtan_protocol_reports_the_mean_of_the_last_epochs(tiny_config, tmp_path):
    cfg = tiny_config("train.protocol=mtan", "train.epochs=3", "train.max_steps_per_epoch=2")
    run = train.fit(cfg, out_dir=tmp_path / "run", progress=False)
    assert all("test_miou" in h and not any(k.startswith("val_") for k in h) for h in run.history)
    assert run.test_metrics["miou"] == pytest.approx(sum(h["test_miou"] for h in run.history) / 3)
    assert run.reported_epochs == [0, 1, 2] and run.best_epoch == 2
    doc = train.results.read(tmp_path / "run")
    assert doc["protocol"]["name"] == "mtan"
    assert ("mean of the per-epoch test metrics over the last 10"
            in doc["protocol"]["reported_metrics"])
    # the whole pool trains: no val split is carved out
    assert len(build_dataset_from_config(cfg.data, "train")) < 40


def test_paper_protocol_selects_on_test_and_says_so(tiny_config, tmp_path):
    cfg = tiny_config("train.protocol=paper", "train.epochs=3", "train.max_steps_per_epoch=2")
    run = train.fit(cfg, out_dir=tmp_path / "run", progress=False)
    losses = [h["test_direct_loss"] for h in run.history]
    assert run.best_epoch == losses.index(min(losses))
    assert run.test_metrics["miou"] == run.history[run.best_epoch]["test_miou"]
    doc = train.results.read(tmp_path / "run")
    assert doc["protocol"]["name"] == "paper"
    assert "SELECTED ON TEST" in doc["protocol"]["model_selection"]
    assert not math.isnan(doc["metrics"]["test"]["abs_err"])
