"""Helpers shared by the bench scripts: timing, interleaved repeats, peak matmul, machine info.

Every benchmark runs the candidates it compares in ONE process and alternates them
(round r runs every candidate once, in an order rotated by r), then reports medians. On a
loaded machine the absolute times drift, but both sides of a ratio see the same drift.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def now() -> float:
    return time.perf_counter()


def synchronize() -> None:
    """Wait for queued GPU work (CUDA runs asynchronously to the host); no-op on a CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes, its GPU work included."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                on_round: Callable[[int, dict], None] | None = None) -> dict[str, list[float]]:
    """Run every candidate ``warmup`` times, then ``repeats`` rounds in which each runs once,
    in an order rotated by the round index. Returns the per-round seconds per candidate."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        this_round = {}
        for name in order:
            this_round[name] = timed(candidates[name])
            times[name].append(this_round[name])
        if on_round is not None:
            on_round(r, this_round)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[r] / denominator[r] (paired, so load cancels)."""
    pairs = [a / b for a, b in zip(numerator, denominator) if b > 0]
    return median(pairs)


def peak_matmul_flops(dtype: torch.dtype, n: int = 4096, repeats: int = 3,
                      device: torch.device | str | None = None) -> float:
    """Best-of-``repeats`` FLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` (2 n^3 FLOPs)
    on ``device`` (default: the GPU when there is one, where the benchmarks train)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN / BLAS kernel selection)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    except OSError:
        pass
    return []


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu: {cpu_model()}"


def machine_info() -> dict:
    """What the JSON of every script reports about where it ran."""
    return {"device": device_name(), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg())}


TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def config_path(args, default: Path | None) -> Path | None:
    """The config a bench starts from: ``--config`` when given, else ``configs/tiny.yaml``
    under ``--quick`` (the smoke size the notebooks and tests start from too), else the
    bench's own default (``None``: the paper's defaults)."""
    if getattr(args, "config", None):
        return Path(args.config)
    return TINY_CONFIG if args.quick else default


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, 1-2 repeats (a smoke test, numbers meaningless)")
    p.add_argument("--seed", type=int, default=0)
    return p


def log(message: str, quiet: bool = False) -> None:
    """Progress on stderr, so stdout stays one JSON object under --json."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def main(parser, run: Callable, human: Callable[[dict], str], argv=None) -> dict:
    """Parse ``argv``, ``run(args)``, print the result (JSON with --json) and return it."""
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, args.json, human)
    return result


def emit(result: dict, as_json: bool, human: Callable[[dict], str]) -> None:
    result.setdefault("load_average_end", list(os.getloadavg()))
    if as_json:
        print(json.dumps(result, indent=1, default=_jsonable))
    else:
        print(human(result))


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)
