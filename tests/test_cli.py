import json

import pytest
import torch

from xtc.cli import main
from tests.conftest import TINY


def _sets(*extra):
    out = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", *_sets("train.epochs=1",
                                                               "train.max_steps_per_epoch=2")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "miou" in summary["test"]
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"),
                 "--split", "val", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "eval-val" / "results.json").read_text())
    assert written["metrics"]["val"]["miou"] == pytest.approx(printed["miou"])


def test_evaluate_reproduces_the_runs_own_test_metrics_in_bf16_channels_last(tmp_path, capsys):
    """`xtc evaluate` runs the model in the layout fit evaluated it in: with bf16 autocast
    NHWC and NCHW kernels round differently (mIoU 0.44564 vs 0.44567 on a demo run)."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet",
                 *_sets("train.epochs=1", "train.max_steps_per_epoch=3", "train.precision=bf16",
                        "train.channels_last=true")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    trained = json.loads((out / "results.json").read_text())["metrics"]["test"]
    for key in ("miou", "pixel_acc", "abs_err", "rel_err", "energy"):
        assert evaluated[key] == trained[key], key


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--out", "X", "--set", "loss.lamda=1"], "unknown config key 'loss.lamda'"),
    (["train", "--out", "X", "--config", "missing.yaml"], "missing.yaml does not exist"),
    (["train", "--out", "X", "--set", "data.name=kitti"], "unknown dataset 'kitti'"),
    (["train", "--out", "X", "--set", "data.name=nyuv2"], "data.root"),
    (["evaluate", "--checkpoint", "nowhere.pt"], "nowhere.pt does not exist"),
    (["prepare", "synthetic", "--out", "Y", "--size", "12by3"], "HEIGHTxWIDTH"),
])
def test_user_errors_exit_2_with_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtc: error:") and fragment in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_evaluate_refuses_a_checkpoint_of_another_architecture(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--out", str(out), "--quiet", *_sets("train.epochs=1",
                                                        "train.max_steps_per_epoch=1")])
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    payload["num_classes"] = 5
    torch.save(payload, tmp_path / "wrong.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "wrong.pt"), "--quiet"]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_prepare_synthetic_writes_the_mtan_layout(tmp_path):
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "city"), "--n", "4",
                 "--size", "64x128"]) == 0
    assert (tmp_path / "city" / "train" / "image" / "0.npy").is_file()
