"""Reports: papermill execution, presets, sweeps and the reports index.

A *plan* (a preset in ``configs/reports/`` or a sweep file in ``configs/sweeps/``) lists
training runs of ``notebooks/02_train.ipynb`` (``runs:`` explicitly, or ``grid:`` as a
cartesian product) with fixed ``parameters:``, then ``analysis:`` notebooks (03, 04, 90)
whose parameters refer to runs as ``$runs/<run-name>`` (``$runs`` alone: the plan's folder).
Each run executes into ``<reports_dir>/<plan>/<run>/`` (executed .ipynb, .html,
results.json, status.json). A failed run is recorded, never stops the others, and is
retried on the next call. papermill and nbconvert are imported only inside the functions
that run notebooks.

Bookkeeping, so that a sweep never loses or misreports a run:

* Plans are checked before anything runs: every parameter name must be a parameter of the
  target notebook (the names assigned in its cell tagged ``parameters``), a plan field
  (``name``, ``seeds``) or a real ``section.key`` config key, because papermill writes the
  names unescaped into the code it runs. Values must be plain JSON (a YAML date must be
  quoted).
* A run is *done* (and skipped) only when its status.json says ``ok``, its results.json
  parses with ``metrics.test``, the results' sha256 equals the one status.json recorded,
  and the parameters status.json recorded equal the plan's. Otherwise it is rerun, and the
  record says why (``parameters changed: epochs 3 -> 5``).
* Nothing is deleted: a run folder that is rerun while it holds results.json or
  checkpoints/ from an earlier attempt, and a run folder that is no longer in the plan, is
  moved (renamed) to ``<plan>/.attempts/<run>-<timestamp>/`` with a ``MOVED_ASIDE.json``
  saying why. Hidden folders are skipped by the index and :func:`xtc.summary.collect`, so
  moved attempts never enter a table.
* One writer per plan folder: a sweep holds ``fcntl.flock`` on ``<plan>/.lock`` (which
  records its pid) while it runs; a second sweep of the same folder stops with an error.
* The index lists every file it could not read, with the reason, instead of crashing or
  silently dropping a row.
"""

from __future__ import annotations

import ast
import datetime
import difflib
import hashlib
import html
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any


from xtc.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]  # the repository (configs/, notebooks/)
PRESETS_DIR = ROOT / "configs" / "reports"
TRAIN_NOTEBOOK = "notebooks/02_train.ipynb"
SUMMARY_NOTEBOOK = "notebooks/90_summary.ipynb"
STATUS = "status.json"
PATH_PARAMS = ("config", "data_root", "runs_dir", "run_a", "run_b", "run_dir", "checkpoint")
PLAN_KEYS = {"name", "description", "notebook", "parameters", "grid", "runs", "analysis",
             "executor"}  # executor: local | slurm | {kind: slurm, partition: ...} (xtc.executors)
ANALYSIS_KEYS = {"notebook", "parameters", "name"}
RUN_FIELDS = ("name", "seeds")  # plan fields of a ``runs:`` item that are not notebook parameters
ATTEMPTS = ".attempts"  # <plan>/.attempts/<run>-<timestamp>/: earlier attempts, moved aside
LOCK = ".lock"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# where a run executed, recorded in its status.json (set by xtc.executors for Slurm tasks)
RUNTIME_FIELDS = ("executor", "job_id", "slurm_restarts", "log")


class ExecutionFailed(RuntimeError):
    """A notebook raised; ``notebook`` and ``html`` are its executed (partial) copies."""

    def __init__(self, message: str, notebook: Path, html_path: Path | None):
        super().__init__(message)
        self.notebook, self.html = notebook, html_path


# --------------------------------------------------------------------------- one notebook
def execute(notebook: str | Path, out_dir: str | Path, parameters: dict | None = None,
            kernel_name: str = "python3", progress: bool = False) -> Path:
    """Run ``notebook`` with papermill into ``out_dir`` (+ an HTML copy); return the .ipynb.

    The kernel's working directory is the notebook's folder, so pass absolute paths in
    ``parameters``. On failure the partial notebook and its HTML are still written, then
    :class:`ExecutionFailed` is raised.
    """
    import papermill

    notebook, out_dir = Path(notebook).resolve(), Path(out_dir).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    check_kernel(kernel_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters or {},
                                   kernel_name=kernel_name, cwd=str(notebook.parent),
                                   progress_bar=progress)
    except Exception as exc:  # a cell raised, or the kernel died: keep what ran
        html_path = to_html(output) if output.is_file() else None
        message = str(exc).strip().splitlines()
        name = getattr(exc, "ename", type(exc).__name__)
        detail = getattr(exc, "evalue", message[-1] if message else "")
        raise ExecutionFailed(f"{name}: {detail}", output, html_path) from None
    to_html(output)
    return output


def to_html(notebook: Path) -> Path:
    """Write ``<notebook>.html`` next to it with nbconvert's HTMLExporter (atomic)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return atomic_write(notebook.with_suffix(".html"), lambda tmp: tmp.write_text(body))


def check_kernel(kernel_name: str = "python3") -> None:
    """Fail with the install command when no ``kernel_name`` kernelspec exists."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = f"{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}"
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise ValueError(f"no Jupyter kernel named {kernel_name!r}; install it with: {fix}") from None
    exe = spec.argv[0] if spec.argv else ""
    # "python"/"python3" are replaced by this interpreter by jupyter_client
    if exe not in ("python", "python3") and Path(exe).resolve() != Path(sys.executable).resolve():
        import warnings
        warnings.warn(f"kernel {kernel_name!r} runs {exe}, not {sys.executable}; to use this "
                      f"environment run: {fix}", stacklevel=2)


# --------------------------------------------------------------------------- plans
def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_plan(path: str | Path) -> dict:
    """Parse and check a preset/sweep YAML; errors name the field (ValueError).

    Every check that can fail runs here, before any notebook starts: structure, JSON-able
    values, parameter names against the notebooks' ``parameters`` cells, config keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    from xtc.config import parse_yaml  # YAML 1.2 floats, duplicate keys refused, aliases bounded

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"sweep file {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); save it as UTF-8") from None
    plan = parse_yaml(text, f"sweep file {path}") or {}
    if not isinstance(plan, dict):
        raise ValueError(f"{path}: must be a mapping with 'parameters' and 'grid' or 'runs'")
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(map(str, unknown))}; valid: {sorted(PLAN_KEYS)}")
    if ("grid" in plan) == ("runs" in plan):
        raise ValueError(f"{path}: give exactly one of 'grid' (cartesian product) or 'runs' (a list)")
    for field, kind in (("parameters", dict), ("grid", dict), ("runs", list), ("analysis", list),
                        ("notebook", str)):
        if field in plan and not isinstance(plan[field], kind):
            raise ValueError(f"{path}: field '{field}' must be a {kind.__name__}")
    for field in ("parameters", "grid", "runs", "analysis"):
        _check_json(plan.get(field), field, path)
    for key, values in (plan.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: field 'grid.{key}' must be a non-empty list of values")
    for i, item in enumerate(plan.get("runs") or []):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: field 'runs[{i}]' must be a mapping of parameters")
        seeds = item.get("seeds")
        if "seeds" in item and (not isinstance(seeds, list) or not seeds):
            raise ValueError(f"{path}: field 'runs[{i}].seeds' must be a non-empty list, e.g. [0, 1]")
    for i, item in enumerate(plan.get("analysis") or []):
        if not isinstance(item, dict) or "notebook" not in item:
            raise ValueError(f"{path}: field 'analysis[{i}]' needs 'notebook' (and 'parameters')")
        extra = set(item) - ANALYSIS_KEYS
        if extra:
            raise ValueError(f"{path}: field 'analysis[{i}]' has unknown key(s) "
                             f"{sorted(map(str, extra))}; valid: {sorted(ANALYSIS_KEYS)}")
        if not isinstance(item["notebook"], str) or not isinstance(item.get("parameters") or {}, dict):
            raise ValueError(f"{path}: field 'analysis[{i}]': 'notebook' must be a path and "
                             f"'parameters' a mapping")
    from xtc import executors

    executors.parse(plan.get("executor"), str(path))
    plan.setdefault("name", path.stem)
    plan.setdefault("analysis", [{"notebook": SUMMARY_NOTEBOOK, "parameters": {"runs_dir": "$runs"}}])
    _check_names(plan, path)
    return plan


def notebook_parameters(notebook: str | Path) -> set[str]:
    """The names a notebook takes: those assigned (``name = value``) in its cell tagged
    ``parameters``, which is what papermill's injected cell overrides."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist; fix the plan's "
                                f"'notebook' field")
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
        source = next("".join(c.get("source", "")) for c in cells
                      if "parameters" in (c.get("metadata") or {}).get("tags", []))
    except StopIteration:
        return set()  # no parameters cell: papermill injects at the top, nothing is a parameter
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"notebook {notebook} cannot be read as a notebook "
                         f"({type(exc).__name__}); is it a .ipynb file?") from None
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"notebook {notebook}: its parameters cell is not valid Python "
                         f"(line {exc.lineno}: {exc.msg})") from None
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names.add(node.targets[0].id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _check_json(value: Any, field: str, path: Path) -> None:
    """Refuse values that are not plain JSON (YAML dates, sets, binary, NaN): they cannot be
    recorded in status.json nor compared between runs."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: field '{field}' is {value}, which a notebook parameter "
                             f"cannot be; use a finite number or null")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{field}[{i}]", path)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: field '{field}' has the key {k!r} of type "
                                 f"{type(k).__name__}; quote it so that it is a string")
            _check_json(v, f"{field}.{k}", path)
        return
    kind = type(value).__name__
    fix = ("quote it, e.g. '2024-01-01', to pass a string"
           if isinstance(value, (datetime.date, datetime.time)) else
           "write a list [a, b] instead" if isinstance(value, (set, frozenset, tuple)) else
           "quote it to pass a string")
    raise ValueError(f"{path}: field '{field}' holds a {kind} ({str(value)[:40]!r}), which is "
                     f"not a JSON value a sweep can record; {fix}")


_CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


def _check_config_key(key: str, values: list, field: str, path: Path) -> None:
    """A ``section.key`` name must be a real config key and its values must fit its type."""
    from xtc import config

    if not _CONFIG_KEY.fullmatch(key):
        raise ValueError(f"{path}: field '{field}': {key!r} is not a config key (section.key)")
    for value in values:
        config.set_value(config.Config(), key, value, source=f"{path}: field '{field}'")


def _unknown(name: Any, field: str, valid: set[str], notebook: Path, path: Path,
             config_keys: bool) -> ValueError:
    close = difflib.get_close_matches(str(name), sorted(valid), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    also = " or a config key 'section.key' (e.g. train.epochs)" if config_keys else ""
    return ValueError(f"{path}: field '{field}': {str(name)[:80]!r} is not a parameter of "
                      f"{notebook.name}; {hint}valid: {', '.join(sorted(valid)) or '(none)'}{also}")


def _check_names(plan: dict, path: Path) -> None:
    """Every name a plan passes must be a parameter of its notebook, a plan field or a config
    key: papermill writes names into the code it runs without escaping them."""
    notebook = Path(_resolve(plan.get("notebook", TRAIN_NOTEBOOK), "notebook", Path(".")))
    valid = notebook_parameters(notebook)

    def check(key: Any, values: list, field: str, extra: tuple = ()) -> None:
        if not isinstance(key, str):
            raise _unknown(key, field, valid, notebook, path, True)
        for part in key.split("+") if key not in extra else ():
            if part in valid:
                if part == "overrides":
                    for v in values:
                        check_overrides(v, field)
            elif _CONFIG_KEY.fullmatch(part):
                _check_config_key(part, values, field, path)
            else:
                raise _unknown(part, field, valid | set(extra), notebook, path, True)

    def check_overrides(value: Any, field: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise ValueError(f"{path}: field '{field}' must be a mapping of section.key: value")
        for k, v in value.items():
            _check_config_key(k, [v], f"{field}.{k}", path)

    for key, value in (plan.get("parameters") or {}).items():
        if key not in valid:
            hint = (f"; config keys go under 'parameters.overrides' ({{{key}: ...}})"
                    if isinstance(key, str) and "." in key and "overrides" in valid else "")
            raise ValueError(str(_unknown(key, f"parameters.{key}", valid, notebook, path, False))
                             + hint)
        if key == "overrides":
            check_overrides(value, "parameters.overrides")
    for key, values in (plan.get("grid") or {}).items():
        check(key, values, f"grid.{key}")
    for i, item in enumerate(plan.get("runs") or []):
        for key, value in item.items():
            check(key, [value], f"runs[{i}].{key}", RUN_FIELDS)
    for i, item in enumerate(plan.get("analysis") or []):
        nb = Path(_resolve(item["notebook"], "notebook", Path(".")))
        names = notebook_parameters(nb)
        for key in item.get("parameters") or {}:
            if key not in names:
                raise _unknown(key, f"analysis[{i}].parameters.{key}", names, nb, path, False)


def expand_runs(plan: dict) -> list[tuple[str, dict]]:
    """``[(run_name, parameters)]`` for a plan's training runs (deterministic names).

    ``grid`` keys may tie parameters (``lambda1+lambda2: [0, 0.01]``) or be config keys
    (``train.epochs: [2, 4]``, merged into ``overrides``); ``runs`` items may carry
    ``seeds: [0, 1]`` and an explicit ``name`` (with ``seeds``: ``<name>-s<seed>``).
    """
    fixed = dict(plan.get("parameters") or {})
    if "grid" in plan:
        keys = list(plan["grid"])
        items = [dict(zip(keys, combo)) for combo in itertools.product(*plan["grid"].values())]
    else:
        items = []
        for item in plan["runs"]:
            item = dict(item)
            seeds = item.pop("seeds", None)
            if seeds is None:
                items.append(item)
            else:  # an explicit name is shared by the seeds: each gets its own -s<seed> folder
                items += [{**item, "seed": s, **({"name": f"{item['name']}-s{s}"} if "name" in item else {})}
                          for s in seeds]
    varying = [k for k in dict.fromkeys(k for it in items for k in it)
               if k not in ("name", "method", "cross_task", "seed")
               and len({json.dumps(it.get(k), sort_keys=True) for it in items}) > 1]
    runs, seen = [], {}
    for item in items:
        params = dict(fixed)
        for key, value in item.items():
            if key == "name":
                continue
            for k in key.split("+"):
                if "." in k:  # a config key: goes into overrides
                    params["overrides"] = {**(params.get("overrides") or {}), k: value}
                else:
                    params[k] = value
        name = item.get("name") or run_name(params, [(k, item[k]) for k in varying if k in item])
        if name in seen:
            raise ValueError(f"runs {seen[name]} and {item} get the same folder name {name!r}; "
                             f"give them distinct 'name' fields")
        seen[name] = item
        runs.append((name, params))
    return runs


def run_name(params: dict, varying: list[tuple[str, Any]] = ()) -> str:
    """``xtc-consistency-l0.01-s0``: method, cross-task kind (xtc only), varied values, seed."""
    parts = [str(params.get("method", "run"))]
    if params.get("method") == "xtc" and params.get("cross_task"):
        parts.append(str(params["cross_task"]))
    short = {"lambda1+lambda2": "l", "lambda1": "l1", "lambda2": "l2"}
    for key, value in varying:
        label = short.get(key, key.split("+")[0].split(".")[-1].replace("_", ""))
        parts.append(f"{label}{value}" if not isinstance(value, str) else str(value))
    if params.get("seed") is not None:
        parts.append(f"s{params['seed']}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts)).lstrip(".") or "run"


def _folder_name(name: str, field: str) -> str:
    """A run or plan folder name: one path component, so no plan can write outside
    ``reports_dir`` (no '/', no '..', no absolute path)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", str(name)):
        raise ValueError(f"plan field '{field}': folder name {name!r} must be letters, digits "
                         f"and . _ + - (starting with a letter or digit), so that it stays "
                         f"inside the reports folder")
    return str(name)


def _resolve(value: Any, key: str, plan_dir: Path) -> Any:
    """``$runs`` -> the plan folder; relative path parameters -> absolute (cwd, then repo)."""
    if isinstance(value, dict):
        return {k: _resolve(v, k if key != "runs" else "run", plan_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, key, plan_dir) for v in value]
    if isinstance(value, str) and value.startswith("$runs"):
        return str(plan_dir / value[len("$runs"):].lstrip("/"))
    if isinstance(value, str) and key in (*PATH_PARAMS, "run", "notebook"):
        path = Path(value)
        if not path.is_absolute():
            path = path if path.exists() or not (ROOT / path).exists() else ROOT / path
        return str(path.resolve())
    return value


# --------------------------------------------------------------------------- running
def run_preset(name: str, reports_dir: str | Path = "reports", workers: int = 1,
               progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Run ``configs/reports/<name>.yaml`` into ``<reports_dir>/<name>/``; see :func:`run_plan`."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; choose one of {list_presets()}")
    return run_plan(path, reports_dir, workers, progress, executor)


def run_sweep(path: str | Path, workers: int = 1, reports_dir: str | Path = "reports",
              progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Run a sweep YAML (``grid:`` or ``runs:``) then 90_summary over it; see :func:`run_plan`."""
    return run_plan(path, reports_dir, workers, progress, executor)


def run_plan(path: str | Path, reports_dir: str | Path = "reports", workers: int = 1,
             progress: bool = True, executor: dict | str | None = None) -> list[dict]:
    """Execute a plan's training runs (``workers`` in parallel), then its analysis notebooks.

    ``executor`` (``"local"``, ``"slurm"`` or ``{"kind": "slurm", "partition": ...}``, see
    :mod:`xtc.executors`) overrides the plan's ``executor:`` key; with ``slurm`` every
    training run is one task of a Slurm job array and ``workers`` is not used (analysis
    notebooks run here, after the runs). Training runs use ``resume="auto"`` when the
    notebook takes ``resume``, so a requeued task continues from its last.pt.

    Returns one record per notebook (name, kind, status ok|failed|skipped|moved, error,
    paths, seconds), also written to ``<reports_dir>/<plan>/plan.json``; rebuilds the
    index. Holds the plan folder's lock throughout (see the module docstring).
    """
    from tqdm.auto import tqdm

    from xtc import executors

    plan = load_plan(path)
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    if isinstance(executor, str):
        executor = {"kind": executor}
    options = executors.resolve(plan.get("executor"), executor, str(path))
    if options["kind"] == "slurm":
        executors.check_slurm()
    plan_dir = (Path(reports_dir) / _folder_name(plan["name"], "name")).resolve()
    notebook = plan.get("notebook", TRAIN_NOTEBOOK)
    train_nb = _resolve(notebook, "notebook", plan_dir)
    # "auto": a run requeued after preemption continues from its last.pt (a fresh folder
    # starts fresh); not part of the spec, so it never makes a finished run look changed
    resume = {"resume": "auto"} if "resume" in notebook_parameters(train_nb) else {}
    tasks = [{"name": name, "kind": "train", "notebook": train_nb, "out_dir": str(plan_dir / name),
              "parameters": {**resume, **_resolve(params, "", plan_dir),
                             "out_dir": str(plan_dir / name)},
              "spec": _jsonable({"notebook": notebook, **params})}
             for name, params in ((_folder_name(n, "runs"), p) for n, p in expand_runs(plan))]
    analysis = []
    for item in plan["analysis"]:
        nb = _resolve(item["notebook"], "notebook", plan_dir)
        name = _folder_name(item.get("name", Path(nb).stem), "analysis")
        analysis.append({"name": name, "kind": "analysis", "notebook": nb,
                         "out_dir": str(plan_dir / name),
                         "parameters": {**_resolve(item.get("parameters") or {}, "", plan_dir),
                                        "out_dir": str(plan_dir / name)}})
    clash = {t["name"] for t in tasks} & {t["name"] for t in analysis}
    if clash:
        raise ValueError(f"{path}: run and analysis folders share the name(s) {sorted(clash)}; "
                         f"give the analysis a distinct 'name'")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with plan_lock(plan_dir):
        records, todo = [], []
        # Slurm jobs of an earlier sweep that are still queued or running: waited for
        adopted = executors.live_runs(tasks) if options["kind"] == "slurm" else {}
        for task in tasks:
            if task["name"] in adopted:
                continue
            done, reason = _check_done(task)
            if done:
                records.append(done)
                continue
            if reason:
                task["rerun_reason"] = reason
                if _has_attempt(Path(task["out_dir"])):
                    task["previous_attempt"] = str(_move_aside(Path(task["out_dir"]), reason))
            todo.append(task)
        records += _retire(plan_dir, {t["name"] for t in tasks + analysis})
        bar = tqdm(total=len(tasks) + len(analysis), desc=f"report {plan['name']}", unit="nb",
                   disable=not progress)
        bar.update(len(tasks) - len(todo) - len(adopted))
        if options["kind"] == "slurm":
            records += executors.run_slurm(todo, plan_dir, options, adopted, plan["name"],
                                           on_done=lambda record: bar.update())
        elif workers == 1 or len(todo) <= 1:
            for task in todo:
                records.append(_run_task(task, threads))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_run_task, task, threads): task for task in todo}
                for future in as_completed(futures):
                    try:
                        records.append(future.result())
                    except Exception as exc:  # noqa: BLE001 - a worker process died (e.g. out of memory)
                        task = futures[future]
                        records.append({"name": task["name"], "kind": task["kind"], "status": "failed",
                                        "error": f"worker process died: {type(exc).__name__}: {exc}",
                                        "notebook": str(Path(task["out_dir"]) / Path(task["notebook"]).name)})
                    bar.update()
        for task in analysis:  # analysis reads the runs, so after them and always rerun
            records.append(_run_task(task, max(1, os.cpu_count() or 1)))
            bar.update()
        bar.close()
        order = {t["name"]: i for i, t in enumerate(tasks + analysis)}
        records.sort(key=lambda r: order.get(r["name"], len(order)))
        atomic_write(plan_dir / "plan.json",
                     lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n"))
        build_index(reports_dir)
    return records


class PlanLocked(ValueError):
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


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from status.json (so a fresh spec compares with a stored one)."""
    return json.loads(json.dumps(value))


def _sha256(path: Path) -> str:
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


def _check_done(task: dict) -> tuple[dict | None, str | None]:
    """``(skipped record, None)`` when the run folder holds this exact completed run, else
    ``(None, why it is rerun)`` (why is None for a fresh folder)."""
    from xtc.summary import collect

    out = Path(task["out_dir"])
    if not out.exists():
        return None, None
    status, why = _load_json(out / STATUS)
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
    if "results_sha256" in status and status["results_sha256"] != _sha256(results_path):
        return None, ("results.json changed after the run finished (its sha256 differs from "
                      "the one status.json recorded)")
    if "spec" in status:
        changed = _changes(status["spec"], task["spec"])
    else:  # written before specs were recorded: compare the resolved parameters
        changed = _changes(status.get("parameters"), _jsonable(task["parameters"]))
    if changed:
        return None, "parameters changed: " + ", ".join(changed)
    return {**status, "status": "skipped"}, None


def _has_attempt(out: Path) -> bool:
    """Whether a run folder holds work a rerun would overwrite or refuse (results, checkpoints)."""
    return (out / "results.json").exists() or (out / "checkpoints").exists()


def _move_aside(out: Path, reason: str) -> Path:
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
    atomic_write(dest / "MOVED_ASIDE.json", lambda tmp: tmp.write_text(json.dumps(note, indent=2) + "\n"))
    return dest


def _retire(plan_dir: Path, names: set[str]) -> list[dict]:
    """Move aside training-run folders of this plan that the plan no longer lists (an edited
    grid), so that analysis over ``$runs`` does not mix them in; one ``moved`` record each."""
    records = []
    for folder in sorted(p for p in plan_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        status, _ = _load_json(folder / STATUS)
        if folder.name in names or not status or status.get("kind") != "train":
            continue
        reason = "no longer in the plan"
        dest = _move_aside(folder, reason)
        records.append({"name": folder.name, "kind": "train", "status": "moved", "error": None,
                        "reason": reason, "previous_attempt": str(dest)})
    return records


@contextmanager
def _threads(n: int):
    """Set the BLAS/OpenMP thread counts the kernel inherits, restored afterwards."""
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(n) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, value in old.items():
            os.environ.pop(v) if value is None else os.environ.__setitem__(v, value)


def _run_task(task: dict, threads: int) -> dict:
    """Execute one task; never raises: returns (and writes to status.json) its record."""
    from xtc.summary import collect

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
        with _threads(threads):
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
            record["results_sha256"] = _sha256(results_path)
    except ExecutionFailed as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=3))
    record["seconds"] = round(time.time() - start, 1)
    _write_status(out, record)
    return record


def _write_status(out: Path, record: dict) -> Path:
    """status.json, written last: its presence (with the results' sha256) marks a run done."""
    return atomic_write(out / STATUS, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


# --------------------------------------------------------------------------- index
def build_index(reports_dir: str | Path = "reports") -> Path:
    """Write ``<reports_dir>/index.html`` (atomic). Per plan folder: every run with its status
    and links (executed .ipynb, .html, results.json) and its test metrics; then, per protocol,
    the mean ± std comparison table over the plan's readable runs (:func:`xtc.summary.report_table`:
    units and ↑/↓ in the headers, Δm% vs STL) and the seg-vs-depth trade-off figure as an
    inline PNG (works offline). Also failures, and every plan.json / status.json / results.json
    it could not read, with the reason."""
    from xtc import summary
    from xtc.summary import METRICS, collect

    root = Path(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    sections, failures, problems = [], [], []

    def problem(path: Path, reason: str) -> None:
        problems.append(f"<li><b>{html.escape(_rel(path, root))}</b>: {html.escape(reason)}</li>")

    for plan_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rows, readable, job_cells, pending = [], [], {}, 0
        plan_records, why = _load_json(plan_dir / "plan.json", list)
        if why:
            problem(plan_dir / "plan.json", f"{why}; runs are listed by name instead "
                                            f"(rerun the sweep to rewrite it)")
        order = {r["name"]: i for i, r in enumerate(plan_records or [])
                 if isinstance(r, dict) and isinstance(r.get("name"), str)}
        for run in sorted((p for p in plan_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: (order.get(p.name, len(order)), p.name)):
            status, why = _load_json(run / STATUS)
            if why:
                problem(run / STATUS, f"{why}; rerun the sweep to redo this run")
            status = status or {}
            has_results = (run / "results.json").exists()
            if not status and not has_results and not why:
                continue
            state = status.get("status") if isinstance(status.get("status"), str) else "unknown"
            found: list = []
            got = collect([run], problems=found) if has_results else []
            row = got[0] if got else {"metrics": {}}
            for p in found:
                problem(Path(p["path"]), f"{p['reason']}; its metrics are left out of this table")
                state = "unreadable"
            if state == "ok" and status.get("kind") == "train" and not has_results:
                problem(run / "results.json", "missing although status.json says ok; rerun the "
                                              "sweep to redo this run")
                state = "unreadable"
            elif (state == "ok" and has_results and isinstance(status.get("results_sha256"), str)
                  and not found and status["results_sha256"] != _sha256(run / "results.json")):
                problem(run / "results.json", "changed after the run finished (sha256 differs "
                                              "from status.json); rerun the sweep to redo it")
                state = "changed"
            if got and state not in ("changed", "failed", "unreadable"):
                readable.append(got[0])
            links = " ".join(f'<a href="{html.escape(str(f.relative_to(root)))}">{f.suffix[1:]}</a>'
                             for f in sorted(run.glob("*")) if f.suffix in (".html", ".ipynb")
                             or f.name == "results.json")
            job = status.get("job_id")
            if job:  # a Slurm task: its job id, linked to its log (<run>/slurm.log)
                log = run / "slurm.log"
                restarts = status.get("slurm_restarts") or 0
                label = html.escape(str(job)) + (f" ({restarts} requeue(s))" if restarts else "")
                job_cells[run.name] = (f'<a href="{html.escape(str(log.relative_to(root)))}">'
                                       f'{label}</a>' if log.exists() else label)
            cells = {"run": run.name, "method": row.get("method") or "",
                     "cross-task": row.get("cross_task") or "",
                     "seed": "" if row.get("seed") is None else row["seed"]}
            cells.update({summary.LABELS[m]: f"{row['metrics'][m]:.4f}" if m in row["metrics"] else ""
                          for m in METRICS})
            rows.append({**cells, "status": state, "files": links})
            if state in ("queued", "running", "requeued", "interrupted"):
                pending += 1
            if state == "failed":
                nb = Path(str(status.get("notebook") or run))
                failures.append(
                    f'<li><b>{html.escape(plan_dir.name)}/{html.escape(run.name)}</b>: '
                    f'{html.escape(str(status.get("error")))} (executed notebook: '
                    f'<a href="{html.escape(_rel(nb, root))}">{html.escape(nb.name)}</a>, '
                    f'<a href="{html.escape(_rel(nb.with_suffix(".html"), root))}">html</a>)</li>')
        attempts = plan_dir / ATTEMPTS
        moved = sum(1 for p in attempts.iterdir() if p.is_dir()) if attempts.is_dir() else 0
        note = (f"<p>{moved} earlier attempt(s) moved aside in {html.escape(plan_dir.name)}/"
                f"{ATTEMPTS}/ (each MOVED_ASIDE.json says why); they are not in this table.</p>"
                if moved else "")
        if job_cells:  # Slurm runs: a column with each run's job id (and its log)
            for row in rows:
                row["slurm job"] = job_cells.get(row["run"], "")
            note += (f"<p>{pending} run(s) still queued, running or requeued on Slurm; rerun "
                     f"the sweep to wait for them.</p>" if pending else "")
        if rows:
            sections.append(f"<h2>{html.escape(plan_dir.name)}</h2>"
                            f"{summary.to_html(rows, raw=('files', 'slurm job'), row_class='status')}{note}"
                            f"{_index_comparison(readable, len(rows))}")
    fail_html = (f"<h2>Failures</h2><ul>{''.join(failures)}</ul>" if failures
                 else "<p>No failed runs.</p>")
    prob_html = (f"<h2>Problems ({len(problems)})</h2><p>Files that could not be read or do "
                 f"not match their status.json: what they would show is left out of the "
                 f"tables below.</p><ul>{''.join(problems)}</ul>"
                 if problems else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>xtc reports</title><style>"
            f"body{{font-family:sans-serif}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}"
            f"tr.failed,tr.unreadable,tr.changed{{background:#fdd}}"
            f"tr.queued,tr.running,tr.requeued,tr.interrupted{{background:#ffd}}</style></head><body>"
            f"<h1>xtc reports</h1>"
            f"<p>Metrics are test-split values from each run's results.json (its protocol "
            f"section states the mIoU formula, depth units and model selection); "
            f"each plan's comparison table aggregates them over seeds (mean ± sample std, n), "
            f"one table per protocol; 90_summary adds the significance tests.</p>"
            f"{fail_html}{prob_html}{''.join(sections)}"
            f"<p><small>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</small></p></body></html>")
    return atomic_write(root / "index.html", lambda tmp: tmp.write_text(page))


def _index_comparison(rows: list[dict], listed: int) -> str:
    """The plan's mean ± std table and trade-off figure, one per protocol ('' without rows)."""
    from xtc import summary

    if not rows:
        return ""
    parts = summary.by_protocol(rows)
    left = listed - len(rows)
    out = [f"<h3>Mean ± sample std over seeds ({len(rows)} readable run(s)"
           + (f"; {left} listed above left out: failed, unreadable, changed or not a training run"
              if left else "") + ")</h3>"
           f"<p>mIoU and pixel acc are fractions (0-1), rel err a ratio, abs err in the runs' "
           f"depth units, normal angles in degrees and within-t° shares as fractions; ↑ higher "
           f"is better, ↓ lower is better; Δm% is against the stl-&lt;task&gt; runs of the same "
           f"protocol (negative is an improvement). Protocols are never ranked together.</p>"]
    for proto, proto_rows in parts.items():
        group_by = summary.grouping(proto_rows)
        groups = summary.aggregate(proto_rows, group_by)
        units = summary.depth_units(proto_rows)
        out.append(f"<h4>Protocol {html.escape(proto)}</h4>" if len(parts) > 1 else "")
        out.append(summary.to_html(summary.report_table(
            groups, group_by, metrics=summary.table_metrics(proto_rows), depth_units=units)))
        if any("miou" in g["mean"] and "abs_err" in g["mean"] for g in groups):
            fig = summary.plot_tradeoff(groups, group_by=group_by, depth_units=units)
            out.append(f'<p><img alt="mIoU vs abs err per method, mean ± std over seeds '
                       f'({html.escape(proto)} protocol)" src="{_png_data_uri(fig)}"></p>')
    return "".join(out)


def _png_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (closed afterwards)."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _load_json(path: Path, kind: type = dict) -> tuple[Any, str | None]:
    """``(value, None)``; ``(None, None)`` when the file is missing; ``(None, why)`` when it
    cannot be read, is not JSON or is not a ``kind`` (a JSON object, or a list)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({type(exc).__name__})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (f"is not valid JSON ({exc.msg} at line {exc.lineno}): truncated or edited"
                      if text.strip() else "is empty")
    if not isinstance(value, kind):
        want = "an object" if kind is dict else "a list"
        return None, f"holds a JSON {_json_type(value)}, not {want}"
    return value, None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
