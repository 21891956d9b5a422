"""Analysis over trained runs, between the core and the reports: loss landscapes, gradient
and energy alignment, constant baselines, step-cost profiling, the seed-aware summary and
its significance test, the field's published tables, and the workshop's teaching helpers.

Modules load on first attribute access (``xtc.analysis.summary``), as in :mod:`xtc`.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("alignment", "baselines", "landscape", "predictions", "profiling", "published",
               "significance", "summary", "teaching")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"xtc.analysis.{name}")
    raise AttributeError(f"module 'xtc.analysis' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
