"""torchrun with two CPU processes (gloo) ends with the weights of one process trained on
the same global batches (SyncBatchNorm makes the BatchNorm statistics global)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def _write_dataset(root: Path) -> Path:
    """NYUv2-layout data without ignored pixels: every rank's cross-entropy then averages
    the same number of pixels, so the mean of the ranks' losses is the global loss."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 4)):
        for sub in ("image", "label", "depth"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((64, 64, 3)))
            np.save(root / split / "label" / f"{i}.npy", rng.integers(0, 13, (64, 64)) * 1.0)
            np.save(root / split / "depth" / f"{i}.npy", rng.random((64, 64, 1)) + 0.5)
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["-m", "xtc", "train", "--out", str(out), "--quiet"]
    for item in [*TINY, "data.name=nyuv2", f"data.root={data}", "data.augment=false",
                 "train.epochs=1", "train.max_steps_per_epoch=3", "train.batch_size=4",
                 # SGD: Adam's first steps are sign(grad) * lr, which turns float noise in
                 # near-zero gradients into lr-sized weight differences.
                 "optim.name=sgd", "optim.lr=0.05", *extra]:
        args += ["--set", item]
    return args


def _torchrun(data: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_port", "29517", *_args(data, out, *extra)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item()
               for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = _write_dataset(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, *_args(data, tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = _torchrun(data, tmp_path / "two")
    # float32 reductions in another order: weights (of order 0.1-1) agree to ~1e-4.
    assert _max_difference(a, b) < 2e-4
    # Without SyncBatchNorm each rank normalises with its own half batch: far apart. This
    # is what the tolerance above must (and does) tell apart.
    c = _torchrun(data, tmp_path / "unsynced", "train.sync_batchnorm=false")
    assert _max_difference(a, c) > 10 * _max_difference(a, b)
    one_results = (tmp_path / "one" / "results.json").read_text()
    import json
    ra, rb = json.loads(one_results), json.loads((tmp_path / "two" / "results.json").read_text())
    assert rb["provenance"]["world_size"] == 2
    assert rb["metrics"]["test"]["miou"] == pytest.approx(ra["metrics"]["test"]["miou"], abs=2e-3)
    assert rb["metrics"]["test"]["abs_err"] == pytest.approx(ra["metrics"]["test"]["abs_err"],
                                                             rel=1e-3)
