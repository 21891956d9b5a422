"""Aggregate finished runs (their results.json files) into comparison tables.

Pure data in, data out: no notebook or papermill imports, no pandas. 90_summary, the
reports index and tests use it. A *row* is one run; a *group* is the runs that share the
``group_by`` values (normally ``method`` and ``cross_task``), reported as mean ± sample std
over seeds with n. Δm% is computed against the single-task runs found among the rows
(``stl-seg`` gives miou/pixel_acc, ``stl-depth`` gives abs_err/rel_err, each the mean over
its seeds) with :data:`xtc.metrics.DELTA_M_CONVENTION` (lower is better).

Example:
    >>> rows = [{"name": "a", "method": "mtl", "cross_task": "-", "seed": 0, "metrics": {"miou": 0.5}},
    ...         {"name": "b", "method": "mtl", "cross_task": "-", "seed": 1, "metrics": {"miou": 0.7}}]
    >>> g = aggregate(rows)[0]
    >>> round(g["mean"]["miou"], 3), round(g["std"]["miou"], 3), g["n"]
    (0.6, 0.141, 2)
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

from xtc.results import FILENAME

METRICS = ("miou", "pixel_acc", "abs_err", "rel_err")
LABELS = {"miou": "mIoU", "pixel_acc": "pixel acc", "abs_err": "abs err", "rel_err": "rel err"}
SEG_BASELINE, DEPTH_BASELINE = "stl-seg", "stl-depth"
SEG_METRICS, DEPTH_METRICS = ("miou", "pixel_acc"), ("abs_err", "rel_err")
# Short names a row carries, and the results.json params they come from.
FIELDS = {"method": "model.method", "cross_task": "loss.cross_task", "seed": "train.seed",
          "lambda1": "loss.lambda1", "lambda2": "loss.lambda2", "weighting": "loss.weighting",
          "dataset": "data.name"}


# --------------------------------------------------------------------------- rows
def collect(source: str | Path | Iterable[str | Path], split: str = "test") -> list[dict]:
    """One row per run that has a results.json with ``metrics[split]``.

    ``source`` is a folder (searched recursively for results.json) or a list of run
    folders / results.json paths. Analysis outputs (no ``metrics[split]``) are skipped.
    A row holds ``name``, ``run_dir``, the :data:`FIELDS` (cross_task is ``"-"`` for
    methods without cross-task terms), ``metrics`` (that split, numbers only),
    ``params``, ``protocol`` and ``wall_time_s``.
    """
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise FileNotFoundError(f"runs folder {root} does not exist; train runs first "
                                    f"(notebooks/02_train.ipynb or `xtc sweep FILE`)")
        paths = sorted(root.rglob(FILENAME)) if root.is_dir() else [root]
    else:
        paths = [Path(p) / FILENAME if Path(p).is_dir() else Path(p) for p in source]
    rows = []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written or foreign file is not a run
        metrics = (doc.get("metrics") or {}).get(split)
        if not isinstance(metrics, dict):
            continue
        rows.append(row_from_results(doc, path.parent, split))
    return rows


def row_from_results(doc: dict, run_dir: str | Path, split: str = "test") -> dict:
    """The row for one parsed results.json (see :func:`collect`)."""
    params = doc.get("params") or {}
    row: dict[str, Any] = {"name": Path(run_dir).name, "run_dir": str(run_dir)}
    for short, key in FIELDS.items():
        row[short] = params.get(key, params.get(short))
    if row["method"] not in (None, "xtc"):
        row["cross_task"] = "-"  # the setting exists in every config but only xtc uses it
    metrics = (doc.get("metrics") or {}).get(split) or {}
    row["metrics"] = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
    row.update(params=params, protocol=doc.get("protocol") or {},
               wall_time_s=doc.get("wall_time_s"))
    return row


# --------------------------------------------------------------------------- groups
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _key(row: dict, field: str) -> Any:
    return row[field] if field in row else row.get("params", {}).get(field)


def baselines(rows: list[dict]) -> dict[str, float]:
    """STL baselines: seg metrics from ``stl-seg``, depth metrics from ``stl-depth`` (seed means)."""
    out = {}
    for method, names in ((SEG_BASELINE, SEG_METRICS), (DEPTH_BASELINE, DEPTH_METRICS)):
        for m in names:
            values = [r["metrics"][m] for r in rows if r["method"] == method and m in r["metrics"]]
            if values:
                out[m] = sum(values) / len(values)
    return out


def aggregate(rows: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
              metrics: Iterable[str] = METRICS) -> list[dict]:
    """Groups with ``n``, ``seeds``, ``mean``/``std`` per metric and Δm% vs the STL rows.

    ``delta_m`` is Δm% of the group's means against :func:`baselines`; ``delta_m_std`` the
    sample std of the per-run Δm%. Both are None when no STL run covers the group's metrics.
    """
    from xtc.metrics import delta_m

    group_by, metrics = tuple(group_by), tuple(metrics)
    base = baselines(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(_key(row, f) for f in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        group = {**dict(zip(group_by, key)), "n": len(members),
                 "seeds": sorted({r["seed"] for r in members if r.get("seed") is not None}),
                 "runs": [r["name"] for r in members], "mean": {}, "std": {},
                 "delta_m": None, "delta_m_std": None}
        for m in metrics:
            values = [r["metrics"][m] for r in members if m in r["metrics"]]
            if values:
                group["mean"][m], group["std"][m] = _mean_std(values)
        common = {m: v for m, v in group["mean"].items() if m in base}
        if common:
            group["delta_m"] = delta_m(common, base)
            per_run = [delta_m({m: r["metrics"][m] for m in common if m in r["metrics"]}, base)
                       for r in members if any(m in r["metrics"] for m in common)]
            group["delta_m_std"] = _mean_std(per_run)[1]
        out.append(group)
    order = {SEG_BASELINE: 0, DEPTH_BASELINE: 1, "mtl": 2, "xtc": 3}
    return sorted(out, key=lambda g: (order.get(g.get("method"), 9), str(list(g.values())[:len(group_by)])))


def group_label(group: dict, group_by: Iterable[str] = ("method", "cross_task")) -> str:
    """``xtc/consistency``, ``mtl``: the group's values, ``-`` entries left out."""
    return "/".join(str(group[f]) for f in group_by if group.get(f) not in (None, "-"))


# --------------------------------------------------------------------------- display
def comparison_table(groups: list[dict], group_by: Iterable[str] = ("method", "cross_task"),
                     metrics: Iterable[str] = METRICS, digits: int = 4) -> list[dict]:
    """Display rows (strings): group columns, n, ``mean ± std`` per metric (mean alone for
    one run), Δm% vs STL."""
    group_by = tuple(group_by)
    table = []
    for g in groups:
        row = {f: str(g.get(f)) for f in group_by}
        row["n"] = str(g["n"])
        for m in metrics:
            if m not in g["mean"]:
                row[LABELS.get(m, m)] = ""
                continue
            spread = f" ± {g['std'][m]:.{digits}f}" if g["n"] > 1 else ""  # one run: no spread
            row[LABELS.get(m, m)] = f"{g['mean'][m]:.{digits}f}{spread}"
        spread = f" ± {g['delta_m_std']:.2f}" if g["n"] > 1 and g["delta_m_std"] is not None else ""
        row["Δm% vs STL (lower better)"] = "" if g["delta_m"] is None else f"{g['delta_m']:+.2f}{spread}"
        table.append(row)
    return table


def to_markdown(table: list[dict]) -> str:
    """A GitHub-flavoured markdown table (``_no runs_`` when empty)."""
    if not table:
        return "_no runs_"
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in table]
    return "\n".join(lines)


def to_html(table: list[dict]) -> str:
    """An HTML ``<table>`` (escaped; ``<p>no runs</p>`` when empty)."""
    if not table:
        return "<p>no runs</p>"
    cols = list(table[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols)
                   + "</tr>" for r in table)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overlap_notes(groups: list[dict], metrics: Iterable[str] = METRICS,
                  group_by: Iterable[str] = ("method", "cross_task")) -> list[str]:
    """Notes where two groups' means differ by less than their spread (|Δmean| < std_a + std_b).

    Such a difference is not resolved by these seeds; groups with one run get a note that
    their spread is unknown.
    """
    group_by = tuple(group_by)
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

    Lists every protocol entry; where runs disagree it says so and names the runs per value.
    """
    from xtc.metrics import DELTA_M_CONVENTION

    if not rows:
        return "Protocol: no runs."
    keys = sorted({k for r in rows for k in r["protocol"] if k != "seed"})
    lines = [f"Protocol ({len(rows)} runs):"]
    for k in keys:
        values: dict[str, list[str]] = {}
        for r in rows:
            values.setdefault(str(r["protocol"].get(k, "(not recorded)")), []).append(r["name"])
        if len(values) == 1:
            lines.append(f"- {k}: {next(iter(values))}")
        else:
            lines.append(f"- {k}: RUNS DISAGREE: " + "; ".join(
                f"{v} ({', '.join(names)})" for v, names in values.items()))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    lines.append(f"- seeds: {', '.join(map(str, seeds)) or '(not recorded)'}; "
                 f"tables show mean ± sample std over seeds (n)")
    lines.append(f"- Δm: {DELTA_M_CONVENTION} Baselines: {SEG_BASELINE} for "
                 f"{'/'.join(SEG_METRICS)}, {DEPTH_BASELINE} for {'/'.join(DEPTH_METRICS)}.")
    return "\n".join(lines)


def plot_tradeoff(groups: list[dict], seg: str = "miou", depth: str = "abs_err",
                  group_by: Iterable[str] = ("method", "cross_task")):
    """Scatter of seg vs depth metric per group with ±std error bars (matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for g in groups:
        if seg in g["mean"] and depth in g["mean"]:
            ax.errorbar(g["mean"][depth], g["mean"][seg], xerr=g["std"][depth],
                        yerr=g["std"][seg], fmt="o", capsize=3, label=group_label(g, group_by))
    ax.set_xlabel(f"{LABELS.get(depth, depth)} (lower is better)")
    ax.set_ylabel(f"{LABELS.get(seg, seg)} (higher is better)")
    ax.set_title("seg vs depth, mean ± std over seeds")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has both tasks", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
