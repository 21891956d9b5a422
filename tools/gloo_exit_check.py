"""How often a two-rank gloo job of xtc's CPU SyncBatchNorm dies at exit.

Usage: ``python tools/gloo_exit_check.py [--runs 20] [--load-torch-distributed-nn]``.
Spawns the two-rank check of ``tests/test_distributed.py`` (SyncBatchNorm2d on half the
batch each against BatchNorm2d on the whole batch) ``--runs`` times and prints JSON with
how many runs a rank ended by a signal. ``--load-torch-distributed-nn`` imports
``torch.distributed.nn.functional`` in each rank once the group exists, as xtc's
SyncBatchNorm2d did until it got its own all-reduce Function: then 21 of 55 runs
abort at exit ("terminate called without an active exception"), which is what failed CI.
Imported before ``init_process_group`` it does no harm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent


def _rank(rank: int, world: int, store: str, load_nn: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from tests.test_distributed import _check_against_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        if load_nn:  # where the old SyncBatchNorm2d.forward imported it: after the group
            import torch.distributed.nn.functional  # noqa: F401
        _check_against_batchnorm(rank, world)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load-torch-distributed-nn", action="store_true")
    args = parser.parse_args()
    failures: list[str] = []
    start = time.perf_counter()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                mp.spawn(_rank, args=(2, os.path.join(tmp, "store"),
                                      args.load_torch_distributed_nn), nprocs=2, join=True)
            except mp.ProcessExitedException as exc:
                failures.append(str(exc))
    print(json.dumps({"runs": args.runs, "died": len(failures),
                      "load_torch_distributed_nn": args.load_torch_distributed_nn,
                      "seconds": round(time.perf_counter() - start, 1),
                      "failures": sorted(set(failures))}))


if __name__ == "__main__":
    main()
