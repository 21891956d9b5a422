"""Plans: a preset (``configs/reports/``) or sweep file (``configs/sweeps/``) read and checked
before anything runs, expanded into named runs with their notebook parameters.

Every parameter name must be a parameter of the target notebook (the names assigned in its
cell tagged ``parameters``), a plan field (``name``, ``seeds``) or a real ``section.key``
config key, because papermill writes the names unescaped into the code it runs. Values must
be plain JSON (a YAML date must be quoted)."""

from __future__ import annotations

import ast
import datetime
import difflib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from xtc.config import SHORTCUTS
from xtc.errors import MissingFileError, PlanError
from xtc.reports import executors
from xtc.runtime import REPO_ROOT

PRESETS_DIR = REPO_ROOT / "configs" / "reports"
TRAIN_NOTEBOOK = "notebooks/02_train.ipynb"
SUMMARY_NOTEBOOK = "notebooks/90_summary.ipynb"
PATH_PARAMS = ("config", "data_root", "runs_dir", "run_a", "run_b", "run_dir", "checkpoint")
# executor: local | slurm | {kind: slurm, partition: ...} (xtc.reports.executors)
PLAN_KEYS = {"name", "description", "notebook", "parameters", "grid", "runs", "analysis",
             "executor"}
ANALYSIS_KEYS = {"notebook", "parameters", "name"}
RUN_FIELDS = ("name", "seeds")  # plan fields of a ``runs:`` item that are not notebook parameters


# --------------------------------------------------------------------------- plans
def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_plan(path: str | Path) -> dict:
    """Parse and check a preset/sweep YAML; errors name the field (PlanError).

    Every check that can fail runs here, before any notebook starts: structure, JSON-able
    values, parameter names against the notebooks' ``parameters`` cells, config keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"sweep file {path} does not exist")
    from xtc.config import parse_yaml  # YAML 1.2 floats, duplicate keys refused, aliases bounded

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"sweep file {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); save it as UTF-8") from None
    plan = parse_yaml(text, f"sweep file {path}") or {}
    if not isinstance(plan, dict):
        raise PlanError(f"{path}: must be a mapping with 'parameters' and 'grid' or 'runs'")
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown field(s) {sorted(map(str, unknown))}; "
                        f"valid: {sorted(PLAN_KEYS)}")
    if ("grid" in plan) == ("runs" in plan):
        raise PlanError(f"{path}: give exactly one of 'grid' (cartesian product) "
                        f"or 'runs' (a list)")
    for field, kind in (("parameters", dict), ("grid", dict), ("runs", list), ("analysis", list),
                        ("notebook", str)):
        if field in plan and not isinstance(plan[field], kind):
            raise PlanError(f"{path}: field '{field}' must be a {kind.__name__}")
    for field in ("parameters", "grid", "runs", "analysis"):
        _check_json(plan.get(field), field, path)
    for key, values in (plan.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise PlanError(f"{path}: field 'grid.{key}' must be a non-empty list of values")
    for i, item in enumerate(plan.get("runs") or []):
        if not isinstance(item, dict):
            raise PlanError(f"{path}: field 'runs[{i}]' must be a mapping of parameters")
        seeds = item.get("seeds")
        if "seeds" in item and (not isinstance(seeds, list) or not seeds):
            raise PlanError(f"{path}: field 'runs[{i}].seeds' must be a non-empty list, "
                            f"e.g. [0, 1]")
    for i, item in enumerate(plan.get("analysis") or []):
        if not isinstance(item, dict) or "notebook" not in item:
            raise PlanError(f"{path}: field 'analysis[{i}]' needs 'notebook' (and 'parameters')")
        extra = set(item) - ANALYSIS_KEYS
        if extra:
            raise PlanError(f"{path}: field 'analysis[{i}]' has unknown key(s) "
                             f"{sorted(map(str, extra))}; valid: {sorted(ANALYSIS_KEYS)}")
        if (not isinstance(item["notebook"], str)
                or not isinstance(item.get("parameters") or {}, dict)):
            raise PlanError(f"{path}: field 'analysis[{i}]': 'notebook' must be a path and "
                             f"'parameters' a mapping")

    executors.parse(plan.get("executor"), str(path))
    plan.setdefault("name", path.stem)
    plan.setdefault("analysis",
                    [{"notebook": SUMMARY_NOTEBOOK, "parameters": {"runs_dir": "$runs"}}])
    _check_names(plan, path)
    _check_run_references(plan, path)
    return plan


def _check_run_references(plan: dict, path: Path) -> None:
    """Every ``$runs/<name>`` an analysis notebook reads names a training run of the plan:
    a renamed run fails here, not after every run has trained."""
    names = {name for name, _ in expand_runs(plan)}

    def references(value: Any):
        if isinstance(value, str) and value.startswith("$runs/"):
            yield value.split("/")[1]
        elif isinstance(value, dict):
            for v in value.values():
                yield from references(v)
        elif isinstance(value, list):
            for v in value:
                yield from references(v)

    for i, item in enumerate(plan.get("analysis") or []):
        for key, value in (item.get("parameters") or {}).items():
            for name in references(value):
                if name not in names:
                    close = difflib.get_close_matches(name, sorted(names), n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise PlanError(f"{path}: field 'analysis[{i}].parameters.{key}' reads "
                                    f"$runs/{name}, which is not a training run of the "
                                    f"plan{hint}; the runs are {sorted(names)}")


def notebook_parameters(notebook: str | Path) -> set[str]:
    """The names a notebook takes: those assigned (``name = value``) in its cell tagged
    ``parameters``, which is what papermill's injected cell overrides."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise MissingFileError(f"notebook {notebook} does not exist; fix the plan's "
                                f"'notebook' field")
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
        source = next("".join(c.get("source", "")) for c in cells
                      if "parameters" in (c.get("metadata") or {}).get("tags", []))
    except StopIteration:
        return set()  # no parameters cell: papermill injects at the top, nothing is a parameter
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as exc:
        raise PlanError(f"notebook {notebook} cannot be read as a notebook "
                         f"({type(exc).__name__}); is it a .ipynb file?") from None
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise PlanError(f"notebook {notebook}: its parameters cell is not valid Python "
                         f"(line {exc.lineno}: {exc.msg})") from None
    names = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
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
            raise PlanError(f"{path}: field '{field}' is {value}, which a notebook parameter "
                             f"cannot be; use a finite number or null")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{field}[{i}]", path)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise PlanError(f"{path}: field '{field}' has the key {k!r} of type "
                                 f"{type(k).__name__}; quote it so that it is a string")
            _check_json(v, f"{field}.{k}", path)
        return
    kind = type(value).__name__
    fix = ("quote it, e.g. '2024-01-01', to pass a string"
           if isinstance(value, (datetime.date, datetime.time)) else
           "write a list [a, b] instead" if isinstance(value, (set, frozenset, tuple)) else
           "quote it to pass a string")
    raise PlanError(f"{path}: field '{field}' holds a {kind} ({str(value)[:40]!r}), which is "
                     f"not a JSON value a sweep can record; {fix}")


_CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


def _check_config_key(key: str, values: list, field: str, path: Path) -> None:
    """A ``section.key`` name must be a real config key and its values must fit its type."""
    from xtc import config

    if not _CONFIG_KEY.fullmatch(key):
        raise PlanError(f"{path}: field '{field}': {key!r} is not a config key (section.key)")
    for value in values:
        config.set_value(config.Config(), key, value, source=f"{path}: field '{field}'")


def _unknown(name: Any, field: str, valid: set[str], notebook: Path, path: Path,
             config_keys: bool) -> PlanError:
    close = difflib.get_close_matches(str(name), sorted(valid), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    also = " or a config key 'section.key' (e.g. train.epochs)" if config_keys else ""
    return PlanError(f"{path}: field '{field}': {str(name)[:80]!r} is not a parameter of "
                      f"{notebook.name}; {hint}valid: {', '.join(sorted(valid)) or '(none)'}{also}")


def _check_names(plan: dict, path: Path) -> None:
    """Every name a plan passes must be a parameter of its notebook, a plan field or a config
    key: papermill writes names into the code it runs without escaping them."""
    notebook = Path(resolve_paths(plan.get("notebook", TRAIN_NOTEBOOK), "notebook", Path(".")))
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
            raise PlanError(f"{path}: field '{field}' must be a mapping of section.key: value")
        for k, v in value.items():
            _check_config_key(k, [v], f"{field}.{k}", path)

    for key, value in (plan.get("parameters") or {}).items():
        if key not in valid:
            hint = (f"; config keys go under 'parameters.overrides' ({{{key}: ...}})"
                    if isinstance(key, str) and "." in key and "overrides" in valid else "")
            raise PlanError(str(_unknown(key, f"parameters.{key}", valid, notebook, path, False))
                             + hint)
        if key == "overrides":
            check_overrides(value, "parameters.overrides")
    for key, values in (plan.get("grid") or {}).items():
        check(key, values, f"grid.{key}")
    for i, item in enumerate(plan.get("runs") or []):
        for key, value in item.items():
            check(key, [value], f"runs[{i}].{key}", RUN_FIELDS)
    for i, item in enumerate(plan.get("analysis") or []):
        nb = Path(resolve_paths(item["notebook"], "notebook", Path(".")))
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
                items += [{**item, "seed": s,
                           **({"name": f"{item['name']}-s{s}"} if "name" in item else {})}
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
            raise PlanError(f"runs {seen[name]} and {item} get the same folder name {name!r}; "
                             f"give them distinct 'name' fields")
        seen[name] = item
        runs.append((name, params))
    return runs


def run_name(params: dict, varying: list[tuple[str, Any]] = ()) -> str:
    """``xtc-consistency-l0.01-s0``: method, cross-task kind (xtc only), varied values, seed."""
    parts = [str(params.get("method", "run"))]
    if params.get("method") == "xtc" and params.get("cross_task"):
        parts.append(str(params["cross_task"]))
    for key, value in varying:
        first = key.split("+")[0]  # "lambda1+lambda2": both varied together -> "l"
        label = ("l" if key == "lambda1+lambda2" else SHORTCUTS[first].label
                 if first in SHORTCUTS and SHORTCUTS[first].label
                 else first.split(".")[-1].replace("_", ""))
        parts.append(f"{label}{value}" if not isinstance(value, str) else str(value))
    if params.get("seed") is not None:
        parts.append(f"{SHORTCUTS['seed'].label}{params['seed']}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts)).lstrip(".") or "run"


def folder_name(name: str, field: str) -> str:
    """A run or plan folder name: one path component, so no plan can write outside
    ``reports_dir`` (no '/', no '..', no absolute path)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", str(name)):
        raise PlanError(f"plan field '{field}': folder name {name!r} must be letters, digits "
                         f"and . _ + - (starting with a letter or digit), so that it stays "
                         f"inside the reports folder")
    return str(name)


def resolve_paths(value: Any, key: str, plan_dir: Path) -> Any:
    """``$runs`` -> the plan folder; relative path parameters -> absolute (cwd, then repo)."""
    if isinstance(value, dict):
        return {k: resolve_paths(v, k if key != "runs" else "run", plan_dir)
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paths(v, key, plan_dir) for v in value]
    if isinstance(value, str) and value.startswith("$runs"):
        return str(plan_dir / value[len("$runs"):].lstrip("/"))
    if isinstance(value, str) and key in (*PATH_PARAMS, "run", "notebook"):
        path = Path(value)
        if not path.is_absolute():
            path = path if path.exists() or not (REPO_ROOT / path).exists() else REPO_ROOT / path
        return str(path.resolve())
    return value
