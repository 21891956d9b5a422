"""The task registry: the one source of truth for a dense task, and the methods and transfer
graphs built from it.

Tasks (``TASKS.names()``): ``seg`` (:mod:`xtc.tasks.seg`), ``depth`` (:mod:`xtc.tasks.depth`),
``normal`` (:mod:`xtc.tasks.normal`). Adding a task is one module with a registered
:class:`Task` subclass (see ``tests/test_toy_task.py``, which adds one inside a test).

Methods (``METHODS.names()``): ``stl-<task>`` for every task (one decoder), ``mtl`` (a
decoder per configured task) and ``xtc`` (``mtl`` plus a transfer net per edge ``<a>2<b>``
of ``model.transfers``; default every ordered pair of the configured tasks).

Examples:
    >>> TASKS.names()
    ['depth', 'normal', 'seg']
    >>> METHODS.names()
    ['mtl', 'stl-depth', 'stl-normal', 'stl-seg', 'xtc']
    >>> METHODS.get("stl-normal").tasks_for(["seg", "depth"])
    ('normal',)
    >>> default_transfers(["seg", "depth"])
    ['seg2depth', 'depth2seg']
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from xtc.registry import UnknownNameError
from xtc.tasks import seg, depth, normal  # noqa: F401, I001  (registers them in this order)
from xtc.tasks.base import (AUGMENT_RULES, TASKS, Meter, Metric, Task, edge, fill_invalid,
                            heat, masked_image_mean, split_edge)

DEFAULT_LAMBDA = 0.01  # the paper's lambda (Cityscapes), for a task no config entry names

__all__ = ["AUGMENT_RULES", "DEFAULT_LAMBDA", "lambdas_of", "METHODS", "Meter", "Method",
           "Metric", "TASKS", "Task", "default_transfers", "delta_m_metrics", "edge", "is_edge",
           "fill_invalid", "heat", "masked_image_mean", "metric_names", "split_edge",
           "transfers_of"]


@dataclass(frozen=True)
class Method:
    """A method: which tasks get a decoder, and whether transfer nets are built."""

    name: str
    single_task: Optional[str] = None  # stl-<task>
    transfers: bool = False

    def tasks_for(self, configured: Sequence[str]) -> tuple[str, ...]:
        """The tasks with a decoder, given ``model.tasks``."""
        return (self.single_task,) if self.single_task else tuple(configured)


class _Methods:
    """The method names, derived from the task registry (``stl-<task>`` exists for every
    registered task, including one a test registers)."""

    kind = "method"

    def names(self) -> list[str]:
        return sorted(["mtl", "xtc"] + [f"stl-{t}" for t in TASKS.names()])

    def get(self, name: str) -> Method:
        if name == "mtl":
            return Method("mtl")
        if name == "xtc":
            return Method("xtc", transfers=True)
        if name.startswith("stl-") and name[4:] in TASKS:
            return Method(name, single_task=name[4:])
        raise UnknownNameError(f"unknown method '{name}'; choose one of {self.names()}")

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS = _Methods()


def default_transfers(tasks: Sequence[str]) -> list[str]:
    """Every ordered pair of ``tasks`` as an edge, in task order: for (seg, depth) exactly
    the paper's two nets, seg2depth then depth2seg."""
    return [edge(a, b) for a, b in itertools.permutations(tasks, 2)]


def transfers_of(config) -> list[str]:
    """The edges an ``xtc`` run of ``config`` builds (``model.transfers`` or the default);
    none for other methods."""
    if not METHODS.get(config.model.method).transfers:
        return []
    tasks = config.model.tasks
    return list(config.model.transfers) if config.model.transfers is not None \
        else default_transfers(tasks)


def is_edge(name: str) -> bool:
    """True when ``name`` is a transfer ``a2b`` between two registered tasks."""
    try:
        source, target = split_edge(name)
    except ValueError:
        return False
    return source in TASKS and target in TASKS


def metric_names(tasks: Iterable[str], delta_m_only: bool = False) -> list[str]:
    """The metrics ``tasks`` log, in task then declaration order."""
    return [m.name for t in tasks for m in TASKS.get(t).metrics if m.delta_m or not delta_m_only]


def delta_m_metrics() -> dict[str, tuple[str, ...]]:
    """task -> its table metrics (the ones Δm and model selection use)."""
    return {t: tuple(m.name for m in TASKS.get(t).metrics if m.delta_m) for t in TASKS.names()}


def lambdas_of(config) -> dict[str, float]:
    """lambda_a for every registered task a: ``loss.lambdas[a]``, else ``loss.lambda1`` for
    seg and ``loss.lambda2`` for depth (the paper's two names), else :data:`DEFAULT_LAMBDA`."""
    legacy = {"seg": config.loss.lambda1, "depth": config.loss.lambda2}
    return {t: float(config.loss.lambdas.get(t, legacy.get(t, DEFAULT_LAMBDA)))
            for t in TASKS.names()}
