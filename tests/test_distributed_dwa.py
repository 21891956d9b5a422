"""DWA under torchrun: the epoch means are summed over the ranks before the weights are
rolled, so every rank (and results.json) holds the weights of one process trained on the
same global batches, not those of rank 0's shard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_distributed import _args

ROOT = Path(__file__).resolve().parent.parent


def _write_uneven_dataset(root: Path) -> Path:
    """NYUv2 layout without ignored or invalid pixels (every rank's loss averages the same
    number of pixels), but with depth near 1 m in some images and near 7 m in others: each
    rank's shard of a shuffled epoch then has its own depth loss, far from the global one."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("val", 4)):
        for sub in ("image", "label", "depth"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = 1.0 if rng.random() < 0.5 else 7.0
            np.save(root / split / "image" / f"{i}.npy", rng.random((64, 64, 3)))
            np.save(root / split / "label" / f"{i}.npy", rng.integers(0, 13, (64, 64)) * 1.0)
            np.save(root / split / "depth" / f"{i}.npy", rng.random((64, 64, 1)) + base)
    return root


def _weights(out: Path) -> list[list[float]]:
    history = json.loads((out / "results.json").read_text())["history"]
    return [[epoch["weights"]["seg"], epoch["weights"]["depth"]] for epoch in history]


@pytest.mark.slow
def test_two_gloo_processes_log_the_dwa_weights_of_one_process(tmp_path):
    data = _write_uneven_dataset(tmp_path / "data")
    extra = ["train.epochs=3", "loss.weighting=dwa"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, *_args(data, tmp_path / "one", *extra)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", "29531",
                          *_args(data, tmp_path / "two", *extra)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.array(_weights(tmp_path / "one")), np.array(_weights(tmp_path / "two"))
    assert a.shape == b.shape == (3, 2)
    assert (a[:1] == 1.0).all() and np.abs(a[1:] - 1.0).max() > 1e-3  # DWA did move them
    # Rank 0's own shard means (the defect) put the weights ~0.1 off here. The two runs'
    # models drift apart by fp32 reductions in another order (~1e-4, see test_distributed),
    # which moves the third epoch's weights by ~5e-6: 1e-4 sits between with margin.
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
