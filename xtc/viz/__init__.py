"""Visualisation: matplotlib plots, the prediction explorer, and source display.

Importing ``xtc.viz`` is cheap: matplotlib, plotly, ipywidgets and IPython are imported
inside the functions that draw, so ``import xtc.viz`` works on a headless machine without
any of them loaded. Public names resolve lazily to their submodule on first access.

Examples:
    >>> import xtc.viz
    >>> xtc.viz.colorize_seg.__module__
    'xtc.viz.plots'
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it (resolved on first access, see __getattr__)
_EXPORTS = {
    "colorize_seg": "plots", "seg_palette": "plots", "show_samples": "plots",
    "show_predictions": "plots", "plot_history": "plots", "plot_task_curves": "plots",
    "offline": "plots", "class_balance": "plots",
    "plot_class_balance": "plots", "plot_depth_histogram": "plots",
    "plot_depth_per_class": "plots", "pixel_table": "plots", "plot_scaling": "plots",
    "normal_rgb": "plots", "normals_from_depth": "plots", "plot_depth_to_normals": "plots",
    "sample_tasks": "plots", "task_curves": "plots",
    "show_source": "source",
    "load_run": "explorer", "LoadedRun": "explorer", "predict": "explorer",
    "panel_names": "explorer", "render": "explorer", "static_gallery": "explorer",
    "PREDICTION_PANELS": "explorer",
    "prediction_panels": "explorer", "panel_specs": "explorer",
    "Explorer": "explorer", "find_runs": "explorer",
    "table": "tables", "config_table": "tables", "first_run": "default_run",
    "best_run": "default_run", "pick_run": "default_run", "demo_run": "default_run",
    "quickstart_config": "default_run",
}
_SUBMODULES = ("plots", "source", "explorer", "app", "default_run", "tables", "landscape_plots",
               "alignment_plots", "gradient_plots")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"xtc.viz.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"xtc.viz.{name}")
    raise AttributeError(f"module 'xtc.viz' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
