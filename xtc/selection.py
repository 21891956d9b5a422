"""Model selection and evaluation protocols: which epoch a run reports, and why.

Protocols (``train.protocol``):

* ``xtc`` (default): ``val`` is carved from the training pool, the epoch with the best
  selection score on ``val`` is kept, and ``test`` is evaluated once, with those weights.
* ``mtan``: the field's standard (Liu et al., CVPR 2019, and every paper that reports on
  its NYUv2/Cityscapes tables): the whole training pool trains, there is no selection,
  ``test`` is evaluated after every epoch (history ``test_<metric>``), and the reported
  test metrics are the mean over the last 10 epochs (all epochs if fewer).
* ``paper``: the authors' code (arXiv 2111.14122): the whole pool trains, ``test`` is
  evaluated every epoch and the epoch with the lowest loss on it is kept, so the model is
  **selected on the test split**; reports label it so.

Selection scores (``train.select``, ``xtc`` protocol): ``delta_m`` (default), ``val_loss``
(the sum of the unweighted direct losses on ``val``, today's ``direct_loss``), or any
metric the method logs on ``val`` (``miou``, ``abs_err``, ...).

Examples:
    >>> first = {"miou": 0.40, "pixel_acc": 0.80, "abs_err": 0.050, "rel_err": 0.50}
    >>> later = {"miou": 0.44, "pixel_acc": 0.80, "abs_err": 0.045, "rel_err": 0.50}
    >>> round(score("delta_m", later, first, ("seg", "depth")), 6)  # both tasks 5% better
    -5.0
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional

from xtc.errors import ConfigError

PROTOCOLS = ("xtc", "mtan", "paper")
MTAN_LAST_EPOCHS = 10



def select_names(tasks: Iterable[str], cross_task: bool,
                 edges: Optional[Iterable[str]] = None) -> list[str]:
    """Every valid ``train.select`` for a model with ``tasks`` (and transfer nets along
    ``edges`` if ``cross_task``; default every ordered pair): ``delta_m``, ``val_loss`` and
    the val metrics it logs (the task registry's, its loss terms, consistency energies)."""
    from xtc.tasks import default_transfers, metric_names, split_edge

    tasks = list(tasks)
    names = ["delta_m", "val_loss", "direct_loss", "loss_total"]
    for task in tasks:
        names += metric_names([task]) + [f"loss_{task}"]
    if cross_task:
        edges = list(edges) if edges is not None else default_transfers(tasks)
        targets = list(dict.fromkeys(split_edge(e)[1] for e in edges))
        names += [f"{t}_energy" for t in targets] + ["energy"]
        names += ["seg_agreement"] if "seg" in targets else []
        names += [f"loss_{e}" for e in edges]
    return names


def score(select: str, val: dict, first_val: Optional[dict], tasks: Iterable[str]) -> float:
    """The selection score of one epoch's ``val`` metrics; lower or higher is better as
    :func:`higher_is_better_score` says.

    ``delta_m`` is the task-weighted Δm% of ``val`` against the run's **first** validation
    (``first_val``): for each task, the mean signed relative change of its own metrics
    (the task registry's table metrics, ``xtc.tasks.delta_m_metrics``; lower-is-better sign
    convention), then the mean over tasks.

    Why this rule: every task counts equally, whatever its loss scale (the summed
    cross-entropy + L1 of ``val_loss`` is 8-10x larger for segmentation, so multi-task runs
    were picked on segmentation alone) and however many metrics it has (task-weighted, as
    Aligned-MTL argues for Δm); relative changes make metrics of different units
    comparable; the reference is fixed once the first epoch is validated, so a past
    decision never changes and only ``best.pt`` has to be kept (a mean of normalised ranks
    would re-rank old epochs as new ones arrive); the same rule applies to every method,
    STL included (there it is its one task's mean relative change). LibMTL picks its best
    epoch the same way (improvement over the first validation when no baseline is given).
    A first value of 0 or NaN has no relative change: that metric is left out, with a
    warning.
    """
    if select == "delta_m":
        assert first_val is not None, "delta_m needs the first validation's metrics"
        return _task_weighted_change(val, first_val, tasks)
    key = "direct_loss" if select == "val_loss" else select
    if key not in val:
        raise ConfigError(f"train.select={select!r}: the val metrics have no {key!r}; choose one "
                          f"of {sorted(k for k, v in val.items() if isinstance(v, float))}")
    return float(val[key])


def higher_is_better_score(select: str) -> bool:
    """Direction of a selection score (``delta_m`` and losses: lower is better)."""
    from xtc.metrics import higher_is_better

    if select in ("delta_m", "val_loss", "direct_loss"):
        return False
    return higher_is_better(select)


def _task_weighted_change(val: dict, first: dict, tasks: Iterable[str]) -> float:
    from xtc.metrics import higher_is_better
    from xtc.tasks import delta_m_metrics

    table = delta_m_metrics()
    per_task = []
    for task in tasks:
        changes = []
        for metric in table[task]:
            base, value = first.get(metric), val.get(metric)
            if base is None or value is None:
                continue
            if base == 0 or not math.isfinite(base):
                warnings.warn(f"model selection: the first validation's {metric} is {base}; "
                              f"its relative change is undefined and it is left out", stacklevel=3)
                continue
            sign = -1.0 if higher_is_better(metric) else 1.0
            changes.append(sign * (value - base) / abs(base))
        if changes:
            per_task.append(sum(changes) / len(changes))
    return 100.0 * sum(per_task) / len(per_task) if per_task else float("nan")


def mtan_report(history: list[dict], last: int = MTAN_LAST_EPOCHS) -> tuple[dict, list[int]]:
    """The MTAN protocol's reported test metrics: the mean of every numeric ``test_<metric>``
    over the last ``last`` epochs of ``history`` (all epochs if fewer), and those epochs."""
    window = history[-last:]
    names = [k for k in window[-1] if k.startswith("test_")
             and isinstance(window[-1][k], (int, float)) and not isinstance(window[-1][k], bool)]
    means = {k[len("test_"):]: sum(float(h[k]) for h in window) / len(window) for k in names}
    return means, [int(h["epoch"]) for h in window]


def describe(protocol: str, select: str, val_fraction: float, split_seed: int,
             epochs: list[int] | None = None) -> dict[str, str]:
    """``name``, ``model_selection`` and ``reported_metrics`` for a run's protocol record."""
    if protocol == "mtan":
        window = (f"epochs {epochs[0] + 1}-{epochs[-1] + 1}" if epochs else
                  f"the last {MTAN_LAST_EPOCHS} epochs")
        return {"name": "mtan", "model_selection": "none (MTAN protocol: the whole training "
                "pool trains; no val split)",
                "reported_metrics": f"test: mean of the per-epoch test metrics over the last "
                                    f"{MTAN_LAST_EPOCHS} epochs (all epochs if fewer): {window}"}
    if protocol == "paper":
        return {"name": "paper", "model_selection": "SELECTED ON TEST: the epoch with the lowest "
                "direct loss on the test split (the authors' rule; the whole pool trains)",
                "reported_metrics": "test: the selected epoch's test metrics (optimistic: "
                                    "chosen on the same split)"}
    rule = ("task-weighted Δm% vs the run's first validation (each task's own metrics, "
            "tasks weighted equally; lower is better)" if select == "delta_m" else
            "lowest val direct loss (sum of the unweighted direct losses)"
            if select == "val_loss" else f"best val {select}")
    return {"name": "xtc",
            "model_selection": f"{rule} on a val split carved from train (fraction "
                               f"{val_fraction}, split seed {split_seed})",
            "reported_metrics": "test: the selected epoch's weights, evaluated once"}
