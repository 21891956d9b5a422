"""Reports: papermill execution, presets, sweeps and the reports index.

A *plan* (a preset in ``configs/reports/`` or a sweep file in ``configs/sweeps/``) lists
training runs of ``notebooks/02_train.ipynb`` (``runs:`` explicitly, or ``grid:`` as a
cartesian product) with fixed ``parameters:``, then ``analysis:`` notebooks (03, 04, 90)
whose parameters refer to runs as ``$runs/<run-name>`` (``$runs`` alone: the plan's folder).
Each run executes into ``<reports_dir>/<plan>/<run>/`` (executed .ipynb, .html,
results.json, status.json). A failed run is recorded, never stops the others, and is
retried on the next call; a run whose status.json says ``ok`` is skipped.
papermill and nbconvert are imported only inside the functions that run notebooks.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from xtc.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]  # the repository (configs/, notebooks/)
PRESETS_DIR = ROOT / "configs" / "reports"
TRAIN_NOTEBOOK = "notebooks/02_train.ipynb"
SUMMARY_NOTEBOOK = "notebooks/90_summary.ipynb"
STATUS = "status.json"
PATH_PARAMS = ("config", "data_root", "runs_dir", "run_a", "run_b", "checkpoint")
PLAN_KEYS = {"name", "description", "notebook", "parameters", "grid", "runs", "analysis"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    """Parse and check a preset/sweep YAML; errors name the field (ValueError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(plan, dict):
        raise ValueError(f"{path}: must be a mapping with 'parameters' and 'grid' or 'runs'")
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; valid: {sorted(PLAN_KEYS)}")
    if ("grid" in plan) == ("runs" in plan):
        raise ValueError(f"{path}: give exactly one of 'grid' (cartesian product) or 'runs' (a list)")
    for field, kind in (("parameters", dict), ("grid", dict), ("runs", list), ("analysis", list)):
        if field in plan and not isinstance(plan[field], kind):
            raise ValueError(f"{path}: field '{field}' must be a {kind.__name__}")
    for key, values in (plan.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: field 'grid.{key}' must be a non-empty list of values")
    for i, item in enumerate(plan.get("runs") or []):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: field 'runs[{i}]' must be a mapping of parameters")
    for i, item in enumerate(plan.get("analysis") or []):
        if not isinstance(item, dict) or "notebook" not in item:
            raise ValueError(f"{path}: field 'analysis[{i}]' needs 'notebook' (and 'parameters')")
    plan.setdefault("name", path.stem)
    plan.setdefault("analysis", [{"notebook": SUMMARY_NOTEBOOK, "parameters": {"runs_dir": "$runs"}}])
    return plan


def expand_runs(plan: dict) -> list[tuple[str, dict]]:
    """``[(run_name, parameters)]`` for a plan's training runs (deterministic names).

    ``grid`` keys may tie parameters (``lambda1+lambda2: [0, 0.01]``) or be config keys
    (``train.epochs: [2, 4]``, merged into ``overrides``); ``runs`` items may carry
    ``seeds: [0, 1]`` and an explicit ``name``.
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
            items += [{**item, "seed": s} for s in seeds] if seeds is not None else [item]
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
               progress: bool = True) -> list[dict]:
    """Run ``configs/reports/<name>.yaml`` into ``<reports_dir>/<name>/``; see :func:`run_plan`."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; choose one of {list_presets()}")
    return run_plan(path, reports_dir, workers, progress)


def run_sweep(path: str | Path, workers: int = 1, reports_dir: str | Path = "reports",
              progress: bool = True) -> list[dict]:
    """Run a sweep YAML (``grid:`` or ``runs:``) then 90_summary over it; see :func:`run_plan`."""
    return run_plan(path, reports_dir, workers, progress)


def run_plan(path: str | Path, reports_dir: str | Path = "reports", workers: int = 1,
             progress: bool = True) -> list[dict]:
    """Execute a plan's training runs (``workers`` in parallel), then its analysis notebooks.

    Returns one record per notebook (name, kind, status ok|failed|skipped, error, paths,
    seconds), also written to ``<reports_dir>/<plan>/plan.json``; rebuilds the index.
    """
    from tqdm.auto import tqdm

    plan = load_plan(path)
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    plan_dir = (Path(reports_dir) / _folder_name(plan["name"], "name")).resolve()
    train_nb = _resolve(plan.get("notebook", TRAIN_NOTEBOOK), "notebook", plan_dir)
    tasks = [{"name": name, "kind": "train", "notebook": train_nb, "out_dir": str(plan_dir / name),
              "parameters": {**_resolve(params, "", plan_dir), "out_dir": str(plan_dir / name)}}
             for name, params in ((_folder_name(n, "runs"), p) for n, p in expand_runs(plan))]
    analysis = []
    for item in plan["analysis"]:
        nb = _resolve(item["notebook"], "notebook", plan_dir)
        name = _folder_name(item.get("name", Path(nb).stem), "analysis")
        analysis.append({"name": name, "kind": "analysis", "notebook": nb,
                         "out_dir": str(plan_dir / name),
                         "parameters": {**_resolve(item.get("parameters") or {}, "", plan_dir),
                                        "out_dir": str(plan_dir / name)}})
    threads = max(1, (os.cpu_count() or 1) // workers)
    records = []
    bar = tqdm(total=len(tasks) + len(analysis), desc=f"report {plan['name']}", unit="nb",
               disable=not progress)
    todo = [t for t in tasks if not _done(t, records)]
    bar.update(len(tasks) - len(todo))
    if workers == 1 or len(todo) <= 1:
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
    records.sort(key=lambda r: order[r["name"]])
    atomic_write(plan_dir / "plan.json",
                 lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n"))
    build_index(reports_dir)
    return records


def _done(task: dict, records: list) -> bool:
    """True (and a ``skipped`` record added) when the run folder holds a completed run."""
    out = Path(task["out_dir"])
    try:
        status = json.loads((out / STATUS).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if status.get("status") != "ok" or not (out / "results.json").is_file():
        return False
    records.append({**status, "status": "skipped"})
    return True


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
    out = Path(task["out_dir"])
    start = time.time()
    record = {"name": task["name"], "kind": task["kind"], "status": "ok", "error": None,
              "notebook": str(out / Path(task["notebook"]).name),
              "html": str(out / (Path(task["notebook"]).stem + ".html")),
              "parameters": task["parameters"], "threads": threads}
    try:
        with _threads(threads):
            # torch in the kernel reads OMP_NUM_THREADS at start-up
            execute(task["notebook"], out, task["parameters"])
        if task["kind"] == "train" and not (out / "results.json").is_file():
            raise RuntimeError(f"{task['notebook']} finished without writing {out}/results.json")
    except ExecutionFailed as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=3))
    record["seconds"] = round(time.time() - start, 1)
    atomic_write(out / STATUS, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return record


# --------------------------------------------------------------------------- index
def build_index(reports_dir: str | Path = "reports") -> Path:
    """Write ``<reports_dir>/index.html`` (atomic): every run with links, a summary table
    (method, cross-task, seed, mIoU, pixel acc, abs err, rel err, status) and failures."""
    from xtc.summary import METRICS, row_from_results

    root = Path(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    sections, failures = [], []
    for plan_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = []
        order = {r.get("name"): i for i, r in enumerate(_read_json(plan_dir / "plan.json") or [])}
        for run in sorted((p for p in plan_dir.iterdir() if p.is_dir()),
                          key=lambda p: (order.get(p.name, len(order)), p.name)):
            status = _read_json(run / STATUS) or {}
            doc = _read_json(run / "results.json")
            if not status and doc is None:
                continue
            state = status.get("status", "ok" if doc else "unknown")
            row = row_from_results(doc, run) if doc else {"metrics": {}}
            links = " ".join(f'<a href="{html.escape(str(f.relative_to(root)))}">{f.suffix[1:]}</a>'
                             for f in sorted(run.glob("*")) if f.suffix in (".html", ".ipynb")
                             or f.name == "results.json")
            cells = [run.name, row.get("method") or "", row.get("cross_task") or "",
                     "" if row.get("seed") is None else row["seed"]]
            cells += [f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "" for m in METRICS]
            rows.append((state, cells, links))
            if state == "failed":
                nb = Path(status.get("notebook", run))
                failures.append(
                    f'<li><b>{html.escape(plan_dir.name)}/{html.escape(run.name)}</b>: '
                    f'{html.escape(str(status.get("error")))} (executed notebook: '
                    f'<a href="{html.escape(_rel(nb, root))}">{html.escape(nb.name)}</a>, '
                    f'<a href="{html.escape(_rel(nb.with_suffix(".html"), root))}">html</a>)</li>')
        if rows:
            head = "".join(f"<th>{h}</th>" for h in ("run", "method", "cross-task", "seed", "mIoU",
                                                     "pixel acc", "abs err", "rel err",
                                                     "status", "files"))
            body = "".join(f'<tr class="{s}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                           + f"<td>{html.escape(s)}</td><td>{links}</td></tr>" for s, cells, links in rows)
            sections.append(f"<h2>{html.escape(plan_dir.name)}</h2><table><thead><tr>{head}"
                            f"</tr></thead><tbody>{body}</tbody></table>")
    fail_html = (f"<h2>Failures</h2><ul>{''.join(failures)}</ul>" if failures
                 else "<p>No failed runs.</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>xtc reports</title><style>"
            f"body{{font-family:sans-serif}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}"
            f"tr.failed{{background:#fdd}}</style></head><body><h1>xtc reports</h1>"
            f"<p>Metrics are test-split values from each run's results.json (its protocol "
            f"section states the mIoU formula, depth units and model selection); "
            f"90_summary aggregates them over seeds.</p>{fail_html}{''.join(sections)}"
            f"<p><small>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</small></p></body></html>")
    return atomic_write(root / "index.html", lambda tmp: tmp.write_text(page))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
