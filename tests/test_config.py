import re
from pathlib import Path

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


@pytest.mark.parametrize("name", list(config.SHORTCUTS))
def test_every_shortcut_sets_its_one_config_key(name):
    shortcut = config.SHORTCUTS[name]
    section, _, key = shortcut.key.partition(".")
    value = getattr(getattr(config.Config(), section), key)  # the default round-trips
    cfg = config.load(None, **{name: value})
    assert getattr(getattr(cfg, section), key) == value
    expected = {} if value is None and shortcut.keep_if_none else {shortcut.key: value}
    assert config.shortcut_overrides({name: value}) == expected


def test_shortcuts_are_the_table_and_a_typo_names_the_close_one():
    assert config.load(None, seed=3).train.seed == 3  # seed: train.seed, not data.seed
    assert config.load(None, lambda1=0.2).loss.lambda1 == 0.2
    with pytest.raises(ConfigError, match="'sed' is not a shortcut; did you mean 'seed'"):
        config.load(None, sed=1)
    with pytest.raises(ConfigError, match="section.key"):  # not in the table: an override
        config.load(None, classes=19)


def test_a_none_shortcut_keeps_the_config_only_where_the_table_says_so(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {tasks: [seg, depth, normal]}\ntrain: {max_steps_per_epoch: 5}\n")
    cfg = config.load(path, tasks=None, max_steps_per_epoch=None)
    assert cfg.model.tasks == ["seg", "depth", "normal"]  # tasks: keep_if_none
    assert cfg.train.max_steps_per_epoch is None  # None means full epochs


def test_02_train_parameters_are_shortcuts_or_its_own():
    from xtc.reports import notebook_parameters

    params = notebook_parameters(ROOT / "notebooks" / "02_train.ipynb")
    own = {"config", "overrides", "out_dir", "resume", "n_gallery"}
    assert params - own <= set(config.SHORTCUTS), params - own - set(config.SHORTCUTS)
    assert {"method", "epochs", "seed", "tasks", "lambda1"} <= params


ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
# The training configs the README and the Makefile tell a reader to run.
NAMED = {"synthetic-quick.yaml", "quickstart.yaml", "synthetic-3task.yaml", "nyuv2-3task.yaml",
         "cityscapes-paper.yaml", "nyuv2-paper.yaml"}


def _named_in_docs(root: Path) -> set[str]:
    """The top-level ``configs/<name>.yaml`` that README.md and the Makefile mention
    (``configs/reports/`` and ``configs/sweeps/`` hold presets and plans, not configs)."""
    text = (root / "README.md").read_text() + (root / "Makefile").read_text()
    return set(re.findall(r"\bconfigs/([\w.-]+\.yaml)\b", text))


def test_the_configs_the_docs_name_are_shipped():
    """Not skippable: an empty or missing configs/ fails here (the parametrised test below
    would only be skipped for an empty parameter set)."""
    shipped = {path.name for path in SHIPPED}
    assert shipped, f"no {ROOT / 'configs'}/*.yaml"
    named = _named_in_docs(ROOT)
    assert NAMED <= named, f"README.md/Makefile no longer name {sorted(NAMED - named)}"
    assert named <= shipped, f"named but not shipped: {sorted(named - shipped)}"


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_configs_load(path):
    cfg = config.load(path)
    assert config.from_dict(cfg.to_dict()) == cfg
