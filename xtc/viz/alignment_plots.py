"""Figures for :mod:`xtc.alignment`: gradient cosine and consistency energy over training,
energy maps next to error maps (matplotlib), and the energy-vs-error table.

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
from typing import Mapping, Sequence, Union

import numpy as np

from xtc.viz.plots import figure
from xtc.viz.plots import finish as _finish
from xtc.viz.tables import table  # noqa: F401  (notebooks call alignment_plots.table)

PANELS = (("grad_cos_seg", "cos(∇L_seg, ∇L_seg2depth) on the encoder"),
          ("grad_cos_depth", "cos(∇L_depth, ∇L_depth2seg) on the encoder"),
          ("seg_energy", "val seg energy (KL, nats)"),
          ("depth_energy", "val depth energy (|s2d - d|)"))
# matplotlib colour maps of error and energy maps, shared with the explorer (xtc.viz.explorer)
ERROR_CMAP, ENERGY_CMAP = "Reds", "magma"


def plot_alignment_curves(rows: Sequence[Mapping], path: Union[str, Path, None] = None):
    """Rows of :func:`xtc.alignment.alignment_curves` -> 2x2 panels (the two gradient
    cosines, the two energies) against epoch, one line per run."""

    fig = figure((9, 5.5))
    axes = fig.subplots(2, 2)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for run in runs:
            mine = [r for r in rows if r["run"] == run]
            ax.plot([r["epoch"] + 1 for r in mine], [r.get(key, np.nan) for r in mine],
                    marker="o", label=run)
        if key.startswith("grad_cos"):
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set(title=title, xlabel="epoch")
        ax.title.set_fontsize(9)
    if runs:
        axes[0][0].legend(fontsize=7)
    return _finish(fig, path)


def plot_energy_maps(maps: Mapping[str, Mapping[str, np.ndarray]], n: int = 2,
                     path: Union[str, Path, None] = None):
    """``{run: xtc.alignment.energy_maps(...)}`` -> one row per (run, image) with the image,
    the seg error and seg energy, the depth error and depth energy (grey = ignored/invalid).
    Energy and error of a task share a row so their overlap can be seen at a glance."""
    import matplotlib.pyplot as plt

    columns = (("image", "image", None), ("seg_error", "seg error", ERROR_CMAP),
               ("seg_energy", "seg energy", ENERGY_CMAP),
               ("depth_error", "|depth error|", ERROR_CMAP),
               ("depth_energy", "depth energy", ENERGY_CMAP))
    items = [(run, i) for run, m in maps.items() for i in range(min(n, len(m["image"])))]
    fig = figure((2.2 * len(columns), 2.1 * len(items)))
    axes = fig.subplots(len(items), len(columns), squeeze=False)
    for row, (run, i) in zip(axes, items):
        for ax, (key, title, cmap) in zip(row, columns):
            if cmap is None:
                ax.imshow(np.clip(maps[run][key][i], 0, 1))
            else:
                colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
                shown = ax.imshow(np.ma.masked_invalid(maps[run][key][i]), cmap=colours)
                fig.colorbar(shown, ax=ax, shrink=0.75)
            ax.set_title(f"{run} #{i}: {title}" if key == "image" else title, fontsize=8)
            ax.set_axis_off()
    return _finish(fig, path)
