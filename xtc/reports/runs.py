"""Run bookkeeping, so that a sweep never loses or misreports a run.

* A run is *done* (and skipped) only when its status.json says ``ok``, its results.json
  parses with ``metrics.test``, the results' sha256 equals the one status.json recorded,
  and the parameters status.json recorded equal the plan's. Otherwise it is rerun, and the
  record says why (``parameters changed: epochs 3 -> 5``).
* Nothing is deleted: a run folder that is rerun while it holds results.json or
  checkpoints/ from an earlier attempt, and a run folder that is no longer in the plan, is
  moved (renamed) to ``<plan>/.attempts/<run>-<timestamp>/`` with a ``MOVED_ASIDE.json``
  saying why. Hidden folders are skipped by the index and
  :func:`xtc.analysis.summary.collect`, so moved attempts never enter a table.
* One writer per plan folder: a sweep holds ``fcntl.flock`` on ``<plan>/.lock`` (which
  records its pid) while it runs; a second sweep of the same folder stops with an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xtc import files
from xtc.errors import PlanError
from xtc.reports.notebooks import ExecutionFailed, execute, thread_limit

STATUS = "status.json"
ATTEMPTS = ".attempts"  # <plan>/.attempts/<run>-<timestamp>/: earlier attempts, moved aside
LOCK = ".lock"
# where a run executed, recorded in its status.json (set by xtc.reports.executors for Slurm tasks)
RUNTIME_FIELDS = ("executor", "job_id", "slurm_restarts", "log")


class PlanLocked(PlanError):
    """Another sweep is writing the same plan folder."""


@contextmanager
def plan_lock(plan_dir: Path):
    """Hold ``fcntl.flock`` on ``<plan_dir>/.lock`` (non-blocking; the file records the pid):
    two sweeps writing one folder would mix budgets and race on the same run folders. The
    kernel drops the lock when the holder dies, so a killed sweep never leaves it stuck."""
    import fcntl

    plan_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(plan_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by kernels
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise PlanLocked(f"{plan_dir} is being written by another sweep "
                         f"(pid {holder or 'unknown'}); wait for it to finish, or give this "
                         f"plan another 'name' or --reports-dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the lock


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from status.json (so a fresh spec compares with a stored one)."""
    return json.loads(json.dumps(value))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["epochs 3 -> 5", "overrides.data.train_size 240 -> (unset)"]``: what differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(dict.fromkeys([*old, *new])):
            if key in ("out_dir",):
                continue
            out += _changes(old.get(key, "(unset)"), new.get(key, "(unset)"), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    show = lambda v: v if v == "(unset)" else json.dumps(v)  # noqa: E731
    return [f"{prefix.rstrip('.')} {show(old)} -> {show(new)}"]


def check_done(task: dict) -> tuple[dict | None, str | None]:
    """``(skipped record, None)`` when the run folder holds this exact completed run, else
    ``(None, why it is rerun)`` (why is None for a fresh folder)."""
    from xtc.analysis.summary import collect

    out = Path(task["out_dir"])
    if not out.exists():
        return None, None
    status, why = files.read_json(out / STATUS)
    results_path = out / "results.json"
    if why:
        return None, f"status.json {why}"
    if status is None:
        if results_path.exists():
            return None, "results.json without status.json: the previous attempt was interrupted"
        return None, "no status.json: the previous attempt was interrupted"
    if status.get("status") != "ok":
        return None, f"the previous attempt {status.get('status', 'has no status')}"
    if not results_path.is_file():
        return None, "status.json says ok but results.json is missing"
    problems: list = []
    if not collect([results_path], problems=problems):
        reason = problems[0]["reason"] if problems else "it has no metrics.test"
        return None, f"results.json cannot be used: {reason}"
    if "results_sha256" in status and status["results_sha256"] != sha256(results_path):
        return None, ("results.json changed after the run finished (its sha256 differs from "
                      "the one status.json recorded)")
    if "spec" in status:
        changed = _changes(status["spec"], task["spec"])
    else:  # written before specs were recorded: compare the resolved parameters
        changed = _changes(status.get("parameters"), jsonable(task["parameters"]))
    if changed:
        return None, "parameters changed: " + ", ".join(changed)
    return {**status, "status": "skipped"}, None


def has_attempt(out: Path) -> bool:
    """Whether a run folder holds work a rerun would overwrite or refuse (results, checkpoints)."""
    return (out / "results.json").exists() or (out / "checkpoints").exists()


def move_aside(out: Path, reason: str) -> Path:
    """Rename a run folder to ``<plan>/.attempts/<run>-<timestamp>[-n]`` (never delete)."""
    attempts = out.parent / ATTEMPTS
    attempts.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = attempts / f"{out.name}-{stamp}", 1
    while dest.exists():
        dest, n = attempts / f"{out.name}-{stamp}-{n}", n + 1
    os.rename(out, dest)
    note = {"run": out.name, "moved_from": str(out), "reason": reason,
            "moved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    files.atomic_write(dest / "MOVED_ASIDE.json",
                       lambda tmp: tmp.write_text(json.dumps(note, indent=2) + "\n"))
    return dest


def retire(plan_dir: Path, names: set[str]) -> list[dict]:
    """Move aside training-run folders of this plan that the plan no longer lists (an edited
    grid), so that analysis over ``$runs`` does not mix them in; one ``moved`` record each."""
    records = []
    for folder in sorted(p for p in plan_dir.iterdir()
                         if p.is_dir() and not p.name.startswith(".")):
        status, _ = files.read_json(folder / STATUS)
        if folder.name in names or not status or status.get("kind") != "train":
            continue
        reason = "no longer in the plan"
        dest = move_aside(folder, reason)
        records.append({"name": folder.name, "kind": "train", "status": "moved", "error": None,
                        "reason": reason, "previous_attempt": str(dest)})
    return records


def run_task(task: dict, threads: int) -> dict:
    """Execute one task; never raises: returns (and writes to status.json) its record."""
    from xtc.analysis.summary import collect

    out = Path(task["out_dir"])
    start = time.time()
    record = {"name": task["name"], "kind": task["kind"], "status": "ok", "error": None,
              "notebook": str(out / Path(task["notebook"]).name),
              "html": str(out / (Path(task["notebook"]).stem + ".html")),
              "parameters": task["parameters"], "threads": threads}
    for key in ("spec", "rerun_reason", "previous_attempt", *RUNTIME_FIELDS):
        if key in task:
            record[key] = task[key]
    try:
        with thread_limit(threads):
            # torch in the kernel reads OMP_NUM_THREADS at start-up
            execute(task["notebook"], out, task["parameters"])
        results_path = out / "results.json"
        if task["kind"] == "train":
            if not results_path.is_file():
                raise RuntimeError(f"{task['notebook']} finished without writing {results_path}")
            problems: list = []
            if not collect([results_path], problems=problems):
                reason = problems[0]["reason"] if problems else "it has no metrics.test"
                raise RuntimeError(f"{task['notebook']} wrote an unusable {results_path}: {reason}")
        if results_path.is_file():
            record["results_sha256"] = sha256(results_path)
    except ExecutionFailed as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=3))
    record["seconds"] = round(time.time() - start, 1)
    write_status(out, record)
    return record


def write_status(out: Path, record: dict) -> Path:
    """status.json, written last: its presence (with the results' sha256) marks a run done."""
    return files.atomic_write(out / STATUS,
                              lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
