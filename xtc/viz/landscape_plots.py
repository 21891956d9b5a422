"""Figures for :mod:`xtc.landscape`: 1-D curves and 2-D contours (matplotlib, for reports),
3-D surfaces (plotly ``go.Surface``, interactive), and small HTML tables.

matplotlib, plotly and IPython are imported inside the functions. Matplotlib figures are
closed before they are returned, so a notebook cell that ends with the call shows them once.

Examples:
    >>> import numpy as np
    >>> from xtc.landscape import Curve
    >>> fig = plot_curves({"a->b": Curve(np.linspace(0, 1, 3), {"total": np.array([1.0, 2.0, 1.5])})})
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from xtc.viz.plots import figure
from xtc.viz.plots import finish as _finish
from xtc.viz.tables import table  # noqa: F401  (notebooks call landscape_plots.table)

TERM_ORDER = ("seg", "depth", "seg2depth", "depth2seg", "total")


def _terms(landscapes: Mapping, terms: Optional[Sequence[str]]) -> list[str]:
    present = {t for ls in landscapes.values() for t in ls.losses}
    if terms is not None:
        missing = [t for t in terms if t not in present]
        if missing:
            raise ValueError(f"terms {missing} were not computed; available: {sorted(present)}")
        return list(terms)
    return [t for t in TERM_ORDER if t in present] + sorted(present - set(TERM_ORDER))


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
        ax.set(title=term, xlabel="alpha")
    axes[0][0].set_ylabel("loss")
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
            bar.ax.tick_params(labelsize=7)
            bar.ax.yaxis.set_minor_formatter("")  # log levels: no crowded minor labels
            ax.set_title(term, fontsize=9)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            if term == terms[0] and label:
                ax.set_ylabel(label, fontsize=8)
    return _finish(fig, path)


def surface_figure(surfaces, terms: Optional[Sequence[str]] = ("total",)):
    """Interactive plotly figure: one 3-D ``go.Surface`` per (term, surface), terms as rows and
    surfaces as columns; ``terms=None`` draws every term."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surfaces = _as_mapping(surfaces)
    terms = _terms(surfaces, terms)
    titles = [f"{label}: {term}" if label else term for term in terms for label in surfaces]
    fig = make_subplots(rows=len(terms), cols=len(surfaces), subplot_titles=titles,
                        specs=[[{"type": "surface"}] * len(surfaces)] * len(terms),
                        horizontal_spacing=0.02, vertical_spacing=0.05)
    for r, term in enumerate(terms, start=1):
        for c, surf in enumerate(surfaces.values(), start=1):
            if term in surf.losses:
                fig.add_trace(go.Surface(x=surf.x, y=surf.y, z=surf.losses[term],
                                         colorscale="Viridis", showscale=False), row=r, col=c)
    fig.update_layout(height=380 * len(terms), width=420 * len(surfaces) + 40,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def sharpness_rows(sharpness: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """Tidy rows ``{run, term, centre, max_increase, curvature...}`` from
    ``{label: xtc.landscape.sharpness(...)}``."""
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
