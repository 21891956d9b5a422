"""xtc: a workbench for cross-task consistency in multi-task dense prediction.

Implements arXiv 2111.14122 (Nakano, Chen, Demachi, "Cross-Task Consistency Learning
Framework for Multi-Task Learning"): a shared encoder, a segmentation and a depth decoder,
and two task-transfer networks trained with alignment and cross-task consistency losses.

``import xtc`` stays light: submodules load on first attribute access, and plotting,
widget and report libraries are imported only inside the functions that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("config", "registry", "runtime", "results", "checkpoint", "data", "models",
               "losses", "metrics", "baselines", "train", "distributed", "landscape",
               "alignment", "profiling", "summary", "report", "viz", "cli")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"xtc.{name}")
    raise AttributeError(f"module 'xtc' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
