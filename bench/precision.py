"""Does bf16 cost accuracy? Train ``synthetic-quick`` in fp32 and in bf16 (autocast +
channels_last, the fastest sane settings of ``train_step.py``) over several seeds, and compare
the test metrics with the spread between seeds.

Every run is a fresh ``python -m xtc train`` process, one after the other (on 2 cores,
parallel runs would slow each other). For each metric, the precisions *agree* when
``|mean_bf16 - mean_fp32| <= max(std_fp32, std_bf16)`` (sample std over seeds): the
precision changes the result less than the seed does. Wall times come from the same runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

PRECISIONS = {  # name: config overrides
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=true"],
}
METRICS = ("miou", "pixel_acc", "abs_err", "rel_err", "delta1")
QUICK_OVERRIDES = ["train.epochs=1", "data.height=32", "data.width=64",
                   "train.batch_size=4"]  # on top of configs/tiny.yaml (--quick's config)


def train(config: Path, overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "xtc", "train", "--config", str(config), "--out", str(out),
           "--quiet"] + [a for o in overrides for a in ("--set", o)]
    start = _common.now()
    done = subprocess.run(cmd, cwd=_common.ROOT, capture_output=True, text=True)
    wall = _common.now() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads((out / "results.json").read_text())
    return {"wall_s": wall, "test": {m: result["metrics"]["test"][m] for m in METRICS},
            "best_epoch": result["best_epoch"]}


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    seeds = list(range(args.seeds))
    config = _common.config_path(args, _common.ROOT / "configs" / "synthetic-quick.yaml")
    extra = (QUICK_OVERRIDES if args.quick else []) + (args.set or [])
    runs: dict[str, dict[int, dict]] = {p: {} for p in PRECISIONS}
    with tempfile.TemporaryDirectory(prefix="xtc-precision-") as tmp:
        for seed in seeds:  # alternate the precisions so drift in machine load hits both
            for name, overrides in PRECISIONS.items():
                out = Path(tmp) / f"{name}-seed{seed}"
                runs[name][seed] = train(config, overrides + extra +
                                         [f"train.seed={seed}"], out)
                log(f"{name} seed {seed}: {runs[name][seed]['wall_s']:.0f}s "
                    f"{runs[name][seed]['test']}")
    summary = {}
    for metric in METRICS:
        per = {p: [runs[p][s]["test"][metric] for s in seeds] for p in PRECISIONS}
        mean = {p: statistics.fmean(v) for p, v in per.items()}
        std = {p: _std(v) for p, v in per.items()}
        gap = abs(mean["bf16"] - mean["fp32"])
        spread = max(std.values())
        summary[metric] = {"mean": mean, "std": std, "abs_diff_of_means": gap,
                           "seed_spread": spread, "agree": gap <= spread}
    wall = {p: statistics.fmean(r["wall_s"] for r in runs[p].values()) for p in PRECISIONS}
    return {"config": str(config), "overrides": extra, "seeds": seeds,
            "precisions": PRECISIONS, "runs": runs, "metrics": summary,
            "all_agree": all(m["agree"] for m in summary.values()),
            "mean_wall_s": wall, "bf16_speedup": wall["fp32"] / wall["bf16"],
            "agreement_rule": "|mean_bf16 - mean_fp32| <= max(std_fp32, std_bf16) over seeds",
            "machine": _common.machine_info()}


def human(r: dict) -> str:
    lines = [f"{r['config']} over seeds {r['seeds']} {r['overrides'] or ''}",
             f"{'metric':10s} {'fp32':>17s} {'bf16':>17s} {'|diff|':>8s} {'spread':>8s} agree"]
    for m, s in r["metrics"].items():
        cell = lambda p: f"{s['mean'][p]:.4f}±{s['std'][p]:.4f}"  # noqa: E731
        lines.append(f"{m:10s} {cell('fp32'):>17s} {cell('bf16'):>17s} "
                     f"{s['abs_diff_of_means']:8.4f} {s['seed_spread']:8.4f} {s['agree']}")
    lines.append(f"wall per run: fp32 {r['mean_wall_s']['fp32']:.0f}s, bf16 "
                 f"{r['mean_wall_s']['bf16']:.0f}s ({r['bf16_speedup']:.2f}x)")
    return "\n".join(lines)


def make_parser():
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path,
                   help="YAML config (default synthetic-quick; --quick: tiny)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per precision (3)")
    p.add_argument("--set", action="append", help="extra section.key=value override")
    return p


if __name__ == "__main__":
    _common.main(make_parser(), run, human)
