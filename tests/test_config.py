import pytest

from xtc import config
from xtc.config import ConfigError


def test_defaults_follow_the_paper_recipe():
    cfg = config.load()
    assert cfg.model.method == "xtc" and cfg.model.encoder == "resnet34"
    assert cfg.loss.depth_loss == "l1" and cfg.loss.depth2seg_loss == "ce"
    assert cfg.loss.seg2depth_loss == "l1" and cfg.loss.label_smoothing == 0.0
    assert cfg.loss.lambda1 == cfg.loss.lambda2 == 0.01
    assert cfg.optim.betas == [0.9, 0.99] and cfg.optim.lr == 1e-4


def test_overrides_and_shortcuts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  lambda1: 0.5\ntrain:\n  epochs: 3\n")
    cfg = config.load(path, ["loss.lambda2=0.25", "model.method=mtl"], seed=4)
    assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.train.epochs) == (0.5, 0.25, 3)
    assert cfg.model.method == "mtl" and cfg.train.seed == 4
    assert config.load(None, {"data.root": "/x"}).data.root == "/x"
    assert config.load(None, ["train.max_steps_per_epoch=null"]).train.max_steps_per_epoch is None


def test_int_is_accepted_for_float_and_round_trip(tmp_path):
    cfg = config.load(None, ["optim.lr=1"])
    assert isinstance(cfg.optim.lr, float)
    config.save(cfg, tmp_path / "saved.yaml")
    assert config.load(tmp_path / "saved.yaml") == cfg
    assert config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, fragment", [
    (["loss.lamda1=0.1"], "unknown config key 'loss.lamda1'"),
    (["optimizer.lr=0.1"], "unknown config key 'optimizer.lr'"),
    (["train.epochs=two"], "train.epochs='two' has type str; expected int"),
    (["train.epochs=0"], "train.epochs=0 is out of range"),
    (["loss.lambda1=1.5"], "loss.lambda1=1.5 is out of range"),
    (["model.method=xtcc"], "model.method='xtcc' is not valid; choose one of"),
    (["loss.weighting=pcgrad"], "loss.weighting='pcgrad' is not valid"),
    (["data.height=100"], "divisible by 32"),
    (["train.augment"], "must look like section.key=value"),
    (["model.pretrained=3"], "expected bool"),
])
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        config.load(None, override)
    assert fragment in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="holds a list"):
        config.load(bad)
    bad.write_text("loss: 3\n")
    with pytest.raises(ConfigError, match="section 'loss' must be a mapping"):
        config.load(bad)


def test_shortcuts_resolve_to_one_field():
    assert config.load(None, seed=3).train.seed == 3  # seed: train.seed, not data.seed
    assert config.load(None, classes=19).data.classes == 19
    with pytest.raises(ConfigError, match="not a config field"):
        config.load(None, seed_typo=1)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        config.load(path)
