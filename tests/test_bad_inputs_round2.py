"""Bad inputs, round 2 (issue 10, items 4-6): checkpoints that would expand to gigabytes,
lack config keys or hold NaN weights; evaluations that would overwrite a run's results;
full disks, unwritable and over-long paths, bad --set YAML, a criterion that does not fit
its checkpoint, a diverging run. Each gives one line ``xtc: error: ...``, exit code 2, no
traceback, and leaves what was on disk untouched. Then file modes and the lab token."""

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from xtc import checkpoint, cli, results
from xtc.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _sets(*extra: str) -> list[str]:
    out = []
    for item in [*TINY, "train.epochs=1", "train.max_steps_per_epoch=1", *extra]:
        out += ["--set", item]
    return out


def _snapshot(folder: Path) -> dict:
    """Each file's inode, size and mtime (a rewrite or an atomic replace changes one), and
    the bytes of the small ones; hashing 100 MB checkpoints per case would be slow."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else ""
            out[p] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


def _link(good: Path, path: Path) -> Path:
    """The good checkpoint under another name (a hard link: no 100 MB copy)."""
    try:
        os.link(good, path)
    except OSError:
        shutil.copy(good, path)
    return path


def _run(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("xtc: error:") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny training run (a few seconds) that every case below reads and must not alter."""
    out = tmp_path_factory.mktemp("trained") / "run"
    # resumable: its last.pt is a whole resume checkpoint, which the cases below edit
    assert main(["train", "--out", str(out), "--quiet",
                 *_sets("train.keep_checkpoints=resumable")]) == 0
    return out


@pytest.fixture
def good(run_dir):
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture
def untouched(run_dir):
    """The training run is byte-for-byte the same after the case."""
    before = _snapshot(run_dir)
    yield
    assert _snapshot(run_dir) == before


def _edited(good: Path, path: Path, edit) -> Path:
    payload = torch.load(good, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def _zip_bomb(path: Path, floats: int = 70_000_000) -> Path:
    """A torch checkpoint that torch.load accepts: ~1.3 MB on disk, 280 MB once loaded
    (one all-zero tensor, deflated; torch.save itself never compresses)."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.empty(1000)}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with archive.open(info.filename, "w", force_zip64=True) as handle:
                    chunk, left = bytes(1 << 22), floats * 4
                    while left:
                        handle.write(chunk[:min(left, len(chunk))])
                        left -= min(left, len(chunk))
            elif info.filename.endswith("data.pkl"):  # 1000 elements -> `floats` elements
                size = b"J" + struct.pack("<i", floats)  # BININT2 1000 -> BININT `floats`
                pkl = src.read(info.filename).replace(b"M\xe8\x03", size)
                archive.writestr(info.filename, pkl)
            else:
                archive.writestr(info.filename, src.read(info.filename))
    return path


def _drop(section: str, key: str):
    return lambda payload: payload["config"][section].pop(key)


def _nan_weight(payload):
    name = next(k for k, v in payload["model"].items() if v.is_floating_point() and v.numel() > 3)
    payload["model"][name].view(-1)[:3] = float("nan")


def _inf_criterion(payload):
    payload["criterion"]["weighting.log_vars"][0] = float("inf")


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_CASES = [  # (id, how the file is made, extra argv, env, fragments of the message)
    ("zip-bomb", lambda good, p: _zip_bomb(p), [], {},
     ["would expand to 267.0 MiB", "zip bomb", "refused"]),
    ("over-size-limit", lambda good, p: _link(good, p), [],
     {"XTC_MAX_CHECKPOINT_BYTES": "1000"},
     ["over the 1000 bytes limit", "XTC_MAX_CHECKPOINT_BYTES"]),
    ("bad-size-limit", lambda good, p: _link(good, p), [],
     {"XTC_MAX_CHECKPOINT_BYTES": "lots"}, ["XTC_MAX_CHECKPOINT_BYTES='lots' must be a positive"]),
    ("config-lacks-a-key", lambda good, p: _edited(good, p, _drop("loss", "lambda1")), [], {},
     ["config lacks ['loss.lambda1']", f"xtc 0.1.0, checkpoint schema {checkpoint.SCHEMA}",
      "retrain"]),
    ("schema-2-lacks-added-key", lambda good, p: _edited(good, p, _drop("train", "protocol")),
     [], {}, ["config lacks ['train.protocol']"]),
    ("config-unknown-key",
     lambda good, p: _edited(good, p, lambda d: d["config"]["loss"].update(lamda=0.3)), [], {},
     ["keys this xtc does not know ['loss.lamda']"]),
    ("no-config-entry", lambda good, p: _edited(good, p, lambda d: d.pop("config")), [], {},
     ["has no 'config' entry", "not written by `xtc train`"]),
    ("no-num-classes", lambda good, p: _edited(good, p, lambda d: d.pop("num_classes")), [], {},
     ["has no 'num_classes' entry"]),
    ("nan-weights", lambda good, p: _edited(good, p, _nan_weight), [], {},
     ["non-finite (NaN/inf) weights", "1 of the", "tensors in 'model' (3 values"]),
    ("inf-criterion", lambda good, p: _edited(good, p, _inf_criterion), [], {},
     ["tensors in 'criterion' (1 values, e.g. weighting.log_vars)"]),
    ("criterion-mismatch", lambda good, p: _link(good, p),
     ["--set", "loss.weighting=gradnorm"], {},
     ["trained with loss.weighting=uncertainty", "does not fit the criterion of "
      "loss.weighting=gradnorm", "drop the loss.* --set overrides"]),
    ("bad-yaml-in-set", lambda good, p: _link(good, p),
     ["--set", "data.root=[x"], {}, ["override 'data.root=[x'", "not valid YAML"]),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind, make, argv, env, fragments", CHECKPOINT_CASES,
                         ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoints_round2(kind, make, argv, env, fragments, good, untouched, tmp_path,
                                capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = make(good, tmp_path / f"{kind}.pt")
    before = _snapshot(tmp_path)
    err = _run(["evaluate", "--checkpoint", str(path), "--quiet", *argv], capsys)
    for fragment in fragments:
        assert fragment in err
    if kind not in ("bad-size-limit", "bad-yaml-in-set"):
        assert str(path) in err  # the file is named
    assert _snapshot(tmp_path) == before  # nothing written next to it (no eval-test/)


def test_an_old_checkpoint_without_the_added_keys_gets_the_old_behaviour(good, tmp_path):
    """A schema-1 checkpoint (no stamp) lacks only keys of ADDED_KEYS: it loads, with the
    values the older xtc used, not today's defaults (split from data.seed, stl weighting)."""
    payload = torch.load(good, weights_only=True)
    for key in ("schema", "xtc_version"):
        payload.pop(key)
    payload["config"]["data"]["seed"] = 5
    payload["config"]["train"]["seed"] = 1
    for key in ADDED:
        section, _, name = key.partition(".")
        payload["config"][section].pop(name)
    cfg = checkpoint.config_of(payload, tmp_path / "old.pt")
    assert cfg.data.split_seed == 5  # not train.seed, today's rule
    assert cfg.loss.single_task_weighting == "uncertainty"  # the saved loss.weighting
    assert cfg.loss.ssim_max_val == 1.0 and cfg.train.protocol == "xtc"
    payload["config"]["loss"].pop("lambda2")  # not an added key: refused even in schema 1
    with pytest.raises(checkpoint.CheckpointError, match=r"lacks \['loss.lambda2'\]"):
        checkpoint.config_of(payload, tmp_path / "old.pt")


ADDED = ["train.protocol", "data.split_seed", "loss.ssim_max_val", "loss.single_task_weighting"]


# --------------------------------------------------------------------------- evaluate's output


def test_evaluate_refuses_to_overwrite_the_training_results(run_dir, good, untouched, capsys):
    err = _run(["evaluate", "--checkpoint", str(good), "--out", str(run_dir), "--quiet"], capsys)
    assert f"{run_dir / 'results.json'} already holds a training run's results" in err
    assert f"--out {run_dir / 'eval-test'}" in err


def test_evaluate_refuses_another_splits_evaluation(good, tmp_path, capsys):
    out = tmp_path / "ev"
    results.write(out, metrics={"val": {"miou": 0.5}}, kind="evaluation",
                  checkpoint=str(good.resolve()), split="val")
    before = (out / "results.json").read_bytes()
    err = _run(["evaluate", "--checkpoint", str(good), "--out", str(out), "--quiet"], capsys)
    assert "already holds the evaluation of" in err and "on its val split" in err
    assert (out / "results.json").read_bytes() == before


def test_train_split_is_evaluated_without_augmentation(run_dir, good, tmp_path, capsys):
    """Twice the same numbers, equal to an un-augmented dataset's; the same evaluation may
    replace its own results.json; the protocol and the precision used are recorded."""
    import dataclasses

    from xtc.data import build_dataset_from_config
    from xtc.losses import build_criterion
    from xtc.models import build_model_from_config
    from xtc.train import _loader, evaluate

    out = tmp_path / "train-eval"
    runs = []
    for _ in range(2):
        assert main(["evaluate", "--checkpoint", str(good), "--split", "train", "--out",
                     str(out), "--quiet"]) == 0
        runs.append(json.loads((out / "results.json").read_text()))
    capsys.readouterr()
    assert runs[0]["metrics"] == runs[1]["metrics"]
    payload = checkpoint.load(good)
    cfg = checkpoint.config_of(payload, good)
    model = build_model_from_config(cfg, num_classes=payload["num_classes"])
    model.load_state_dict(payload["model"])
    criterion = build_criterion(cfg, model)
    criterion.load_state_dict(payload["criterion"])
    plain = build_dataset_from_config(dataclasses.replace(cfg.data, augment=False), "train")
    expected = json.loads(json.dumps(results._strict(
        evaluate(model, _loader(plain, cfg), criterion, torch.device("cpu")))))
    assert runs[0]["metrics"]["train"] == expected
    doc = runs[0]
    assert doc["kind"] == "evaluation" and doc["split"] == "train"
    assert doc["protocol"]["split"] == "train" and "evaluated once" in doc["protocol"]["weights"]
    assert doc["protocol"]["augmentation"].startswith("none")
    assert doc["protocol"]["depth_units"] == plain.depth_units and "miou" in doc["protocol"]
    assert doc["provenance"]["precision"] == "fp32"


# --------------------------------------------------------------------------- OS errors


def _enospc_text(monkeypatch):
    """results.json's write callback hits a full disk after writing part of the file."""
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        if self.name.startswith(".results.json."):
            real(self, text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)


def test_disk_full_while_writing_evaluation_results(good, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(good), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    _enospc_text(monkeypatch)
    err = _run(["evaluate", "--checkpoint", str(good), "--out", str(out), "--quiet"], capsys)
    assert f"{out / 'results.json'}: No space left on device (ENOSPC); free disk space" in err
    assert _snapshot(out) == before  # the earlier result is intact, no temporary file left


def test_disk_full_while_writing_a_checkpoint(tmp_path, capsys, monkeypatch):
    def full(payload, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), handle.name)

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    err = _run(["train", "--out", str(out), "--quiet", *_sets()], capsys)
    assert "checkpoints" in err and ".pt: No space left on device (ENOSPC)" in err
    assert ".tmp" not in err
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    probe = Path("/sys/xtc-write-probe")  # root may write anywhere but a kernel file system
    try:
        probe.mkdir()
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
            return probe / "out"
        raise
    probe.rmdir()
    pytest.skip("running as root and /sys is writable: no read-only folder to test with")


OUT_CASES = [  # (id, --out relative to tmp_path or a builder, fragments)
    ("parent-is-a-file", lambda t: (t / "afile").write_text("x") and t / "afile" / "out",
     ["afile/out", "Not a directory (ENOTDIR)", "a part of the path is a file"]),
    ("out-is-a-file", lambda t: (t / "afile").write_text("x") and t / "afile",
     ["afile", "File exists (EEXIST)", "choose another path"]),
    ("name-too-long", lambda t: t / ("x" * 300) / "out",
     ["File name too long (ENAMETOOLONG)", "at most 255 bytes"]),
    ("read-only-folder", _read_only_folder,
     ["(E", "choose a"]),  # EPERM/EACCES/EROFS, each with its fix
]


@pytest.mark.parametrize("kind, make, fragments", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_evaluate_into_a_folder_that_cannot_be_written(kind, make, fragments, good, untouched,
                                                       tmp_path, capsys):
    out = make(tmp_path)
    before = _snapshot(tmp_path)
    err = _run(["evaluate", "--checkpoint", str(good), "--out", str(out), "--quiet"], capsys)
    for fragment in fragments:
        assert fragment in err
    assert _snapshot(tmp_path) == before


def test_train_into_an_over_long_path(tmp_path, capsys):
    err = _run(["train", "--out", str(tmp_path / ("y" * 300)), "--quiet", *_sets()], capsys)
    assert "File name too long (ENAMETOOLONG)" in err and "shorten the path" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_yaml_in_a_train_override(tmp_path, capsys):
    err = _run(["train", "--out", str(tmp_path / "run"), "--set", "train.epochs=[1"], capsys)
    assert "override 'train.epochs=[1'" in err and "not valid YAML" in err
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_one_line(tmp_path, capsys, monkeypatch):
    from xtc import train

    real = train.forward_losses

    def diverged(*args, **kwargs):
        return {k: v * float("nan") for k, v in real(*args, **kwargs).items()}

    monkeypatch.setattr(train, "forward_losses", diverged)
    out = tmp_path / "run"
    err = _run(["train", "--out", str(out), "--quiet", *_sets()], capsys)
    assert "non-finite loss at epoch 1, step 1" in err and "lower optim.lr" in err
    assert not (out / "results.json").exists()


def test_resume_from_a_checkpoint_without_its_mid_epoch_state(good, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    last = _edited(good, out / "checkpoints" / "last.pt", lambda d: d.pop("partial"))
    before = _snapshot(out)
    err = _run(["train", "--out", str(out), "--resume", "--quiet", *_sets()], capsys)
    assert f"checkpoint {last} has no 'partial' entry" in err
    assert _snapshot(out) == before


def test_a_bare_key_error_names_the_missing_entry():
    assert cli._user_message(KeyError("config")) == "missing entry 'config' (KeyError)"
    assert cli._user_message(OSError(errno.EIO, "I/O error", "x")) is None  # not the user's


# --------------------------------------------------------------------------- files and secrets


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        written = [results.write(tmp_path / "r", metrics={"miou": 0.5}),
                   checkpoint.save({"model": {"w": torch.zeros(2)}}, tmp_path / "c" / "last.pt")]
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [mode, mode]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("given", [None, "c0ffee"])
def test_lab_token_travels_in_the_environment_and_matches_the_url(given, tmp_path):
    """`make lab` with a stand-in jupyter that reports its arguments and environment: the
    URL's token is the one Jupyter gets, and no token is on any command line."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".xtc-installed").touch()  # `setup` is up to date: nothing is installed
    jupyter = venv / "bin" / "jupyter"
    jupyter.write_text('#!/bin/sh\necho "ARGS $*"\necho "ENV ${JUPYTER_TOKEN}"\n')
    jupyter.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TOKEN", "JUPYTER_TOKEN")}
    argv = ["make", "-s", "-C", str(ROOT), "lab", f"VENV={venv}"]
    if given:
        env["TOKEN"] = given
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    url_token = out.stdout.split("token=", 1)[1].split()[0]
    assert lines["ENV"] == url_token  # the URL works: Jupyter got the printed token
    if given:
        assert url_token == given
    else:
        assert len(url_token) == 32 and int(url_token, 16) >= 0  # secrets.token_hex(16)
    assert "token" not in lines["ARGS"].lower()  # not visible in `ps`
    dry = subprocess.run(argv[:1] + ["-n"] + argv[1:], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    assert url_token not in dry and "token=" not in dry.replace("token=$JUPYTER_TOKEN", "")
