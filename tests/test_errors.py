"""xtc.errors: user errors are XtcErrors (one line, exit 2 from the CLI); anything else is a
bug and keeps its traceback."""

import errno

import pytest

from xtc import cli, errors
from tests.conftest import TINY
from xtc.errors import XtcError

USER_ERRORS = [  # class, the builtin bases it keeps
    (errors.ConfigError, (ValueError,)),
    (errors.DatasetError, (ValueError,)),
    (errors.CheckpointError, (ValueError,)),
    (errors.UnknownNameError, (KeyError,)),
    (errors.TrainingError, (RuntimeError, ValueError)),
    (errors.PlanError, (ValueError,)),
    (errors.MissingFileError, (FileNotFoundError,)),
    (errors.OutputExistsError, (FileExistsError,)),
    (errors.SetupError, (RuntimeError,)),
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtc: error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("cls, bases", USER_ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_user_error_is_an_xtc_error_and_keeps_its_builtin_base(cls, bases):
    assert issubclass(cls, XtcError) and all(issubclass(cls, base) for base in bases)
    assert cls.__name__ in errors.__all__


def test_the_old_names_are_the_same_classes():
    from xtc import checkpoint, config, registry, train
    from xtc.data import errors as data_errors

    assert config.ConfigError is errors.ConfigError
    assert checkpoint.CheckpointError is errors.CheckpointError
    assert registry.UnknownNameError is errors.UnknownNameError
    assert data_errors.DatasetError is errors.DatasetError
    assert train.TrainingError is errors.TrainingError


def test_a_bad_config_value_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "run"), "--set", "loss.weighting=nope"])
    assert code == 2
    assert "loss.weighting='nope' is not valid" in _one_error_line(capsys)


@pytest.mark.parametrize("bug", [ValueError("bug"), KeyError("bug"), RuntimeError("bug"),
                                 FileExistsError("bug: no errno")], ids=repr)
def test_a_bug_propagates_with_its_traceback(bug, tmp_path, capsys, monkeypatch):
    from xtc import train

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(train, "fit", broken)
    with pytest.raises(type(bug)) as info:
        cli.main(["train", "--out", str(tmp_path / "run"), "--set", "train.device=cpu"])
    assert info.value is bug and "xtc: error" not in capsys.readouterr().err


def test_an_os_error_that_is_not_the_users_propagates(tmp_path, monkeypatch):
    from xtc import train

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path))

    monkeypatch.setattr(train, "fit", broken)
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["train", "--out", str(tmp_path / "run"), "--set", "train.device=cpu"])


def test_a_path_under_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["prepare", "synthetic", "--out", str(blocker / "data"), "--n", "2", "--size", "32x32"]
    assert cli.main(argv) == 2  # the OSError itself (EEXIST / ENOTDIR): USER_OS_ERRORS
    err = _one_error_line(capsys)
    assert str(blocker) in err and "choose another path" in err
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert cli.main(["train", "--out", str(blocker / "run"), "--quiet", *sets]) == 2
    assert "choose a writable --out folder" in _one_error_line(capsys)


def test_an_unknown_name_lists_the_known_ones_unquoted(tmp_path, capsys):
    from xtc.data import DATASETS

    with pytest.raises(errors.UnknownNameError) as info:
        DATASETS.get("kitti")
    message = str(info.value)
    assert message.startswith("unknown dataset 'kitti'") and "synthetic-city" in message
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--set", "data.name=kitti"]) == 2
    assert "synthetic-city" in _one_error_line(capsys)
