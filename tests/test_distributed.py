"""torchrun with two CPU processes (gloo) ends with the weights of one process trained on
the same global batches (SyncBatchNorm makes the BatchNorm statistics global), in fp32 and
in bf16 autocast with channels_last; the CPU SyncBatchNorm matches torch's BatchNorm."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import TINY
from xtc.distributed import SyncBatchNorm2d

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
    # --standalone picks a free port: test files running at the same time do not collide.
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *_args(data, out, *extra)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item()
               for k in a if a[k].is_floating_point())


def _one_process(data: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *_args(data, out, *extra)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = _write_dataset(tmp_path / "data")
    a = _one_process(data, tmp_path / "one")
    b = _torchrun(data, tmp_path / "two")
    # float32 reductions in another order: weights (of order 0.1-1) agree to ~1e-4.
    assert _max_difference(a, b) < 2e-4
    # Without SyncBatchNorm each rank normalises with its own half batch: far apart. This
    # is what the tolerance above must (and does) tell apart.
    c = _torchrun(data, tmp_path / "unsynced", "train.sync_batchnorm=false")
    assert _max_difference(a, c) > 10 * _max_difference(a, b)
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert rb["provenance"]["world_size"] == 2
    assert rb["metrics"]["test"]["miou"] == pytest.approx(ra["metrics"]["test"]["miou"], abs=2e-3)
    assert rb["metrics"]["test"]["abs_err"] == pytest.approx(ra["metrics"]["test"]["abs_err"],
                                                             rel=1e-3)


# Explicit: train.precision=auto is fp32 on a CPU without native bf16.
BF16 = ("train.precision=bf16", "train.channels_last=true")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_in_bf16_channels_last(tmp_path):
    """The quick config's setting (bf16 autocast, NHWC) under torchrun: it used to crash in
    SyncBatchNorm (bf16 statistics into the fp32 running statistics)."""
    data = _write_dataset(tmp_path / "data")
    a = _one_process(data, tmp_path / "one", *BF16)
    b = _torchrun(data, tmp_path / "two", *BF16)
    fp32 = _one_process(data, tmp_path / "fp32")
    # bf16 rounds every activation to 8 bits, and 3 SGD steps carry the rounding into the
    # weights and running statistics: one process in bf16 vs fp32 differ by ~0.009 here, and
    # by 0.016 with and without channels_last. Each rank's half-batch rounding is just such a
    # different rounding: measured 0.014, so allow 4 x the bf16-vs-fp32 spread; 0.05 (unsynced
    # BatchNorm is 0.2 away, measured) keeps the bound meaningful should that spread be large.
    spread = _max_difference(a, fp32)
    assert _max_difference(a, b) < min(4 * spread, 0.05)
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert ra["provenance"]["precision"] == rb["provenance"]["precision"] == "bf16"
    assert rb["provenance"]["world_size"] == 2
    assert rb["metrics"]["test"]["miou"] == pytest.approx(ra["metrics"]["test"]["miou"], abs=2e-3)
    assert rb["metrics"]["test"]["abs_err"] == pytest.approx(ra["metrics"]["test"]["abs_err"],
                                                             rel=2e-3)


def _check_against_batchnorm(rank: int, world: int) -> None:
    """Each rank's SyncBatchNorm2d on its share of a bf16 channels_last batch, under bf16
    autocast, against torch's BatchNorm2d on the whole batch: outputs, gradients, running
    statistics and dtypes. 15x15 images: the per-channel counts (450, 900) are not bf16
    numbers, and the mean of 1 makes bf16 sums lose digits, so bf16 statistics would show."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 15, 15, generator=gen) * 2 + 1).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(4, 3, 15, 15, generator=gen)
    ref, bn = nn.BatchNorm2d(3), SyncBatchNorm2d(3)
    with torch.no_grad():
        for m in (ref, bn):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    for _ in range(2):  # the second step starts from non-trivial running statistics
        xr, xs = x.clone().requires_grad_(), x[share].clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            yr, ys = ref(xr), bn(xs)
        assert ys.dtype == yr.dtype == torch.bfloat16
        assert ys.is_contiguous(memory_format=torch.channels_last)
        assert yr.is_contiguous(memory_format=torch.channels_last)
        (yr.float() * upstream).sum().backward()
        (ys.float() * upstream[share]).sum().backward()
        # Both round fp32 results to bf16: one bf16 step (2**-8 relative) apart at most.
        torch.testing.assert_close(ys, yr[share], rtol=2 ** -7, atol=1e-5)
        assert xs.grad.dtype == torch.bfloat16
        # Input gradients cancel (g - mean(g) - x_hat * mean(g * x_hat)); torch's bf16 backward
        # itself is up to ~1.3 bf16 steps (at the gradient's scale) off a float64 reference.
        step = 2 ** -8 * xr.grad.abs().max().item()
        torch.testing.assert_close(xs.grad, xr.grad[share], rtol=2 ** -7, atol=3 * step)
    grads = [bn.weight.grad, bn.bias.grad]
    if world > 1:  # DDP sums (averages) the ranks' parameter gradients
        for g in grads:
            dist.all_reduce(g)
    # torch's bf16 backward sums its parameter gradients with bf16 roundings (~0.2% off a
    # float64 reference here; ours are fp32-accurate): a bf16 step at the gradient's scale.
    for got, want in [(grads[0], ref.weight.grad), (grads[1], ref.bias.grad)]:
        assert got.dtype == want.dtype == torch.float32
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=2 ** -7, atol=2 ** -7 * scale)
    # The running statistics are fp32 in both: fp32 rounding in another order (1e-7). bf16
    # batch statistics would be ~1e-4 off (0.1 * mean * 2**-9, and worse for the count).
    for got, want in [(bn.running_mean, ref.running_mean), (bn.running_var, ref.running_var)]:
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 2


def test_sync_batchnorm_matches_batchnorm_under_bf16_autocast(monkeypatch):
    """A one-rank gloo group runs the synced arithmetic (counted all-reduces prove it)."""
    calls = []
    original = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: calls.append(1)
                        or original(t, *a, **k))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        _check_against_batchnorm(0, 1)
    finally:
        dist.destroy_process_group()
    # Two steps, each with two all-reduces forward (sums with the count, squared deviations)
    # and their two backward.
    assert len(calls) == 8


def _spawned(rank: int, world: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _check_against_batchnorm(rank, world)
        # Loading it here made 21 of 55 such runs abort at exit (see _AllReduceSum).
        assert "torch.distributed.nn" not in sys.modules
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_over_two_ranks_matches_batchnorm_on_whole_batch(tmp_path):
    """Two gloo ranks with half the batch each: the statistics and gradients are global."""
    mp.spawn(_spawned, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
