"""Aggregate finished runs (their results.json files) into comparison tables.

Pure data in, data out: no notebook or papermill imports, no pandas. 90_summary, the
reports index and tests use it. A *row* is one run; a *group* is the runs that share the
``group_by`` values (normally ``method`` and ``cross_task``) **and the protocol**, reported
as mean ± sample std over seeds with n. Δm% is computed against the single-task runs of the
same protocol (``stl-seg`` gives miou/pixel_acc, ``stl-depth`` gives abs_err/rel_err, each
the mean over its seeds), metric- and task-weighted, with
:data:`xtc.metrics.DELTA_M_CONVENTION` (lower is better).

Protocols (``protocol["name"]`` in results.json; ``"xtc"`` when absent) select and report
differently, so their numbers never share a ranking: the tables here refuse groups of more
than one protocol, :func:`side_by_side` shows them in separate column blocks, and
:func:`beside_published` puts published rows only beside runs of their protocol and dataset.

Example:
    >>> rows = [{"name": "a", "method": "mtl", "cross_task": "-", "seed": 0,
    ...          "metrics": {"miou": 0.5}},
    ...         {"name": "b", "method": "mtl", "cross_task": "-", "seed": 1,
    ...          "metrics": {"miou": 0.7}}]
    >>> g = aggregate(rows)[0]
    >>> round(g["mean"]["miou"], 3), round(g["std"]["miou"], 3), g["n"], g["protocol"]
    (0.6, 0.141, 2, 'xtc')
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

from xtc import files
from xtc.config import SHORTCUTS
from xtc.errors import MissingFileError
from xtc.results import FILENAME

METRICS = ("miou", "pixel_acc", "abs_err", "rel_err")  # the paper's two tasks; table_metrics(rows)
LABELS = {"miou": "mIoU", "pixel_acc": "pixel acc", "abs_err": "abs err", "rel_err": "rel err",
          "normal_mean": "mean angle", "normal_median": "median angle",
          "normal_11": "within 11.25°", "normal_22": "within 22.5°", "normal_30": "within 30°"}
SEG_BASELINE, DEPTH_BASELINE = "stl-seg", "stl-depth"
SEG_METRICS, DEPTH_METRICS = ("miou", "pixel_acc"), ("abs_err", "rel_err")
PAPER_TASKS = "seg+depth"  # a row's ``tasks`` when its results.json predates model.tasks
DEFAULT_PROTOCOL = "xtc"  # runs written before results.json named its protocol
PROTOCOL_FIRST = ("name", "model_selection", "reported_metrics")  # printed first by protocol_text
DM_METRIC, DM_TASK = "Δm% metric-wt (lower better)", "Δm% task-wt (lower better)"
# Short names a row carries, and the results.json params they come from.
ROW_FIELDS = ("method", "cross_task", "seed", "lambda1", "lambda2", "weighting", "dataset")
FIELDS = {name: SHORTCUTS[name].key for name in ROW_FIELDS}


def _metrics(metrics: Iterable[str] | None, rows_or_groups: Iterable[dict]) -> tuple[str, ...]:
    """The metrics a table shows: the ones given, else :func:`table_metrics` of the rows."""
    return tuple(metrics) if metrics is not None else table_metrics(rows_or_groups)


def table_metrics(rows: Iterable[dict]) -> tuple[str, ...]:
    """The table metrics (``xtc.tasks.delta_m_metrics``) of every task the rows trained, in
    registry order: the paper's four for seg + depth, NYUv2's nine with normals."""
    from xtc.tasks import TASKS, delta_m_metrics

    trained = table_metrics_tasks(rows)
    table = delta_m_metrics()
    return tuple(m for t in TASKS.in_order() if t in trained for m in table[t])


def table_metrics_tasks(rows: Iterable[dict]) -> set[str]:
    """Every task some row trained (its ``tasks``)."""
    return {t for r in rows for t in str(r.get("tasks") or PAPER_TASKS).split("+")}


def _tasks_of(params: dict) -> str:
    """``seg+depth``-style name of the tasks a run built decoders for."""
    from xtc.tasks import METHODS

    method = params.get("model.method", params.get("method"))
    tasks = params.get("model.tasks") or PAPER_TASKS.split("+")
    try:
        return "+".join(METHODS.get(str(method)).tasks_for(tasks))
    except KeyError:
        return "+".join(tasks)


# --------------------------------------------------------------------------- rows
def collect(source: str | Path | Iterable[str | Path], split: str = "test",
            problems: list | None = None) -> list[dict]:
    """One row per run that has a results.json with ``metrics[split]``.

    ``source`` is a folder (searched recursively for results.json, skipping hidden folders
    such as a plan's ``.attempts/``, which hold superseded runs) or a list of run folders /
    results.json paths. A row holds ``name``, ``run_dir``, the :data:`FIELDS` (cross_task
    is ``"-"`` for methods without cross-task terms), ``metrics`` (that split, numbers
    only), ``params``, ``protocol`` and ``wall_time_s``.

    Skipped without a problem: analysis outputs (``metrics`` holds none of the split
    sections train/val/test, e.g. 90_summary's ``groups``) and evaluations of another split
    (``"split": "val"``). Every other file that gives no row is a problem: when
    ``problems`` is a list, one ``{"path", "reason"}`` is appended for it, so that a table
    never silently loses a run.
    """
    def skip(path: Path, reason: str) -> None:
        if problems is not None:
            problems.append({"path": str(path), "reason": reason})

    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise MissingFileError(f"runs folder {root} does not exist; train runs first "
                                    f"(notebooks/02_train.ipynb or `xtc sweep FILE`)")
        paths = (sorted(p for p in root.rglob(FILENAME)
                        if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))
                 if root.is_dir() else [root])
    else:
        paths = [Path(p) / FILENAME if Path(p).is_dir() else Path(p) for p in source]
    rows = []
    for path in paths:
        doc, why = files.read_json(path)
        if doc is None:
            skip(path, why or "does not exist")
            continue
        metrics = doc.get("metrics")
        if not isinstance(metrics, dict):
            skip(path, "has no 'metrics' object" if metrics is None
                 else f"its 'metrics' is a JSON {files.json_type(metrics)}, not an object")
            continue
        section = metrics.get(split)
        if isinstance(section, dict):
            rows.append(row_from_results(doc, path.parent, split))
        elif split in metrics:
            skip(path, f"its metrics.{split} is a JSON {files.json_type(section)}, not an object")
        elif isinstance(doc.get("split"), str) and doc["split"] != split:
            continue  # an evaluation of another split (xtc evaluate --split val)
        elif metrics and not {"train", "val", "test"} & set(metrics):
            continue  # an analysis output (90_summary groups, 03 surfaces, 04 energy, ...)
        else:
            have = ", ".join(sorted(metrics)) or "nothing"
            skip(path, f"has no metrics.{split} (metrics holds {have})")
    return rows


def row_from_results(doc: dict, run_dir: str | Path, split: str = "test") -> dict:
    """The row for one parsed results.json (see :func:`collect`); parts of the wrong type
    (a hand-edited file) count as missing rather than crashing a table."""
    doc = doc if isinstance(doc, dict) else {}
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    row: dict[str, Any] = {"name": Path(run_dir).name, "run_dir": str(run_dir)}
    for short, key in FIELDS.items():
        row[short] = params.get(key, params.get(short))
    if row["method"] not in (None, "xtc"):
        row["cross_task"] = "-"  # the setting exists in every config but only xtc uses it
    row["tasks"] = _tasks_of(params)
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    section = metrics.get(split) if isinstance(metrics.get(split), dict) else {}
    row["metrics"] = {k: float(v) for k, v in section.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v)}
    protocol = doc.get("protocol") if isinstance(doc.get("protocol"), dict) else {}
    row.update(params=params, protocol=protocol, wall_time_s=doc.get("wall_time_s"))
    return row


# --------------------------------------------------------------------------- groups
# Protocols first: every group and table below is of one protocol.
def protocol_name(row: dict) -> str:
    """The row's (or group's) protocol name: ``protocol["name"]``, ``"xtc"`` for older runs."""
    proto = row.get("protocol")
    if isinstance(proto, str):  # a group
        return proto
    return str((proto or {}).get("name") or DEFAULT_PROTOCOL)


def by_protocol(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Rows (or groups) split by protocol name, in order of first appearance."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(protocol_name(r), []).append(r)
    return out


def check_one_protocol(rows_or_groups: Iterable[dict], what: str = "a comparison") -> str | None:
    """The single protocol of the input (None when empty); ValueError naming them if several."""
    names = sorted(by_protocol(rows_or_groups))
    if len(names) > 1:
        raise ValueError(
            f"{what} refuses runs of different protocols ({', '.join(names)}): they select and "
            f"report differently, so their numbers never share a ranking. Keep one protocol "
            f"(summary.by_protocol(rows)[{names[0]!r}]) or show them with "
            f"summary.side_by_side(rows)")
    return names[0] if names else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _key(row: dict, field: str) -> Any:
    if field == "protocol":
        return protocol_name(row)
    return row[field] if field in row else row.get("params", {}).get(field)


def baselines(rows: list[dict]) -> dict[str, float]:
    """STL baselines: each task's table metrics from its ``stl-<task>`` runs (seed means):
    seg from ``stl-seg``, depth from ``stl-depth``, normals from ``stl-normal``.

    Refuses rows of several protocols: a baseline belongs to one protocol.
    """
    from xtc.tasks import delta_m_metrics

    check_one_protocol(rows, "baselines")
    out = {}
    for task, names in delta_m_metrics().items():
        method = f"stl-{task}"
        for m in names:
            values = [r["metrics"][m] for r in rows if r["method"] == method and m in r["metrics"]]
            if values:
                out[m] = sum(values) / len(values)
    return out


def _delta_ms(group: dict, members: list[dict], base: dict[str, float]) -> None:
    """Fill the group's metric- and task-weighted Δm% (of the means) and their per-run stds."""
    from xtc.metrics import delta_m, delta_m_task

    common = {m: v for m, v in group["mean"].items() if m in base}
    if not common:
        return
    for key, fn in (("delta_m", delta_m), ("delta_m_task", delta_m_task)):
        group[key] = fn(common, base)
        per_run = [fn({m: r["metrics"][m] for m in common if m in r["metrics"]}, base)
                   for r in members if any(m in r["metrics"] for m in common)]
        group[f"{key}_std"] = _mean_std(per_run)[1]


def aggregate(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
              metrics: Iterable[str] | None = None) -> list[dict]:
    """Groups with ``protocol``, ``n``, ``seeds``, ``mean``/``std`` per metric and Δm% vs the STL
    rows **of the same protocol**; runs of different protocols never share a group.

    ``delta_m`` / ``delta_m_task``: metric- / task-weighted Δm% of the group's means against
    :func:`baselines`; ``*_std`` the sample std of the per-run values. None when no STL run
    covers the group's metrics. Sorted by protocol, then STL, mtl, xtc, the rest.
    """
    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    out = []
    for proto, proto_rows in by_protocol(rows).items():
        base = baselines(proto_rows)
        groups: dict[tuple, list[dict]] = {}
        for row in proto_rows:  # runs of different task sets never share a group either
            key = tuple(_key(row, f) for f in group_by) + (row.get("tasks") or PAPER_TASKS,)
            groups.setdefault(key, []).append(row)
        for key, members in groups.items():
            group = {**dict(zip(group_by, key[:-1])), "tasks": key[-1], "protocol": proto,
                     "n": len(members),
                     "seeds": sorted({r["seed"] for r in members if r.get("seed") is not None}),
                     "runs": [r["name"] for r in members], "mean": {}, "std": {},
                     "delta_m": None, "delta_m_std": None,
                     "delta_m_task": None, "delta_m_task_std": None}
            for m in metrics:
                values = [r["metrics"][m] for r in members if m in r["metrics"]]
                if values:
                    group["mean"][m], group["std"][m] = _mean_std(values)
            _delta_ms(group, members, base)
            out.append(group)
    order = {SEG_BASELINE: 0, DEPTH_BASELINE: 1, "stl-normal": 2, "mtl": 3, "xtc": 4}
    return sorted(out, key=lambda g: (g["protocol"], order.get(g.get("method"), 9),
                                      g["tasks"], str([g.get(f) for f in group_by])))


CROSS_TASK_FIELDS = ("cross_task", "lambda1", "lambda2", "transfer_detach_input")  # xtc only
# added by grouping() when they vary
AUTO_FIELDS = ("lambda1", "lambda2", "model.transfer_detach_input")


def _short(field: str) -> str:
    """``loss.lambda1`` -> ``lambda1``: the name a group field goes by in a label."""
    return field.rsplit(".", 1)[-1]


def _number(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def group_label(group: dict, group_by: Iterable[str] = ("method", "cross_task")) -> str:
    """The group in words, for legends, notes and verdicts; deterministic in its fields.

    ``stl-seg``, ``mtl``, ``xtc consistency``, ``xtc consistency, λ=0`` (lambda1 = lambda2 = 0),
    ``xtc consistency, λ1=0`` (only lambda1 in ``group_by``), ``xtc consistency, detached
    control`` (``model.transfer_detach_input`` true), ``weighting=dwa`` for any other field.
    Cross-task settings are left out for methods other than xtc (they do not use them), and
    unset (None, ``-``) or false detach values are left out.
    """
    values = {_short(f): group.get(f) for f in group_by if group.get(f) not in (None, "-")}
    if str(group.get("method")).startswith("stl-"):
        values.pop("tasks", None)  # stl-normal says its task already
        if values.get("aggregator") in (None, "none"):  # one loss: nothing to aggregate
            values.pop("aggregator", None)
            values.pop("objectives", None)
    method = values.pop("method", None)
    xtc_like = method in (None, "xtc")
    words = [str(method)] if method is not None else []
    cross = values.pop("cross_task", None)
    if cross is not None and xtc_like:
        words.append(str(cross))
    head = " ".join(words)
    extra = []
    l1, l2 = values.pop("lambda1", None), values.pop("lambda2", None)
    detach = values.pop("transfer_detach_input", None)
    if xtc_like:
        if l1 is not None and l2 is not None:
            extra += ([f"λ={_number(l1)}"] if l1 == l2
                      else [f"λ1={_number(l1)}", f"λ2={_number(l2)}"])
        elif l1 is not None or l2 is not None:
            extra.append(f"λ1={_number(l1)}" if l1 is not None else f"λ2={_number(l2)}")
        if detach is True or str(detach).lower() == "true":
            extra.append("detached control")
    for f in group_by:  # any other field, in group_by order
        name = _short(f)
        if name in values:
            extra.append(f"{name} {_number(values[name])}" if name == "seed"
                         else f"{name}={_number(values[name])}")
    return ", ".join([head] * bool(head) + extra) or "all runs"


def control_kind(group: dict) -> str | None:
    """``"λ=0"`` or ``"detached"`` when the group is an xtc control run, else None.

    λ=0: both cross-task weights are 0 (lambda1 = 0 with lambda2 0 or not in the group);
    detached: ``model.transfer_detach_input`` true (no cross-task gradient reaches the net).
    """
    if group.get("method") not in (None, "xtc"):
        return None
    values = {_short(f): v for f, v in group.items() if isinstance(f, str)}
    if values.get("transfer_detach_input") is True:
        return "detached"
    l1, l2 = values.get("lambda1"), values.get("lambda2")
    if l1 is not None and l1 == 0 and (l2 is None or l2 == 0):
        return "λ=0"
    return None


def grouping(rows: Iterable[dict], base: Iterable[str] = ("method", "cross_task"),
             optional: Iterable[str] = AUTO_FIELDS) -> list[str]:
    """``base`` plus each ``optional`` field that takes more than one value among the xtc rows
    of some protocol: the λ=0 and detached controls get their own groups (and labels) where a
    folder holds them, and nothing is added where every xtc run shares the setting. ``tasks``
    is added when multi-task runs of several task sets are present (seg+depth beside
    seg+depth+normal), so their rows are told apart."""
    rows = list(rows)
    out = list(base)
    task_sets = {r.get("tasks") or PAPER_TASKS for r in rows
                 if not str(r.get("method")).startswith("stl-")}
    if len(task_sets) > 1 and "tasks" not in out:  # 2- and 3-task runs side by side
        out.insert(1, "tasks")
    for f in optional:
        for proto_rows in by_protocol(rows).values():
            seen = {json.dumps(_key(r, f), default=str) for r in proto_rows
                    if r.get("method") == "xtc"}
            if len(seen) > 1 and f not in out:
                out.append(f)
    return out


# --------------------------------------------------------------------------- display
def _cell(mean: float, std: float | None, n: int, digits: int) -> str:
    spread = f" ± {std:.{digits}f}" if n > 1 and std is not None else ""  # one run: no spread
    return f"{mean:.{digits}f}{spread}"


def _signed(value: float, std: float | None, n: int) -> str:
    value = round(value, 2) + 0.0  # no "-0.00"
    return f"{value:+.2f}" + (f" ± {std:.2f}" if n > 1 and std is not None else "")


def _dm_cells(g: dict) -> dict[str, str]:
    return {label: "" if g[key] is None else _signed(g[key], g[f"{key}_std"], g["n"])
            for label, key in ((DM_METRIC, "delta_m"), (DM_TASK, "delta_m_task"))}


def _metric_cells(g: dict, metrics: tuple[str, ...], digits: int) -> dict[str, str]:
    return {LABELS.get(m, m): (_cell(g["mean"][m], g["std"][m], g["n"], digits)
                               if m in g["mean"] else "")
            for m in metrics}


def comparison_table(groups: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                     metrics: Iterable[str] | None = None, digits: int = 4) -> list[dict]:
    """Display rows (strings) of ONE protocol: group columns, n, ``mean ± std`` per metric (mean
    alone for one run), metric- and task-weighted Δm% vs STL. Mixed protocols: ValueError."""
    check_one_protocol(groups, "comparison_table")
    group_by, metrics = tuple(group_by), _metrics(metrics, groups)
    return [{**{f: str(g.get(f)) for f in group_by}, "n": str(g["n"]),
             **_metric_cells(g, metrics, digits), **_dm_cells(g)} for g in groups]


def side_by_side(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                 metrics: Iterable[str] | None = None, digits: int = 4) -> list[dict]:
    """One display row per group key, one column block per protocol (``xtc: mIoU``, ...).

    Each block's Δm% is against the STL runs of that protocol; nothing is compared or ranked
    across blocks. Rows are in :func:`aggregate` order of the first protocol holding them.
    """
    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    groups = aggregate(rows, group_by, metrics)
    protocols = list(dict.fromkeys(g["protocol"] for g in groups))
    keys = list(dict.fromkeys(tuple(g.get(f) for f in group_by) for g in groups))
    index = {(g["protocol"], tuple(g.get(f) for f in group_by)): g for g in groups}
    table = []
    for key in keys:
        row = {f: str(v) for f, v in zip(group_by, key)}
        for p in protocols:
            g = index.get((p, key))
            cells = {"n": "0", **{LABELS.get(m, m): "" for m in metrics},
                     DM_METRIC: "", DM_TASK: ""}
            if g is not None:
                cells = {"n": str(g["n"]), **_metric_cells(g, metrics, digits), **_dm_cells(g)}
            row.update({f"{p}: {c}": v for c, v in cells.items()})
        table.append(row)
    return table


def _dataset_of(row: dict) -> tuple[str, Any]:
    params = row.get("params") or {}
    return (str(params.get("data.name", row.get("dataset")) or "(not recorded)"),
            params.get("data.classes"))


def published_refusal(rows: list[dict], name: str) -> str | None:
    """Why our runs cannot stand beside published table ``name`` (None when they can).

    They can when every run used the table's protocol (``mtan``) and dataset: Cityscapes with
    ``data.classes`` 7 for ``cityscapes-7``, NYUv2 (always 13 classes) for ``nyuv2-3task``.
    """
    from xtc.analysis import published

    meta = published.info(name)
    want = meta["protocol"]["name"]
    if not rows:
        return f"no runs to put beside the published {name} rows"
    protocols = by_protocol(rows)
    if set(protocols) != {want}:
        other = ", ".join(f"{p} ({len(rs)} runs)" for p, rs in protocols.items() if p != want)
        return (f"protocol differs: the published {name} rows use the {want} protocol (no model "
                f"selection; reported = mean of the last 10 epochs' test metrics), but the runs "
                f"use {other}; train with the {want} protocol or compare within one protocol")
    wrong = sorted({f"{d} ({c} classes)" if d == "cityscapes" else d
                    for d, c in map(_dataset_of, rows)
                    if d != meta["dataset"] or (d == "cityscapes" and c != meta["classes"])})
    if wrong:
        target = f"{meta['dataset']} ({meta['classes']} classes)"
        return (f"dataset differs: the published {name} rows are {target}, "
                f"runs use {', '.join(wrong)}")
    return None


def beside_published(rows: list[dict], name: str,
                     group_by: Iterable[str] = ("method", "cross_task"),
                     metrics: Iterable[str] | None = None, digits: int = 4) -> list[dict]:
    """Our groups, then the published rows of ``name`` (same protocol only), one display table.

    ValueError with :func:`published_refusal`'s reason when protocol or dataset differ. Δm%
    columns are over the shown metrics, ours against our STL runs, each published row against
    its table's STL row; ``Δm% printed`` is the source's own value (over all its metrics, e.g.
    9 for NYUv2). The legacy per-image mIoU row is left out (another protocol).
    """
    from xtc.analysis import published

    reason = published_refusal(rows, name)
    if reason:
        raise ValueError(f"beside_published refuses: {reason}")
    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    printed = "Δm% printed (source's metrics)"
    table = []
    for g in aggregate(rows, group_by, metrics):
        table.append({"row": f"ours: {group_label(g, group_by)}",
                      "source": f"this workbench ({g['protocol']})",
                      "n": str(g["n"]), **_metric_cells(g, metrics, digits), **_dm_cells(g),
                      printed: "", "notes": ""})
    for r in published.table(name):
        if not r["comparable"]:
            continue
        shown = {m: r["metrics"][m] for m in metrics if m in r["metrics"]}
        cells = {"row": r["method"], "source": r["source"], "n": "",
                 **{LABELS.get(m, m): f"{r['metrics'][m]:.{digits}f}" if m in shown else ""
                    for m in metrics},
                 DM_METRIC: "", DM_TASK: "",
                 printed: "" if r["delta_m_printed"] is None else f"{r['delta_m_printed']:+.2f}"}
        if shown and not r["baseline"]:
            cells[DM_METRIC] = f"{published.recompute(name, r, metrics=tuple(shown)):+.2f}"
            cells[DM_TASK] = f"{published.recompute(name, r, 'task', metrics=tuple(shown)):+.2f}"
        flags = [f for f, on in (("third-party", r["third_party"]),
                                 ("from memory", r["from_memory"])) if on]
        if len(shown) < len(metrics):
            flags.append("missing " + ", ".join(LABELS.get(m, m) for m in metrics
                                                if m not in shown))
        cells["notes"] = "; ".join(flags + ([r["note"]] if r["note"] else []))
        table.append(cells)
    return table


def to_markdown(table: list[dict]) -> str:
    """A GitHub-flavoured markdown table (``_no runs_`` when empty)."""
    if not table:
        return "_no runs_"
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in table]
    return "\n".join(lines)


def to_html(table: list[dict], raw: Iterable[str] = (), row_class: str | None = None) -> str:
    """An HTML ``<table>`` (escaped; ``<p>no runs</p>`` when empty).

    ``raw``: columns whose cells are already HTML (links), written unescaped; ``row_class``:
    a column whose value becomes each ``<tr>``'s class (and is still shown as a cell).
    """
    if not table:
        return "<p>no runs</p>"
    cols, raw = list(table[0]), set(raw)

    def cell(r: dict, c: str) -> str:
        value = str(r.get(c, ""))
        return f"<td>{value if c in raw else html.escape(value)}</td>"

    def tr(r: dict) -> str:
        cls = f' class="{html.escape(str(r.get(row_class, "")))}"' if row_class else ""
        return f"<tr{cls}>" + "".join(cell(r, c) for c in cols) + "</tr>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(map(tr, table))}</tbody></table>"


def overlap_notes(groups: list[dict], metrics: Iterable[str] | None = None,
                  group_by: Iterable[str] = ("method", "cross_task")) -> list[str]:
    """Notes where two groups' means differ by less than their spread (|Δmean| < std_a + std_b).

    Such a difference is not resolved by these seeds; groups with one run get a note that
    their spread is unknown. Groups of ONE protocol (it compares them): else ValueError.
    """
    check_one_protocol(groups, "overlap_notes")
    group_by, metrics = tuple(group_by), _metrics(metrics, groups)
    notes = [f"{group_label(g, group_by)}: one run only, its spread is unknown"
             for g in groups if g["n"] < 2]
    for m in metrics:
        have = [g for g in groups if m in g["mean"]]
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                diff, spread = abs(a["mean"][m] - b["mean"][m]), a["std"][m] + b["std"][m]
                if diff < spread:
                    notes.append(f"{LABELS.get(m, m)}: {group_label(a, group_by)} "
                                 f"({a['mean'][m]:.4f} ± {a['std'][m]:.4f}, n={a['n']}) and "
                                 f"{group_label(b, group_by)} ({b['mean'][m]:.4f} ± "
                                 f"{b['std'][m]:.4f}, n={b['n']}) differ by {diff:.4f}, less "
                                 f"than their spread {spread:.4f}: not resolved by these seeds")
    return notes


def protocol_text(rows: list[dict]) -> str:
    """The evaluation protocol to print above a table, from the runs' ``protocol`` sections.

    The protocol name, selection rule and reported metrics first, then every other entry;
    where runs disagree it says so and names the runs per value. Ends with both Δm variants.
    """
    from xtc.metrics import DELTA_M_CONVENTION

    if not rows:
        return "Protocol: no runs."
    present = {k for r in rows for k in (r.get("protocol") or {}) if k != "seed"}
    keys = list(PROTOCOL_FIRST) + sorted(present - set(PROTOCOL_FIRST))
    lines = [f"Protocol ({len(rows)} runs):"]
    for k in keys:
        values: dict[str, list[str]] = {}
        for r in rows:
            value = (protocol_name(r) if k == "name"
                     else (r.get("protocol") or {}).get(k, "(not recorded)"))
            values.setdefault(str(value), []).append(r["name"])
        label = "protocol name" if k == "name" else k
        if len(values) == 1:
            lines.append(f"- {label}: {next(iter(values))}")
        else:
            lines.append(f"- {label}: RUNS DISAGREE: " + "; ".join(
                f"{v} ({', '.join(names)})" for v, names in values.items()))
    if len(by_protocol(rows)) > 1:
        lines.append("- several protocols: each has its own table and STL baselines; "
                     "side_by_side shows them together, never ranked across protocols")
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    lines.append(f"- seeds: {', '.join(map(str, seeds)) or '(not recorded)'}; "
                 f"tables show mean ± sample std over seeds (n)")
    from xtc.tasks import delta_m_metrics

    trained = [t for t in delta_m_metrics() if t in table_metrics_tasks(rows)]
    base = ", ".join(f"stl-{t} for {'/'.join(delta_m_metrics()[t])}" for t in trained)
    lines.append(f"- Δm (metric-weighted and task-weighted columns): {DELTA_M_CONVENTION} "
                 f"Baselines: {base}, of the same protocol.")
    return "\n".join(lines)


def plot_tradeoff(groups: list[dict], seg: str = "miou", depth: str = "abs_err",
                  group_by: Iterable[str] = ("method", "cross_task"),
                  depth_units: str | None = None):
    """Scatter of seg vs depth metric per group with ±std error bars (matplotlib Figure).

    Axes name the metric, its unit (:func:`metric_unit`; ``depth_units`` for abs err, e.g.
    from :func:`depth_units`) and the better direction; legend entries are
    :func:`group_label` words with n. Groups of ONE protocol (a scatter is a comparison):
    else ValueError.
    """
    import matplotlib.pyplot as plt

    proto = check_one_protocol(groups, "plot_tradeoff")
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for g in groups:
        if seg in g["mean"] and depth in g["mean"]:
            ax.errorbar(g["mean"][depth], g["mean"][seg], xerr=g["std"][depth],
                        yerr=g["std"][seg], fmt="o", capsize=3,
                        label=f"{group_label(g, group_by)} (n={g['n']})")
    ax.set_xlabel(f"{LABELS.get(depth, depth)}, {metric_unit(depth, depth_units)} "
                  f"(lower is better)")
    ax.set_ylabel(f"{LABELS.get(seg, seg)}, {metric_unit(seg, depth_units)} (higher is better)")
    ax.set_title(f"seg vs depth: mean ± sample std over seeds ({proto or 'no'} protocol)",
                 fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no run has both tasks", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- units and headers
def _units() -> dict[str, str]:
    """metric -> unit from the task registry (abs_err's "depth unit": the runs' units)."""
    from xtc.tasks import TASKS

    return {m.name: m.unit for _, m in TASKS.all_metrics() if m.unit != "depth unit"}


def depth_units(rows: Iterable[dict]) -> str:
    """The runs' depth units (``protocol["depth_units"]``): one value, or ``units differ: ...``
    naming each with its run count, or ``units not recorded``."""
    counts: dict[str, int] = {}
    for r in rows:
        u = ((r.get("protocol") or {}).get("depth_units")
             if isinstance(r.get("protocol"), dict) else None)
        if u is not None:
            counts[str(u)] = counts.get(str(u), 0) + 1
    if not counts:
        return "units not recorded"
    if len(counts) == 1:
        return next(iter(counts))
    return "units differ: " + ", ".join(f"{u} ({n} run{'s' * (n != 1)})" for u, n in counts.items())


def metric_unit(metric: str, depth_units: str | None = None) -> str:
    """``fraction`` (mIoU, pixel acc: 0-1, not %), ``ratio`` (rel err = mean |p-t|/t), the depth
    units for abs err (``depth units`` when not given)."""
    if metric == "abs_err":
        return depth_units or "depth units"
    return _units().get(metric, "")


def metric_header(metric: str, depth_units: str | None = None) -> str:
    """``mIoU (fraction) ↑``, ``abs err (inverse depth) ↓``: name, unit, better direction."""
    from xtc.metrics import higher_is_better

    unit = metric_unit(metric, depth_units)
    arrow = "↑" if higher_is_better(metric) else "↓"
    return f"{LABELS.get(metric, metric)}{f' ({unit})' if unit else ''} {arrow}"


DM_HEADERS = {DM_METRIC: "Δm% metric-wt (vs STL) ↓", DM_TASK: "Δm% task-wt (vs STL) ↓"}


def report_table(groups: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                 metrics: Iterable[str] | None = None, depth_units: str | None = None,
                 digits: int = 4) -> list[dict]:
    """:func:`comparison_table` for a reader: the group in words (:func:`group_label`) as the
    first column, seeds, and headers with units and ↑/↓ (:func:`metric_header`). ONE protocol."""
    group_by, metrics = tuple(group_by), _metrics(metrics, groups)
    plain = comparison_table(groups, group_by, metrics, digits)
    heads = {LABELS.get(m, m): metric_header(m, depth_units) for m in metrics}
    out = []
    for g, row in zip(groups, plain):
        new = {"runs": group_label(g, group_by), "n": row["n"],
               "seeds": ", ".join(map(str, g.get("seeds") or [])) or "(not recorded)"}
        new.update({heads[LABELS.get(m, m)]: row[LABELS.get(m, m)] for m in metrics})
        new.update({DM_HEADERS[k]: row[k] for k in (DM_METRIC, DM_TASK)})
        out.append(new)
    return out


# --------------------------------------------------------------------------- significance
QUANTITIES = ("delta_m", "delta_m_task")  # then the metrics
Q_LABELS = {"delta_m": "Δm% metric-wt", "delta_m_task": "Δm% task-wt"}


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact permutation test can give with n_a vs n_b runs:
    2 / C(n_a + n_b, n_a) for equal sizes (the split and its mirror), else 1 / C(...)."""
    total = math.comb(n_a + n_b, n_a)
    return min(1.0, (2 if n_a == n_b else 1) / total)


def _with_values(rows: list[dict], group_by: tuple, metrics: tuple) -> list[tuple[dict, dict]]:
    """Groups of ONE protocol, each with its per-run values: every metric, and the per-run
    Δm% (metric- and task-weighted) over the metrics its group's Δm uses (``dm_over``)."""
    from xtc.metrics import delta_m, delta_m_task

    check_one_protocol(rows, "significance")
    base = baselines(rows)
    out = []
    for g in aggregate(rows, group_by, metrics):
        key = tuple(g.get(f) for f in group_by)
        members = [r for r in rows if tuple(_key(r, f) for f in group_by) == key
                   and (r.get("tasks") or PAPER_TASKS) == g["tasks"]]
        values = {m: [r["metrics"][m] for r in members if m in r["metrics"]] for m in metrics}
        common = tuple(m for m in g["mean"] if m in base)
        if common and not str(g.get("method")).startswith("stl-"):
            runs = [r for r in members if any(m in r["metrics"] for m in common)]
            for q, fn in (("delta_m", delta_m), ("delta_m_task", delta_m_task)):
                values[q] = [fn({m: r["metrics"][m] for m in common if m in r["metrics"]}, base)
                             for r in runs]
        out.append((g, {q: v for q, v in values.items() if v}, common))
    return out


def _test_pair(a: tuple, b: tuple, quantities: tuple) -> dict:
    from xtc.analysis.significance import permutation_test

    (ga, va, dm_a), (gb, vb, dm_b) = a, b
    tests = {}
    for q in quantities:
        # Δm over the same metrics
        if q in va and q in vb and (q not in QUANTITIES or dm_a == dm_b):
            tests[q] = permutation_test(va[q], vb[q])
    return {"a": ga, "b": gb, "tests": tests,
            "smallest_p": smallest_p(ga["n"], gb["n"])}


def significance(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                 metrics: Iterable[str] | None = None) -> list[dict]:
    """Every pair of groups (of ONE protocol) that shares a quantity: ``{"a", "b" (groups),
    "tests": {quantity: permutation_test result}, "smallest_p"}``. Quantities: the per-run
    Δm% (``delta_m``, ``delta_m_task``; only between groups whose Δm uses the same metrics,
    so never for the STL groups) and each metric. Tests are exact two-sided permutation tests
    of the per-run values (:func:`xtc.analysis.significance.permutation_test`), uncorrected for the
    number of pairs."""
    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    rows = list(rows)
    have = _with_values(rows, group_by, metrics) if rows else []
    out = []
    for i, a in enumerate(have):
        for b in have[i + 1:]:
            pair = _test_pair(a, b, QUANTITIES + metrics)
            if pair["tests"]:
                out.append(pair)
    return out


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def significance_table(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                       metrics: Iterable[str] | None = None,
                       depth_units: str | None = None) -> list[dict]:
    """:func:`significance` as ONE compact display matrix: a row per pair of groups (A, B, n,
    the smallest p those n allow), a column per quantity with ``p=…, d=…`` (Cohen's d of A
    minus B; the header's ↑/↓ says which sign is better) and ``✓`` where p < 0.05; empty
    where the pair does not share the quantity."""
    from xtc.analysis.significance import ALPHA

    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    heads = {**{q: f"{Q_LABELS[q]} ↓" for q in QUANTITIES},
             **{m: metric_header(m, depth_units) for m in metrics}}
    table = []
    for pair in significance(rows, group_by, metrics):
        a, b = pair["a"], pair["b"]
        row = {"A": group_label(a, group_by), "B": group_label(b, group_by),
               "n (A vs B)": f"{a['n']} vs {b['n']}", "smallest possible p": _p(pair["smallest_p"])}
        for q in QUANTITIES + metrics:
            t = pair["tests"].get(q)
            if t is None:
                row[heads[q]] = ""
                continue
            d = "n/a" if t["d"] is None else f"{t['d']:+.2f}"
            row[heads[q]] = f"p={_p(t['p'])}, d={d}" + (" ✓" if t["p"] < ALPHA else "")
        table.append(row)
    return table


def verdict(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
            metrics: Iterable[str] | None = None) -> str:
    """A paragraph per protocol, in words: which group has the best (lowest) metric- and
    task-weighted Δm%, and whether its differences against mtl, the λ=0 / detached controls
    and the runner-up are resolved by the seeds (exact permutation test of per-run Δm% and
    of each metric, p < 0.05), saying plainly where they are not and the smallest p the seed
    counts allow. Nothing is compared across protocols."""
    from xtc.analysis.significance import ALPHA

    group_by, metrics = tuple(group_by), _metrics(metrics, rows)
    rows = list(rows)
    if not rows:
        return "No runs: nothing to compare."
    parts = by_protocol(rows)
    paras = []
    for proto, proto_rows in parts.items():
        prefix = f"Protocol {proto}: " if len(parts) > 1 else ""
        have = _with_values(proto_rows, group_by, metrics)
        ranked = [h for h in have if h[0]["delta_m"] is not None
                  and not str(h[0].get("method")).startswith("stl-")]
        if not ranked:
            paras.append(prefix + "no Δm: these runs have no multi-task group with stl-seg and "
                         "stl-depth baselines of this protocol, so there is no ranking to state.")
            continue
        label = lambda h: group_label(h[0], group_by)  # noqa: E731
        dm = lambda g, k: f"{g[k]:+.2f} ± {g[k + '_std']:.2f}" if g["n"] > 1 else f"{g[k]:+.2f}"  # noqa: E731
        best = min(ranked, key=lambda h: (h[0]["delta_m"], label(h)))
        best_task = min(ranked, key=lambda h: (h[0]["delta_m_task"], label(h)))
        g = best[0]
        text = [f"Best metric-weighted Δm%: {label(best)} ({dm(g, 'delta_m')} %, n={g['n']}"
                f"{'' if g['n'] > 1 else ', one run: its spread is unknown'})"]
        if best_task is best:
            text[0] += f"; it also has the best task-weighted Δm% ({dm(g, 'delta_m_task')} %)."
        else:
            gt = best_task[0]
            text[0] += (f"; best task-weighted Δm%: {label(best_task)} "
                        f"({dm(gt, 'delta_m_task')} %, n={gt['n']}): the two weightings disagree "
                        f"on the winner.")
        refs = [h for h in have if h[0].get("method") == "mtl"]
        refs += [h for h in have if control_kind(h[0])]
        others = sorted((h for h in ranked if h is not best),
                        key=lambda h: (h[0]["delta_m"], label(h)))
        refs += others[:1]
        seen = []
        for h in refs:
            if h is best or any(h is s for s in seen):
                continue
            seen.append(h)
            role = ("mtl" if h[0].get("method") == "mtl" else
                    f"the {control_kind(h[0])} control" if control_kind(h[0]) else "the runner-up")
            pair = _test_pair(best, h, QUANTITIES + metrics)
            who = f"mtl (n={h[0]['n']})" if role == "mtl" else f"{role} ({label(h)}, n={h[0]['n']})"
            text.append(_against(pair, who, metrics, ALPHA))
        if not seen:
            text.append("There is no mtl, control or second multi-task group to test it against.")
        paras.append(prefix + " ".join(text))
    paras.append("Tests: exact two-sided permutation tests of per-run values (Δm% and each "
                 "metric), resolved = p < 0.05, d = Cohen's d of the best group minus the other; "
                 "no correction for the several comparisons made here.")
    return "\n\n".join(paras)


def _d(t: dict) -> str:
    return "" if t["d"] is None else f", d={t['d']:+.2f}"


def _against(pair: dict, who: str, metrics: tuple, alpha: float) -> str:
    names = {**Q_LABELS, **{m: LABELS.get(m, m) for m in metrics}}
    n_a, n_b = pair["a"]["n"], pair["b"]["n"]
    floor = pair["smallest_p"]
    tests = pair["tests"]
    if not tests:
        return f"Against {who}: no quantity in common to test."
    done = [f"{names[q]} (p={_p(t['p'])}{_d(t)})" for q, t in tests.items() if t["p"] < alpha]
    open_ = [f"{names[q]} (p={_p(t['p'])})" for q, t in tests.items() if t["p"] >= alpha]
    out = f"Against {who}: "
    if done:
        out += "resolved for " + ", ".join(done) + ("; " if open_ else ".")
    if open_:
        out += (f"not resolved by {n_a} vs {n_b} seeds for " + ", ".join(open_)
                + f" (smallest possible p with {n_a} vs {n_b} is {_p(floor)}"
                + (f", so {n_a} vs {n_b} seeds can never reach p < {alpha:g})."
                   if floor >= alpha else ")."))
    return out
