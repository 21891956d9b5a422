"""Figures for :mod:`xtc.analysis.alignment`: gradient cosine and consistency energy over training,
energy maps next to error maps (matplotlib), and the energy-vs-error table, for any task set
(one column per task the rows or maps have; two tasks: the paper's seg and depth).

matplotlib and IPython are imported inside the functions. Figures are closed before they are
returned, so a notebook cell that ends with the call shows them once.

Examples:
    >>> rows = [{"run": "a", "epoch": 0, "grad_cos_seg": 0.1, "grad_cos_depth": 0.2,
    ...          "energy": 1.0, "seg_energy": 1.0, "depth_energy": 1.0}]
    >>> len(plot_alignment_curves(rows).axes)
    4
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from xtc.viz.plots import figure
from xtc.viz.plots import finish as _finish
from xtc.viz.tables import table  # noqa: F401  (notebooks call alignment_plots.table)

PANELS = (("grad_cos_seg", "cos(∇L_seg, ∇L_seg2depth) on the encoder"),
          ("grad_cos_depth", "cos(∇L_depth, ∇L_depth2seg) on the encoder"),
          ("seg_energy", "val seg energy (KL, nats)"),
          ("depth_energy", "val depth energy (|s2d - d|)"))  # the two-task panels
# matplotlib colour maps of error and energy maps, shared with the explorer (xtc.viz.explorer)
ERROR_CMAP, ENERGY_CMAP = "Reds", "magma"
_TITLES = dict(PANELS)


def curve_panels(rows: Sequence[Mapping]) -> list[tuple[str, str, str]]:
    """``(column, title, y-axis label)`` of :func:`plot_alignment_curves`: per task of the
    rows (:func:`xtc.analysis.alignment.curve_tasks`), its gradient cosine (top row) and its
    validation energy (bottom row). Two tasks: the four :data:`PANELS`."""
    from xtc.analysis.alignment import curve_tasks
    from xtc.tasks import TASKS

    tasks = curve_tasks(rows)
    panels = []
    for t in tasks:
        key = f"grad_cos_{t}"
        panels.append((key, _TITLES.get(key, f"cos(∇L_{t}, ∇ mean L_{t}2*) on the encoder"),
                       "cosine (1 = same direction)"))
    for t in tasks:
        key = f"{t}_energy"
        unit = TASKS.get(t).energy_unit.replace("depth unit", "depth units")
        panels.append((key, _TITLES.get(key, f"val {t} energy ({unit})"),
                       f"energy ({unit})"))
    return panels


def plot_alignment_curves(rows: Sequence[Mapping], path: Union[str, Path, None] = None):
    """Rows of :func:`xtc.analysis.alignment.alignment_curves` -> 2 x T panels, one column per task:
    its gradient cosine (top; cos between the direct loss's gradient and the mean of its
    outgoing cross-task terms' on the shared encoder) and its validation consistency
    energy (bottom, mean over the transfers into it), against epoch, one line per run. Two
    tasks: the 2x2 panels of :data:`PANELS`."""

    panels = curve_panels(rows)
    ncols = max(len(panels) // 2, 1)
    fig = figure((4.5 * ncols, 5.5))
    axes = fig.subplots(2, ncols, squeeze=False)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for ax, (key, title, ylabel) in zip(axes.flat, panels):
        for run in runs:
            mine = [r for r in rows if r["run"] == run]
            ax.plot([r["epoch"] + 1 for r in mine], [r.get(key, np.nan) for r in mine],
                    marker="o", label=run)
        if key.startswith("grad_cos"):
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.title.set_fontsize(9)
        ax.yaxis.label.set_fontsize(8)
    if runs:
        axes[0][0].legend(title="run", fontsize=7, title_fontsize=7)
    return _finish(fig, path)


def map_columns(maps: Mapping[str, Mapping[str, np.ndarray]]
                ) -> list[tuple[str, str, Optional[str], str]]:
    """``(key, title, colour map, colour-bar label)`` of :func:`plot_energy_maps`: the image,
    then per task with an error and an energy map (registry order) its error and its
    energy."""
    from xtc.tasks import TASKS

    keys = set.intersection(*(set(m) for m in maps.values())) if maps else set()
    columns: list = [("image", "image", None, "")]
    titles = {"seg": ("seg error", "seg energy"), "depth": ("|depth error|", "depth energy"),
              "normal": ("normal angle error", "normal energy")}
    for t in TASKS.in_order():
        if f"{t}_error" in keys and f"{t}_energy" in keys:
            spec = TASKS.get(t)
            error_title, energy_title = titles.get(t, (f"{t} error", f"{t} energy"))
            columns.append((f"{t}_error", error_title, ERROR_CMAP,
                            spec.error_unit.replace("depth unit", "depth units")))
            columns.append((f"{t}_energy", energy_title, ENERGY_CMAP,
                            spec.energy_unit.replace("depth unit", "depth units")))
    return columns


def plot_energy_maps(maps: Mapping[str, Mapping[str, np.ndarray]], n: int = 2,
                     path: Union[str, Path, None] = None):
    """``{run: xtc.analysis.alignment.energy_maps(...)}`` -> one row per (run, image) with the image
    and, for every task (:func:`map_columns`; two tasks: seg and depth), its error and its
    energy (grey = ignored/invalid), each with a labelled colour bar. Energy and error of a
    task sit side by side so their overlap can be seen at a glance."""
    import matplotlib.pyplot as plt

    columns = map_columns(maps)
    items = [(run, i) for run, m in maps.items() for i in range(min(n, len(m["image"])))]
    fig = figure((2.2 * len(columns), 2.1 * len(items)))
    axes = fig.subplots(len(items), len(columns), squeeze=False)
    for row, (run, i) in zip(axes, items):
        for ax, (key, title, cmap, unit) in zip(row, columns):
            if cmap is None:
                ax.imshow(np.clip(maps[run][key][i], 0, 1))
            else:
                colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
                shown = ax.imshow(np.ma.masked_invalid(maps[run][key][i]), cmap=colours)
                bar = fig.colorbar(shown, ax=ax, shrink=0.75)
                bar.set_label(unit, fontsize=6)
                bar.ax.tick_params(labelsize=6)
            ax.set_title(f"{run} #{i}: {title}" if key == "image" else title, fontsize=8)
            ax.set_axis_off()
    return _finish(fig, path)
