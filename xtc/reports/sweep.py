"""Running a plan: its training runs (here in ``workers`` processes, or as a Slurm job
array), then its analysis notebooks, under the plan folder's lock; then the index.

A failed run is recorded, never stops the others, and is retried on the next call; a
finished run whose parameters did not change is skipped (:mod:`xtc.reports.runs`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xtc import files
from xtc.errors import ConfigError, PlanError
from xtc.reports.index import build_index
from xtc.reports import executors
from xtc.reports.plan import (PRESETS_DIR, TRAIN_NOTEBOOK, expand_runs, folder_name, list_presets,
                              load_plan, notebook_parameters, resolve_paths)
from xtc.reports.runs import (check_done, has_attempt, jsonable, move_aside, plan_lock, retire,
                              run_task)


def run_preset(name: str, reports_dir: str | Path = "reports", workers: int = 1,
               progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Run ``configs/reports/<name>.yaml`` into ``<reports_dir>/<name>/``; see :func:`run_plan`."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PlanError(f"unknown preset {name!r}; choose one of {list_presets()}")
    return run_plan(path, reports_dir, workers, progress, executor)


def run_sweep(path: str | Path, workers: int = 1, reports_dir: str | Path = "reports",
              progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Run a sweep YAML (``grid:`` or ``runs:``) then 90_summary over it; see :func:`run_plan`."""
    return run_plan(path, reports_dir, workers, progress, executor)


def run_plan(path: str | Path, reports_dir: str | Path = "reports", workers: int = 1,
             progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Execute a plan's training runs (``workers`` in parallel), then its analysis notebooks.

    ``executor`` (``"local"``, ``"slurm"`` or ``{"kind": "slurm", "partition": ...}``, see
    :mod:`xtc.reports.executors`) overrides the plan's ``executor:`` key; with ``slurm`` every
    training run is one task of a Slurm job array and ``workers`` is not used (analysis
    notebooks run here, after the runs). Training runs use ``resume="auto"`` when the
    notebook takes ``resume``, so a requeued task continues from its last.pt.

    Returns one record per notebook (name, kind, status ok|failed|skipped|moved, error,
    paths, seconds), also written to ``<reports_dir>/<plan>/plan.json``; rebuilds the
    index. Holds the plan folder's lock throughout (see the module docstring).
    """
    from tqdm.auto import tqdm


    plan = load_plan(path)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if isinstance(executor, str):
        executor = {"kind": executor}
    options = executors.resolve(plan.get("executor"), executor, str(path))
    if options["kind"] == "slurm":
        executors.check_slurm()
    plan_dir = (Path(reports_dir) / folder_name(plan["name"], "name")).resolve()
    notebook = plan.get("notebook", TRAIN_NOTEBOOK)
    train_nb = resolve_paths(notebook, "notebook", plan_dir)
    # "auto": a run requeued after preemption continues from its last.pt (a fresh folder
    # starts fresh); not part of the spec, so it never makes a finished run look changed
    resume = {"resume": "auto"} if "resume" in notebook_parameters(train_nb) else {}
    tasks = [{"name": name, "kind": "train", "notebook": train_nb, "out_dir": str(plan_dir / name),
              "parameters": {**resume, **resolve_paths(params, "", plan_dir),
                             "out_dir": str(plan_dir / name)},
              "spec": jsonable({"notebook": notebook, **params})}
             for name, params in ((folder_name(n, "runs"), p) for n, p in expand_runs(plan))]
    analysis = []
    for item in plan["analysis"]:
        nb = resolve_paths(item["notebook"], "notebook", plan_dir)
        name = folder_name(item.get("name", Path(nb).stem), "analysis")
        analysis.append({"name": name, "kind": "analysis", "notebook": nb,
                         "out_dir": str(plan_dir / name),
                         "parameters": {**resolve_paths(item.get("parameters") or {}, "", plan_dir),
                                        "out_dir": str(plan_dir / name)}})
    clash = {t["name"] for t in tasks} & {t["name"] for t in analysis}
    if clash:
        raise PlanError(f"{path}: run and analysis folders share the name(s) {sorted(clash)}; "
                         f"give the analysis a distinct 'name'")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with plan_lock(plan_dir):
        records, todo = [], []
        # Slurm jobs of an earlier sweep that are still queued or running: waited for
        adopted = executors.live_runs(tasks) if options["kind"] == "slurm" else {}
        for task in tasks:
            if task["name"] in adopted:
                continue
            done, reason = check_done(task)
            if done:
                records.append(done)
                continue
            if reason:
                task["rerun_reason"] = reason
                if has_attempt(Path(task["out_dir"])):
                    task["previous_attempt"] = str(move_aside(Path(task["out_dir"]), reason))
            todo.append(task)
        records += retire(plan_dir, {t["name"] for t in tasks + analysis})
        bar = tqdm(total=len(tasks) + len(analysis), desc=f"report {plan['name']}", unit="nb",
                   disable=not progress)
        bar.update(len(tasks) - len(todo) - len(adopted))
        if options["kind"] == "slurm":
            records += executors.run_slurm(todo, plan_dir, options, adopted, plan["name"],
                                           on_done=lambda record: bar.update())
        elif workers == 1 or len(todo) <= 1:
            for task in todo:
                records.append(run_task(task, threads))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
                futures = {pool.submit(run_task, task, threads): task for task in todo}
                for future in as_completed(futures):
                    try:
                        records.append(future.result())
                    except Exception as exc:  # noqa: BLE001 - a worker process died (e.g. out of memory)
                        task = futures[future]
                        notebook = Path(task["out_dir"]) / Path(task["notebook"]).name
                        records.append({"name": task["name"], "kind": task["kind"],
                                        "status": "failed",
                                        "error": f"worker process died: "
                                                 f"{type(exc).__name__}: {exc}",
                                        "notebook": str(notebook)})
                    bar.update()
        for task in analysis:  # analysis reads the runs, so after them and always rerun
            records.append(run_task(task, max(1, os.cpu_count() or 1)))
            bar.update()
        bar.close()
        order = {t["name"]: i for i, t in enumerate(tasks + analysis)}
        records.sort(key=lambda r: order.get(r["name"], len(order)))
        files.atomic_write(plan_dir / "plan.json",
                     lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n"))
        build_index(reports_dir)
    return records
