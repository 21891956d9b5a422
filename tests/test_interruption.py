"""Training killed at random moments (SIGKILL, also mid-checkpoint) and resumed ends with
weights bit-for-bit equal to an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [*TINY, "train.epochs=4", "train.max_steps_per_epoch=6", "train.checkpoint_every=1",
            "data.train_size=64",
            "loss.weighting=dwa"]  # dwa: its epoch-level state must survive the kills too


def _command(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "xtc", "train", "--out", str(out), "--quiet"]
    for item in SETTINGS:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_ten_random_sigkills_then_resume_give_identical_weights(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(reference, False), check=True, env=_env(), capture_output=True)

    out, rng, kills = tmp_path / "killed", random.Random(1234), 0
    for _ in range(60):
        resume = (out / "checkpoints" / "last.pt").exists()
        proc = subprocess.Popen(_command(out, resume), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if kills < 10:
            time.sleep(rng.uniform(1.5, 5.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        if (out / "results.json").exists():
            break
    assert kills >= 10
    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"] == b["history"]


@pytest.mark.slow
def test_sigterm_from_outside_exits_cleanly_with_a_resume_hint(tmp_path):
    out = tmp_path / "run"
    cmd = _command(out, False)
    cmd[cmd.index("train.epochs=4")] = "train.epochs=40"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    message = err.decode().strip().splitlines()[-1]
    assert proc.returncode == 130 and "--resume" in message and "SIGTERM" in message
    assert (out / "checkpoints" / "last.pt").exists()
