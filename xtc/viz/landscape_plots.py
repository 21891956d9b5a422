"""Figures for :mod:`xtc.analysis.landscape`: 1-D curves and 2-D contours (matplotlib, for reports),
3-D surfaces (plotly ``go.Surface``, interactive), and small HTML tables. One panel per loss
term the criterion returned, for any task set (every ``<task>``, every edge ``<a>2<b>`` and
``total``, ordered by :func:`term_order`).

matplotlib, plotly and IPython are imported inside the functions. Matplotlib figures are
closed before they are returned, so a notebook cell that ends with the call shows them once.

Examples:
    >>> import numpy as np
    >>> from xtc.analysis.landscape import Curve
    >>> curve = Curve(np.linspace(0, 1, 3), {"total": np.array([1.0, 2.0, 1.5])})
    >>> fig = plot_curves({"a->b": curve})
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from xtc.analysis.landscape import term_order  # noqa: F401  (re-exported: plots and notebooks)
from xtc.viz.plots import figure
from xtc.viz.plots import finish as _finish
from xtc.viz.tables import table  # noqa: F401  (notebooks call landscape_plots.table)

TERM_ORDER = ("seg", "depth", "seg2depth", "depth2seg", "total")  # the two-task terms


def term_label(term: str, sep: str = "\n") -> str:
    """Words for a loss term on a plot, the term then what it is (``sep`` between them):
    ``"seg\n(cross-entropy (nats))"``, ``"seg2depth\n(transferred → depth)"``,
    ``"total\n(fixed weights)"``.

    >>> term_label("normal2depth", " ")
    'normal2depth (transferred → depth)'
    """
    from xtc.tasks import TASKS, split_edge

    what = ""
    if term == "total":
        what = "fixed weights"
    elif term in TASKS:
        what = TASKS.get(term).loss_term_unit
    else:
        try:
            a, b = split_edge(term)
            what = f"transferred → {b}" if a in TASKS and b in TASKS else ""
        except ValueError:
            pass
    return f"{term}{sep}({what})" if what else term


def _terms(landscapes: Mapping, terms: Optional[Sequence[str]]) -> list[str]:
    present = {t for ls in landscapes.values() for t in ls.losses}
    if terms is not None:
        missing = [t for t in terms if t not in present]
        if missing:
            raise ValueError(f"terms {missing} were not computed; available: {term_order(present)}")
        return list(terms)
    return term_order(present)


def _as_mapping(landscapes) -> dict:
    return dict(landscapes) if isinstance(landscapes, Mapping) else {"": landscapes}


def plot_curves(curves, terms: Optional[Sequence[str]] = None,
                path: Union[str, Path, None] = None):
    """One panel per loss term, one line per curve (``{label: Curve}`` or a single Curve);
    dotted verticals at alpha = 0 and 1 (the two checkpoints of an interpolation)."""

    curves = _as_mapping(curves)
    terms = _terms(curves, terms)
    fig = figure((3.2 * len(terms), 3))
    axes = fig.subplots(1, len(terms), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for label, curve in curves.items():
            if term in curve.losses:
                ax.plot(curve.alpha, curve.losses[term], marker="o", ms=3, label=label or None)
        for a in (0.0, 1.0):
            ax.axvline(a, color="grey", lw=0.8, ls=":")
        ax.set(title=term_label(term), xlabel="alpha (0: run a, 1: run b)", ylabel="loss")
        ax.title.set_fontsize(8)
    if any(curves):
        axes[0][-1].legend(fontsize=7)
    return _finish(fig, path)


def plot_contours(surfaces, terms: Optional[Sequence[str]] = None, levels: int = 15,
                  path: Union[str, Path, None] = None):
    """Filled contours: one row per surface (``{label: Surface}``), one column per term; the
    checkpoint (0, 0) is marked; levels are log-spaced for a term whose loss spans more than a
    factor of 20. Saved as PNG to ``path`` when given (for reports)."""

    surfaces = _as_mapping(surfaces)
    terms = _terms(surfaces, terms)
    fig = figure((2.8 * len(terms), 2.6 * len(surfaces)))
    axes = fig.subplots(len(surfaces), len(terms), squeeze=False)
    for row, (label, surf) in zip(axes, surfaces.items()):
        for ax, term in zip(row, terms):
            if term not in surf.losses:
                ax.set_axis_off()
                continue
            z = surf.losses[term]
            lv, norm = _levels(z, levels)
            filled = ax.contourf(surf.x, surf.y, z, levels=lv, norm=norm, cmap="viridis")
            ax.contour(surf.x, surf.y, z, levels=lv, norm=norm, colors="k", linewidths=0.3)
            ax.plot([0], [0], "r+", ms=8)
            bar = fig.colorbar(filled, ax=ax, shrink=0.8, format="%.3g")
            bar.set_label("loss", fontsize=7)
            bar.ax.tick_params(labelsize=7)
            bar.ax.yaxis.set_minor_formatter("")  # log levels: no crowded minor labels
            ax.set_title(term_label(term), fontsize=8)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            ax.set_xlabel("x (filter-normalised step)", fontsize=7)
            ax.set_ylabel(f"{label}: y" if term == terms[0] and label else "y", fontsize=7)
    return _finish(fig, path)


def surface_figure(surfaces, terms: Optional[Sequence[str]] = ("total",)):
    """Interactive plotly figure: one 3-D ``go.Surface`` per (term, surface), terms as rows and
    surfaces as columns; ``terms=None`` draws every term."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surfaces = _as_mapping(surfaces)
    terms = _terms(surfaces, terms)
    titles = [f"{label}: {term_label(term, ' ')}" if label else term_label(term, " ")
              for term in terms for label in surfaces]
    fig = make_subplots(rows=len(terms), cols=len(surfaces), subplot_titles=titles,
                        specs=[[{"type": "surface"}] * len(surfaces)] * len(terms),
                        horizontal_spacing=0.02, vertical_spacing=0.05)
    for r, term in enumerate(terms, start=1):
        for c, surf in enumerate(surfaces.values(), start=1):
            if term in surf.losses:
                fig.add_trace(go.Surface(x=surf.x, y=surf.y, z=surf.losses[term],
                                         colorscale="Viridis", showscale=False,
                                         hovertemplate="x %{x:.3g}, y %{y:.3g}: loss %{z:.4g}"
                                                       f"<extra>{term}</extra>"), row=r, col=c)
    fig.update_scenes(xaxis_title="x", yaxis_title="y", zaxis_title="loss")
    fig.update_layout(height=380 * len(terms), width=420 * len(surfaces) + 40,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def sharpness_rows(sharpness: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """Tidy rows ``{run, term, centre, max_increase, curvature...}`` from
    ``{label: xtc.analysis.landscape.sharpness(...)}``."""
    return [{"run": label, "term": term, **numbers}
            for label, per_term in sharpness.items() for term, numbers in per_term.items()]


def _levels(z: np.ndarray, levels: int):
    """Contour levels and norm: log-spaced when the loss spans more than a factor of 20
    (far from a minimum losses explode, and linear levels would hide the basin)."""
    from matplotlib.colors import LogNorm

    finite = z[np.isfinite(z)]
    if finite.size == 0 or finite.max() - finite.min() < 1e-12:
        return None, None  # matplotlib picks levels for a flat surface
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > 20:
        return np.geomspace(lo, hi, levels), LogNorm(lo, hi)
    return np.linspace(lo, hi, levels), None
