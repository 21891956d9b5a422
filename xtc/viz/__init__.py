"""Visualisation: matplotlib plots, the prediction explorer, and source display.

Importing ``xtc.viz`` is cheap: matplotlib, plotly, ipywidgets and IPython are imported
inside the functions that draw, so ``import xtc.viz`` works on a headless machine without
any of them loaded. Public names resolve lazily to their submodule on first access.

Examples:
    >>> import xtc.viz
    >>> xtc.viz.repo_path("configs", "synthetic-quick.yaml").name
    'synthetic-quick.yaml'
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# public name -> submodule that defines it (resolved on first access, see __getattr__)
_EXPORTS = {
    "colorize_seg": "plots", "seg_palette": "plots", "show_samples": "plots",
    "show_predictions": "plots", "plot_history": "plots", "plot_task_curves": "plots", "offline": "plots", "class_balance": "plots",
    "plot_class_balance": "plots", "plot_depth_histogram": "plots",
    "plot_depth_per_class": "plots", "pixel_table": "plots", "plot_scaling": "plots",
    "normal_rgb": "plots", "normals_from_depth": "plots", "plot_depth_to_normals": "plots",
    "sample_tasks": "plots", "task_curves": "plots",
    "show_source": "source",
    "load_run": "explorer", "LoadedRun": "explorer", "predict": "explorer",
    "panel_names": "explorer", "render": "explorer", "static_gallery": "explorer", "PREDICTION_PANELS": "explorer",
    "prediction_panels": "explorer", "panel_specs": "explorer",
    "Explorer": "explorer", "find_runs": "explorer",
    "table": "tables", "config_table": "tables", "first_run": "default_run", "best_run": "default_run", "pick_run": "default_run", "demo_run": "default_run", "quickstart_config": "default_run",
}
_SUBMODULES = ("plots", "source", "explorer", "app", "default_run", "tables", "landscape_plots",
               "alignment_plots")

__all__ = sorted([*_EXPORTS, "repo_path", "runs_root", "output_dir"])


def repo_path(*parts: str) -> Path:
    """Absolute path of ``parts`` inside the xtc repository (``configs/``, ``runs/``, ...).

    Notebooks run from ``notebooks/`` (nbval, JupyterLab) or anywhere (papermill), so they
    resolve repository files through the package location instead of the working directory.
    An absolute path in ``parts`` is returned unchanged.
    """
    root = Path(__file__).resolve().parents[2]
    return (root.joinpath(*parts) if parts else root).resolve()


def runs_root() -> Path:
    """Where notebooks write their runs and look for earlier ones by default: the
    ``XTC_RUNS_DIR`` environment variable if set (the test suite points it at a temporary
    folder), else the repository's git-ignored ``runs/``."""
    return Path(os.environ["XTC_RUNS_DIR"]) if os.environ.get("XTC_RUNS_DIR") else repo_path("runs")


def output_dir(out_dir: str | Path | None = None, name: str = "notebook") -> Path:
    """Folder a notebook writes into, created if needed.

    ``None`` (the notebooks' default) means a fresh ``<runs_root()>/<name>/<timestamp>``
    folder, so re-running a notebook never collides with an earlier run; a given path is used
    as is (relative to the working directory).
    """
    import time

    if out_dir is None:
        stamp, parent = time.strftime("%Y%m%d-%H%M%S"), runs_root() / name
        out_dir, suffix = parent / stamp, 1
        while out_dir.exists():  # two runs in the same second
            out_dir, suffix = parent / f"{stamp}-{suffix}", suffix + 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"xtc.viz.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"xtc.viz.{name}")
    raise AttributeError(f"module 'xtc.viz' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
