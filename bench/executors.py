"""Wall time of the same small sweep with the local and the Slurm executor.

A 3-point tiny sweep of ``notebooks/02_train.ipynb`` (stl-seg, mtl, xtc; 64x64 images, a
resnet18 encoder, 2 epochs of 3 steps; no analysis notebook) runs into a fresh reports
folder per repeat: once with ``--executor local --workers W`` (W processes, cores / W
threads each) and once with ``--executor slurm`` (one task of a job array per point,
``cpus_per_task = cores / W``, at most W at once), alternating which goes first. The Slurm
side includes submission, queueing and the scheduler's start-up of each task; it needs a
running Slurm (``tools/slurm-local.sh start`` gives a one-node one here, as root: it is
started when none answers and stopped afterwards).

    .venv/bin/python bench/executors.py --json [--repeats 2] [--workers 2]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from _common import ROOT, emit, log, machine_info, median, parser  # noqa: E402

SCRIPT = ROOT / "tools" / "slurm-local.sh"
PARAMETERS = {"config": "configs/tiny.yaml", "device": "cpu", "epochs": 2,
              "max_steps_per_epoch": 3, "n_gallery": 1}
RUNS = [{"method": "stl-seg", "seed": 0}, {"method": "mtl", "seed": 0},
        {"method": "xtc", "cross_task": "consistency", "seed": 0}]


def _slurm_up() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0


def _sweep(plan: Path, reports: Path, executor: str, workers: int, cpus: int) -> dict:
    cmd = [sys.executable, "-m", "xtc", "sweep", str(plan), "--reports-dir", str(reports),
           "--executor", executor]
    cmd += (["--workers", str(workers)] if executor == "local" else
            ["--cpus-per-task", str(cpus), "--max-parallel", str(workers), "--mem-gb", "2"])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{executor} sweep failed:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    runs = {}
    for run in sorted((reports / "bench").iterdir()):
        status = run / "status.json"
        if status.is_file():
            record = json.loads(status.read_text())
            runs[run.name] = {"status": record["status"], "seconds": record.get("seconds"),
                              "job_id": record.get("job_id")}
    assert all(r["status"] == "ok" for r in runs.values()), runs
    return {"wall_s": round(seconds, 2), "runs": runs}


def run(args) -> dict:
    cores = os.cpu_count() or 1
    workers = args.workers
    cpus = max(1, cores // workers)
    started = False
    if not _slurm_up():
        log("starting the one-node Slurm cluster (tools/slurm-local.sh start)")
        out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench/executors.py needs Slurm: {out.stderr.strip()}")
        started = True
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True,
                          check=True).stdout.strip().split("=", 1)[1]
    os.environ.setdefault("SLURM_CONF", conf)
    tmp = Path(tempfile.mkdtemp(prefix="xtc-bench-executors-"))
    plan = tmp / "bench.yaml"
    plan.write_text(yaml.safe_dump({"parameters": PARAMETERS, "runs": RUNS, "analysis": []}))
    result = {"benchmark": "executors", "points": len(RUNS), "workers": workers,
              "threads_per_run": cpus, "repeats": args.repeats, **machine_info(),
              "local": [], "slurm": []}
    try:
        for r in range(args.repeats):
            order = ["local", "slurm"] if r % 2 == 0 else ["slurm", "local"]
            for executor in order:
                reports = tmp / f"{executor}-{r}"
                log(f"round {r + 1}/{args.repeats}: {executor}")
                result[executor].append(_sweep(plan, reports, executor, workers, cpus))
                shutil.rmtree(reports, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if started:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True)
    local = median([x["wall_s"] for x in result["local"]])
    slurm = median([x["wall_s"] for x in result["slurm"]])
    result.update(local_wall_s=round(local, 2), slurm_wall_s=round(slurm, 2),
                  slurm_overhead_s=round(slurm - local, 2),
                  slurm_over_local=round(slurm / local, 3))
    return result


def human(result: dict) -> str:
    return (f"{result['points']}-point tiny sweep, {result['workers']} at once: local "
            f"{result['local_wall_s']:.1f} s, slurm {result['slurm_wall_s']:.1f} s "
            f"(+{result['slurm_overhead_s']:.1f} s, x{result['slurm_over_local']:.2f})")


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="runs at once (both executors)")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    emit(run(args), args.json, human)
