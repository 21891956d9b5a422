"""xtc: a workbench for cross-task consistency in multi-task dense prediction.

Implements arXiv 2111.14122 (Nakano, Chen, Demachi, "Cross-Task Consistency Learning
Framework for Multi-Task Learning"): a shared encoder, one decoder per task (segmentation,
depth, surface normals) and task-transfer networks between them, trained with alignment and
cross-task consistency losses.

``import xtc`` stays light: submodules load on first attribute access, and plotting,
widget and report libraries are imported only inside the functions that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# three layers, each importing only from the ones above it:
#   core      config registry errors files runtime results checkpoint data models tasks
#             losses metrics selection train distributed
#   analysis  xtc.analysis (landscape, alignment, summary, ...) and xtc.viz (figures, explorer)
#   reports   xtc.reports (plans, notebook execution, run bookkeeping, index) and cli
_SUBMODULES = ("config", "registry", "errors", "files", "runtime", "results", "checkpoint",
               "data", "models", "tasks", "losses", "metrics", "selection", "train",
               "distributed", "analysis", "viz", "reports", "cli")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"xtc.{name}")
    raise AttributeError(f"module 'xtc' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
