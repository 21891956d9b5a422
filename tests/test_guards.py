"""Config validation and training guards: everything checkable is checked before training,
and each failure is one line through the CLI (exit 2) with nothing overwritten."""

import dataclasses
import typing

import pytest

from xtc import config, train
from xtc.cli import main
from xtc.config import ConfigError
from xtc.data import DatasetError, build_dataset_from_config
from tests.conftest import TINY


def _numeric_fields():
    for section, cls in config._section_types().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            if args & {int, float}:
                yield f"{section}.{f.name}", float in args


NUMERIC = list(_numeric_fields())


def test_every_numeric_field_has_bounds():
    assert len(NUMERIC) > 20
    assert sorted(k for k, _ in NUMERIC) == sorted(config._BOUNDS)


@pytest.mark.parametrize("key,is_float", NUMERIC, ids=[k for k, _ in NUMERIC])
def test_negative_and_nan_values_name_the_field(key, is_float):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(None, [f"{key}=-1"])
    if is_float:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.load(None, [f"{key}=.nan"])


@pytest.mark.parametrize("override", ["model.decoder_width=100000", "data.height=65536",
                                      "train.batch_size=10000000", "optim.lr=1e6"])
def test_absurd_sizes_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        config.load(None, [override])


def test_scientific_notation_is_a_float_in_set_and_in_files(tmp_path):
    assert config.load(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-5\n")
    cfg = config.load(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 5e-5)


@pytest.mark.parametrize("text,match", [
    ("train:\n  epochs: 2\n  epochs: 3\n", "duplicate key 'epochs'"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- train\n- model\n", "holds a list"),
    ("just a string\n", "holds a str"),
])
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load(path)


def test_alias_bomb_is_refused_quickly(tmp_path):
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\n")
    assert path.stat().st_size < 600
    with pytest.raises(ConfigError, match="aliases expand"):
        config.load(path)


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  epochs: 2 # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml is not UTF-8"):
        config.load(path)


def test_small_pool_never_shares_images_between_train_and_val(tiny_config):
    cfg = tiny_config("data.train_size=3", "data.val_fraction=0.1")
    train_idx = set(build_dataset_from_config(cfg.data, "train").indices)
    val_idx = set(build_dataset_from_config(cfg.data, "val").indices)
    assert len(val_idx) == 1 and not train_idx & val_idx
    with pytest.raises(DatasetError, match="too small"):
        build_dataset_from_config(tiny_config("data.train_size=1").data, "val")


def _cli(capsys, *overrides, out=None, extra=()):
    args = ["train", "--quiet", *extra]
    if out is not None:
        args += ["--out", str(out)]
    for item in [*TINY, "train.max_steps_per_epoch=2", *overrides]:
        args += ["--set", item]
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_skipping_every_batch_stops_with_one_line(capsys, tmp_path):
    code, err = _cli(capsys, "optim.lr=1000", "train.nonfinite=skip",
                     "train.max_steps_per_epoch=4", "train.epochs=3", out=tmp_path / "run")
    assert code == 2 and len(err) == 1, err
    assert "max_skipped_fraction" in err[0] and "not training" in err[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_nonfinite_stop_names_a_checkpoint_only_when_there_is_one(capsys, tmp_path):
    code, err = _cli(capsys, "optim.lr=1000", out=tmp_path / "run")
    assert code == 2 and len(err) == 1, err
    assert "no checkpoint was saved yet" in err[0] and "last.pt holds" not in err[0]


def test_a_fresh_run_refuses_a_folder_with_checkpoints_and_removes_stale_temp_files(
        capsys, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"previous run")
    code, err = _cli(capsys, out=run)
    assert code == 2 and len(err) == 1 and "--resume" in err[0]
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"previous run"
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"x" * 1000)
    assert _cli(capsys, "train.epochs=1", out=other)[0] == 0
    assert not list((other / "checkpoints").glob(".*.tmp"))


def test_resume_of_a_finished_run_says_so_and_keeps_its_results(capsys, tmp_path):
    run = tmp_path / "run"
    assert _cli(capsys, "train.epochs=1", out=run)[0] == 0
    before = (run / "results.json").read_bytes()
    code, err = _cli(capsys, "train.epochs=1", out=run, extra=["--resume"])
    assert code == 2 and len(err) == 1 and "finished run" in err[0]
    assert (run / "results.json").read_bytes() == before


def test_an_unwritable_output_folder_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _cli(capsys, out=blocker / "run")
    assert code == 2 and len(err) == 1 and "output folder" in err[0], err


def test_a_split_the_model_cannot_take_fails_before_training(tiny_config, monkeypatch):
    import torch

    real = train.build_dataset_from_config

    def odd_test_split(data_cfg, split, tasks=None):
        dataset = real(data_cfg, split, tasks)
        if split == "test":
            getitem = type(dataset).__getitem__
            dataset.__class__ = type("Odd", (type(dataset),), {"__getitem__": lambda self, i: {
                **getitem(self, i), "image": torch.rand(3, 50, 70)}})
        return dataset

    monkeypatch.setattr(train, "build_dataset_from_config", odd_test_split)
    steps = []
    monkeypatch.setattr(train, "optimizer_step", lambda *a, **k: steps.append(1))
    with pytest.raises(ValueError, match="test split's images"):
        train.fit(tiny_config(), progress=False)
    assert steps == []  # nothing trained
