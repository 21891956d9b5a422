"""Figures of the gradient statistics a run logs with ``train.grad_stats_every`` (the
``train_gstat_*`` keys of its per-epoch history;
:func:`xtc.losses.aggregation.gradient_statistics`):
how the objectives' gradients on the shared encoder conflict over training, and how the
applied update direction sits against each of them, one row of panels per run.

* conflict fraction: the share of objective pairs whose gradients have a negative cosine;
* pairwise cosines, by kind of pair: direct vs direct (two tasks' losses, or task groups with
  ``loss.objectives=tasks``), a direct loss vs *its own* cross-task term (L_a vs L_a2b: the
  paper's claim is that this is positive), a direct loss vs another task's cross-task term
  (L_a vs L_b2c, which trains b's decoder), and cross-task vs cross-task;
* direction cosines: cos(update direction, objective k's gradient); negative means the step
  increases objective k (to first order).

Every value is the per-epoch value the history holds (the mean over that epoch's logged
steps). matplotlib and plotly are imported inside the functions; figures are returned for
display, matplotlib ones saved as PNG when given a path.

Examples:
    >>> history = [{"epoch": e, "train_gstat_conflict_fraction": 0.5 - 0.1 * e,
    ...             "train_gstat_cos_seg_vs_depth": -0.2, "train_gstat_cos_seg_vs_seg2depth": 0.4,
    ...             "train_gstat_cos_depth_vs_seg2depth": 0.1,
    ...             "train_gstat_dircos_seg": 0.7, "train_gstat_dircos_depth": 0.5,
    ...             "train_gstat_dircos_seg2depth": 0.6} for e in range(2)]
    >>> rows = gradient_rows({"upgrad, terms": history})
    >>> rows[1]["conflict_fraction"], pair_kind("seg", "seg2depth")
    (0.4, 'direct vs its own cross-task term')
    >>> fig = plot_gradient_conflict(rows)
    >>> len(fig.axes)
    3
    >>> summary_rows(rows)[0]["mean cos, direct vs its own cross-task term"]
    0.4
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from xtc.viz.plots import figure
from xtc.viz.plots import finish as _finish
from xtc.viz.tables import table  # noqa: F401  (notebooks call gradient_plots.table)

PREFIX = "train_gstat_"
KINDS = ("direct vs direct", "direct vs its own cross-task term",
         "direct vs another task's cross-task term", "cross-task vs cross-task")
KIND_COLORS = dict(zip(KINDS, ("tab:blue", "tab:green", "tab:orange", "tab:purple")))
PANEL_TITLES = ("share of objective pairs in conflict",
                "cosine between objective gradients",
                "cosine of the update with each objective")
Y_LABELS = ("pairs with cos < 0 (fraction, 0-1)", "cosine (unitless, -1 to 1)",
            "cosine (unitless, -1 to 1)")
X_LABEL = "epoch (mean of its logged steps)"


def _split_edge(name: str) -> Optional[tuple[str, str]]:
    """``seg2depth`` -> ``("seg", "depth")``; None for a task (or task group) name."""
    from xtc.tasks import is_edge, split_edge

    return split_edge(name) if is_edge(name) else None


def pair_kind(a: str, b: str) -> str:
    """The kind (one of :data:`KINDS`) of the objective pair ``a``, ``b``."""
    ea, eb = _split_edge(a), _split_edge(b)
    if ea is None and eb is None:
        return KINDS[0]
    if ea is not None and eb is not None:
        return KINDS[3]
    task, edge = (a, eb) if ea is None else (b, ea)
    return KINDS[1] if edge[0] == task else KINDS[2]


def has_gradient_stats(history: Sequence[Mapping]) -> bool:
    """Whether any epoch of ``history`` holds ``train_gstat_*`` values."""
    return any(str(k).startswith(PREFIX) for rec in history for k in rec)


def gradient_rows(histories: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """Tidy rows from ``{run label: history}``: per run and epoch, ``run``, ``epoch`` and the
    statistics without their ``train_gstat_`` prefix (``conflict_fraction``,
    ``gramian_cond``, ``cos_<a>_vs_<b>``, ``dircos_<k>``, ``norm_<k>``). Epochs that logged
    none are left out."""
    rows = []
    for run, history in histories.items():
        for rec in history:
            stats = {k[len(PREFIX):]: float(v) for k, v in rec.items()
                     if str(k).startswith(PREFIX) and isinstance(v, (int, float))
                     and not isinstance(v, bool)}
            if stats:
                rows.append({"run": run, "epoch": int(rec.get("epoch", len(rows))), **stats})
    return rows


def pairs(rows: Iterable[Mapping]) -> list[tuple[str, str]]:
    """The objective pairs ``(a, b)`` the rows hold a cosine for, in first-seen order."""
    seen = dict.fromkeys(k for r in rows for k in r if k.startswith("cos_") and "_vs_" in k)
    return [tuple(k[len("cos_"):].split("_vs_", 1)) for k in seen]


def objectives(rows: Iterable[Mapping]) -> list[str]:
    """The objectives the rows hold a direction cosine for, in first-seen order."""
    return [k[len("dircos_"):] for k in dict.fromkeys(
        k for r in rows for k in r if k.startswith("dircos_"))]


def _runs(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(r["run"] for r in rows))


def _by_kind(mine: Sequence[Mapping]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b in pairs(mine):
        out.setdefault(pair_kind(a, b), []).append(f"cos_{a}_vs_{b}")
    return {k: out[k] for k in KINDS if k in out}


def _series(mine: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r["epoch"] + 1 for r in mine], dtype=float),
            np.array([r.get(key, np.nan) for r in mine], dtype=float))


def plot_gradient_conflict(rows: Sequence[Mapping], path: Union[str, Path, None] = None):
    """One row of three panels per run (matplotlib, static; saved as PNG at ``path``):
    the conflict fraction, the pairwise cosines by kind of pair (line: the mean over the
    pairs of that kind; band: their range), and each objective's direction cosine, against
    epoch. A run without statistics gets an empty row that says so."""
    runs = _runs(rows) or ["no run"]
    fig = figure((13.5, 3.0 * len(runs) + 0.4))
    axes = fig.subplots(len(runs), 3, squeeze=False)
    for i, run in enumerate(runs):
        mine = [r for r in rows if r["run"] == run]
        ax_c, ax_p, ax_d = axes[i]
        x, y = _series(mine, "conflict_fraction")
        ax_c.plot(x, y, marker="o", color="tab:red", label="conflicting pairs")
        ax_c.set_ylim(-0.05, 1.05)
        for kind, keys in _by_kind(mine).items():
            values = np.array([_series(mine, k)[1] for k in keys])
            xs = _series(mine, keys[0])[0]
            color = KIND_COLORS[kind]
            ax_p.plot(xs, np.nanmean(values, axis=0), marker="o", color=color,
                      label=f"{kind} ({len(keys)} pair{'s' * (len(keys) > 1)})")
            if len(keys) > 1:
                ax_p.fill_between(xs, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                  color=color, alpha=0.15, lw=0)
        for k in objectives(mine):
            xs, ys = _series(mine, f"dircos_{k}")
            ax_d.plot(xs, ys, marker="o", ls="--" if _split_edge(k) else "-",
                      label=f"{k} ({'cross-task term' if _split_edge(k) else 'direct'})")
        for j, ax in enumerate(axes[i]):
            ax.set_xlabel(X_LABEL, fontsize=8)
            ax.set_ylabel(Y_LABELS[j], fontsize=8)
            ax.set_title(f"{run}: {PANEL_TITLES[j]}", fontsize=9)
            ax.tick_params(labelsize=7)
            if j:
                ax.axhline(0.0, color="grey", lw=0.8, ls=":")
                ax.set_ylim(-1.05, 1.05)
            if mine:
                ax.legend(fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "no gradient statistics logged\n(train.grad_stats_every=0)",
                        ha="center", va="center", fontsize=8, transform=ax.transAxes)
    return _finish(fig, path)


def plotly_figure(rows: Sequence[Mapping]):
    """The same panels as :func:`plot_gradient_conflict`, interactive (plotly: hover for the
    values, click a legend entry to hide it); every pair and objective is its own line."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    runs = _runs(rows) or ["no run"]
    titles = [f"{run}: {t}" for run in runs for t in PANEL_TITLES]
    fig = make_subplots(rows=len(runs), cols=3, subplot_titles=titles,
                        vertical_spacing=0.3 / len(runs))
    for i, run in enumerate(runs, start=1):
        mine = [r for r in rows if r["run"] == run]
        x, y = _series(mine, "conflict_fraction")
        fig.add_trace(go.Scatter(x=x, y=y, name="conflicting pairs", mode="lines+markers",
                                 line=dict(color="firebrick"), legendgroup=run), row=i, col=1)
        for a, b in pairs(mine):
            kind = pair_kind(a, b)
            x, y = _series(mine, f"cos_{a}_vs_{b}")
            fig.add_trace(go.Scatter(x=x, y=y, name=f"{a} vs {b} ({kind})", mode="lines+markers",
                                     line=dict(color=KIND_COLORS[kind].replace("tab:", "")),
                                     legendgroup=run), row=i, col=2)
        for k in objectives(mine):
            x, y = _series(mine, f"dircos_{k}")
            fig.add_trace(go.Scatter(x=x, y=y, name=f"update vs {k}", mode="lines+markers",
                                     line=dict(dash="dash" if _split_edge(k) else "solid"),
                                     legendgroup=run), row=i, col=3)
        for j, label in enumerate(Y_LABELS, start=1):
            fig.update_yaxes(title_text=label, row=i, col=j,
                             range=[-0.05, 1.05] if j == 1 else [-1.05, 1.05])
            fig.update_xaxes(title_text=X_LABEL, row=i, col=j)
    fig.update_layout(height=320 * len(runs) + 60, width=1300, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def show(rows: Sequence[Mapping], interactive: bool = False,
         path: Union[str, Path, None] = None):
    """What a notebook displays: the interactive plotly figure (kept offline in the HTML
    report, :func:`xtc.viz.offline`) when ``interactive`` and plotly imports, else the static
    matplotlib figure, the fallback. The matplotlib figure is saved at ``path`` either way."""
    static = plot_gradient_conflict(rows, path=path)
    if interactive:
        try:
            from xtc.viz.plots import offline

            return offline(plotly_figure(rows))
        except ImportError:
            pass
    return static


def summary_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Per run, over its logged epochs: the mean conflict fraction, the mean cosine of each
    kind of pair, the smallest direction cosine (and its objective) and the median Gramian
    condition number."""
    out = []
    for run in _runs(rows):
        mine = [r for r in rows if r["run"] == run]
        row = {"run": run, "epochs": len(mine),
               "mean conflict fraction": _mean(r.get("conflict_fraction") for r in mine)}
        for kind, keys in _by_kind(mine).items():
            row[f"mean cos, {kind}"] = _mean(r.get(k) for r in mine for k in keys)
        dircos = {k: _mean(r.get(f"dircos_{k}") for r in mine) for k in objectives(mine)}
        if dircos:
            worst = min(dircos, key=lambda k: dircos[k])
            row["smallest mean dircos"] = dircos[worst]
            row["objective with it"] = worst
        conds = [r["gramian_cond"] for r in mine if "gramian_cond" in r]
        row["median Gramian condition"] = float(np.median(conds)) if conds else None
        out.append(row)
    return out


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return round(float(np.mean(vals)), 4) if vals else None


def run_label(params: Mapping) -> str:
    """``upgrad, objectives=terms, seed 0`` from a results.json's flattened params."""
    agg = params.get("loss.aggregator", "none")
    mode = params.get("loss.objectives", "tasks")
    seed = params.get("train.seed")
    return f"{agg}, objectives={mode}" + (f", seed {seed}" if seed is not None else "")


def find_runs(runs_dir: Union[str, Path]) -> dict[str, str]:
    """``{label: run folder}`` of every run under ``runs_dir`` (recursively, hidden folders
    skipped) whose results.json history holds gradient statistics, labelled by
    :func:`run_label` (the folder name is added when two runs share a label)."""
    root = Path(runs_dir)
    found: dict[str, str] = {}
    for path in sorted(root.rglob("results.json")):
        if any(p.startswith(".") for p in path.relative_to(root).parts[:-1]):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not has_gradient_stats(doc.get("history") or []):
            continue
        label = run_label(doc.get("params") or {})
        if label in found:
            label = f"{label} ({path.parent.name})"
        found[label] = str(path.parent)
    return found
