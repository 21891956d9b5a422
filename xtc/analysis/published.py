"""Published MTAN-protocol tables (Cityscapes 7-class, NYUv2 3-task) as data, in xtc's units.

The numbers other papers print are the yardstick for any claim that a method helps, and
they carry traps (Δm of the seed mean vs the mean of per-seed Δm, depth rounded to 2
decimals, rows copied under the wrong name, one method with two sets of numbers), so they
live here as data with each row's source and flags, and tests recompute their Δm.

Rows are dicts: ``method``, ``source`` (the paper whose table the row was read from),
``protocol`` (``"mtan"``, or ``"legacy-per-image"`` for the MTAN paper's own per-image-mIoU
numbers, which must never rank with the others), ``comparable`` (protocol is the table's),
``third_party``, ``from_memory``, ``baseline`` (the STL row), ``metrics`` in xtc's names and
units (miou, pixel_acc and normal_11/22/30 as fractions 0-1 like xtc's results.json;
rel_err a ratio; abs_err in the dataset's depth unit; normal_mean/median in degrees), the
printed Δm columns (None where not printed) and ``note``.

Example:
    >>> stl = table("cityscapes-7")[0]
    >>> stl["method"], stl["metrics"]["miou"], info("cityscapes-7")["protocol"]["name"]
    ('STL', 0.7401, 'mtan')
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

NAMES = ("cityscapes-7", "nyuv2-3task")
PERCENT = ("miou", "pixel_acc", "normal_11", "normal_22", "normal_30")  # printed x100
METRIC_COLUMNS = ("miou", "pixel_acc", "abs_err", "rel_err", "normal_mean", "normal_median",
                  "normal_11", "normal_22", "normal_30")
NUMBER_COLUMNS = ("mean_rank", "delta_m_printed", "delta_m_printed_std", "delta_m_later",
                  "delta_m_task_printed", "delta_m_recomputed")
DEPTH = ("abs_err", "rel_err")


def _data(filename: str) -> str:
    path = resources.files("xtc.analysis") / "published_tables" / filename
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _meta() -> dict:
    return yaml.safe_load(_data("tables.yaml"))


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown published table {name!r}: choose one of {', '.join(NAMES)}")


def info(name: str) -> dict:
    """The table's dataset, classes, tasks, ``protocol`` ({name, text}), units, Δm columns,
    sources."""
    _check(name)
    meta = _meta()
    return {**meta["tables"][name], "sources": meta["sources"],
            "other_protocols": meta["other_protocols"]}


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def table(name: str) -> list[dict[str, Any]]:
    """Every row of a published table, in print order (STL first); see the module docstring."""
    _check(name)
    own = info(name)["protocol"]["name"]
    rows = []
    for raw in csv.DictReader(_data(f"{name}.csv").splitlines()):
        metrics = {}
        for m in METRIC_COLUMNS:
            value = _number(raw.get(m) or "")
            if value is not None:
                # round: no 0.7401000000000001
                metrics[m] = round(value / 100, 8) if m in PERCENT else value
        row = {"method": raw["method"], "source": raw["source"], "protocol": raw["protocol"],
               "comparable": raw["protocol"] == own, "third_party": raw["third_party"] == "yes",
               "from_memory": raw["from_memory"] == "yes", "baseline": raw["method"] == "STL",
               "metrics": metrics, "note": raw["note"]}
        row.update({c: _number(raw.get(c) or "") for c in NUMBER_COLUMNS})
        rows.append(row)
    return rows


def row(name: str, method: str) -> dict[str, Any]:
    """The row of ``method`` (exact name as printed, e.g. ``"Nash-MTL"``)."""
    found = [r for r in table(name) if r["method"] == method]
    if not found:
        raise KeyError(f"{name} has no row {method!r}: rows are "
                       f"{', '.join(r['method'] for r in table(name))}")
    return found[0]


def baseline(name: str) -> dict[str, float]:
    """The STL row's metrics (the baselines of every Δm in the table)."""
    return dict(row(name, "STL")["metrics"])


def recompute(name: str, method_or_row: str | dict, weighting: str = "metric",
              depth_digits: int | None = None, metrics: tuple[str, ...] | None = None) -> float:
    """Δm% of a row's own numbers against the table's STL row (lower is better).

    ``weighting``: ``"metric"`` (mean over metrics) or ``"task"`` (Senushkin et al. 2023).
    ``depth_digits``: round abs_err/rel_err of both rows first, as later papers did (trap 2).
    ``metrics``: only these metrics (e.g. the seg + depth metrics an xtc run has).
    """
    from xtc.metrics import delta_m, delta_m_task

    if weighting not in ("metric", "task"):
        raise ValueError(f"weighting={weighting!r}: choose 'metric' or 'task'")
    r = row(name, method_or_row) if isinstance(method_or_row, str) else method_or_row
    result, base = dict(r["metrics"]), baseline(name)
    if metrics is not None:
        result = {m: v for m, v in result.items() if m in metrics}
    if depth_digits is not None:
        for values in (result, base):
            for m in DEPTH:
                if m in values:
                    values[m] = round(values[m], depth_digits)
    return (delta_m if weighting == "metric" else delta_m_task)(result, base)
