"""What a dense task is: the :class:`Task` interface, its :class:`Metric` specs, the
:data:`TASKS` registry, and the small helpers every task's losses and meters share.

A task is one class. Its class attributes are what config validation, CLI choices, results
keys, the notebooks' pickers and the tests read without building anything (name, batch keys,
metrics with direction and unit, augmentation rule); its methods are what training needs
(channels, direct loss, the loss of a transfer into it, pseudo-target, transfer-input
encoding, meter, energy map, drawing). An instance holds the loss options of one experiment
(:meth:`Task.from_config`).

Names: the prediction is ``<task>``; the batch holds ``<task>_target`` and ``<task>_mask``
(segmentation keeps ``seg_target`` with -1 = ignore and no mask key); a transfer is the
edge ``<a>2<b>``, so a task name cannot contain the digit 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from xtc.registry import Registry

AUGMENT_RULES = ("labels", "depth", "vectors", "mask", "derived")


@dataclass(frozen=True)
class Metric:
    """One logged metric: its name in results.json, direction, unit, and whether it is one
    of the field's table columns for the task (``delta_m``: Δm and model selection use it)."""

    name: str
    higher_is_better: bool
    unit: str
    delta_m: bool = True


class Task:
    """Base class: subclass, set the class attributes, implement the methods, register it
    with ``@TASKS.register("name")``. See :mod:`xtc.tasks.normal` for a complete example.

    Class attributes:
        name, title: registry name and words for a reader ("surface normals").
        batch_keys: what a batch must hold for this task (a dataset must provide them).
        augment: batch key -> rule of :data:`AUGMENT_RULES` (how scale-crop and flip change
            it, applied by :mod:`xtc.data.transforms`); a ``derived`` target is computed from
            other keys after augmentation and needs no rule.
        metrics: every metric :meth:`meter` reports, table columns first.
        loss_term_unit: words for the unit of the direct loss (for plots).
    """

    name: str = ""
    title: str = ""
    batch_keys: tuple[str, ...] = ()
    augment: dict = {}
    metrics: tuple[Metric, ...] = ()
    loss_term_unit: str = ""

    def __init__(self, num_classes: int = 0, **options: Any):
        self.num_classes = num_classes
        self.options = options

    @classmethod
    def from_config(cls, config: Any, num_classes: int, **context: Any) -> "Task":
        """An instance with this experiment's loss options (default: none). ``context``
        holds what the config alone does not say (``ssim_max_val``: the dataset's depth
        range); a task takes what it needs and ignores the rest."""
        return cls(num_classes)

    # ------------------------------------------------------------------ shapes and data
    def channels(self) -> int:
        """Channels of the prediction (and of a transfer net's output into this task)."""
        raise NotImplementedError

    def target(self, batch: dict) -> Tensor:
        """The ground truth from a batch."""
        raise NotImplementedError

    def valid(self, batch: dict) -> Optional[Tensor]:
        """(B,1,H,W) bool: pixels with ground truth (None: all); every loss into this task,
        direct or transferred, counts only these."""
        return None

    # ------------------------------------------------------------------ losses
    def loss(self, prediction: Tensor, batch: dict) -> Tensor:
        """The direct (supervised) loss of this task's prediction."""
        raise NotImplementedError

    def pseudo_target(self, prediction: Tensor) -> Tensor:
        """The detached direct prediction in the target's form (consistency's target)."""
        raise NotImplementedError

    def transfer_loss(self, transferred: Tensor, target: Tensor, batch: dict) -> Tensor:
        """Loss of a transfer ``<a>2<this>``'s output against ``target`` (the ground truth
        for alignment, :meth:`pseudo_target` for consistency; it carries no gradient)."""
        raise NotImplementedError

    def transfer_input(self, prediction: Tensor) -> Tensor:
        """How this task's prediction is fed to a transfer net ``<this>2<b>``."""
        return prediction

    # ------------------------------------------------------------------ evaluation
    def meter(self) -> "Meter":
        """A fresh split-level meter (``compute()`` gives :attr:`metrics`)."""
        raise NotImplementedError

    def measure(self, meter: "Meter", prediction: Tensor, batch: dict) -> None:
        """Add one batch's prediction to ``meter``."""
        raise NotImplementedError

    def energy_map(self, direct: Tensor, transferred: Tensor) -> Tensor:
        """(B,H,W) per-pixel disagreement of a transferred prediction with the direct one."""
        raise NotImplementedError

    energy_unit: str = ""

    def error_map(self, prediction: Tensor, batch: dict) -> Tensor:
        """(B,H,W) per-pixel error of a prediction against the ground truth."""
        raise NotImplementedError

    error_unit: str = ""

    def draw(self, value: Tensor, valid: Optional[Tensor] = None):
        """(H,W,3) float RGB in [0,1] of one prediction or target (no batch dim)."""
        raise NotImplementedError


class Meter:
    """Tensor state named in ``_state_names``; summable across processes (``state()``,
    ``load_state()``, ``merge()``), so a distributed run all-reduces it."""

    _state_names: tuple[str, ...] = ()

    def state(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).clone() for n in self._state_names}

    def load_state(self, state: dict[str, Tensor]) -> None:
        for n in self._state_names:
            cur = getattr(self, n)
            if state[n].shape != cur.shape:
                raise ValueError(f"state {n!r} has shape {tuple(state[n].shape)}, expected "
                                 f"{tuple(cur.shape)}")
            setattr(self, n, state[n].to(cur.dtype).clone())

    def merge(self, other: "Meter") -> None:
        """Add another meter's sums into this one (same as having seen both streams)."""
        for n in self._state_names:
            cur = getattr(self, n)
            setattr(self, n, cur + getattr(other, n).to(cur.device, cur.dtype))

    def _follow(self, device: torch.device) -> None:
        for n in self._state_names:
            setattr(self, n, getattr(self, n).to(device))


class TaskRegistry(Registry):
    """The task registry, with the lookups every layer shares: a metric's direction and
    task, the table metrics of a task, and the edges ``a2b``."""

    def register(self, name: str):
        if not re.fullmatch(r"[a-z][a-z_]*", name):
            raise ValueError(f"task name {name!r}: use lower-case letters and _ only (no "
                             f"digits: transfers are named <a>2<b>)")
        register = super().register(name)

        def decorator(cls):
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise TypeError(f"task '{name}' must be a subclass of xtc.tasks.Task")
            for metric in cls.metrics:
                owner = self.metric_owner(metric.name)
                if owner is not None:
                    raise ValueError(f"task '{name}': metric '{metric.name}' is already "
                                     f"task '{owner}'s; metric names are unique")
            for key, rule in cls.augment.items():
                if rule not in AUGMENT_RULES:
                    raise ValueError(f"task '{name}': augment rule {rule!r} for {key!r}; "
                                     f"choose one of {AUGMENT_RULES}")
            cls.name = name
            return register(cls)

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a task (tests that register a toy task clean up with this)."""
        self.get(name)
        del self._builders[name]

    def in_order(self) -> list[str]:
        """Task names in registration order (seg, depth, normal, then any added later)."""
        return list(self._builders)

    def metric_owner(self, metric: str) -> Optional[str]:
        for task in self.names():
            if any(m.name == metric for m in self.get(task).metrics):
                return task
        return None

    def metric(self, name: str) -> Optional[Metric]:
        for task in self.names():
            for m in self.get(task).metrics:
                if m.name == name:
                    return m
        return None

    def all_metrics(self) -> Iterator[tuple[str, Metric]]:
        """(task, metric) for every registered metric, tasks in registration order."""
        for task in self.in_order():
            for m in self.get(task).metrics:
                yield task, m


TASKS = TaskRegistry("task")


def edge(source: str, target: str) -> str:
    """The name of the transfer from ``source`` to ``target``: ``edge("seg", "depth")`` is
    ``"seg2depth"``."""
    return f"{source}2{target}"


def split_edge(name: str) -> tuple[str, str]:
    """``"seg2depth" -> ("seg", "depth")``; a name that is not ``<a>2<b>`` raises ValueError."""
    source, sep, target = name.partition("2")
    if not sep or not source or not target or "2" in target:
        raise ValueError(f"transfer {name!r} is not of the form <source>2<target>, e.g. "
                         f"seg2depth")
    return source, target


def masked_image_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Masked mean per image, then mean over the images with at least one valid pixel.

    values, mask: (B, 1, H, W); mask bool (None = all valid). No valid pixel anywhere -> 0
    (connected to ``values``). Invalid pixels are selected away with ``where`` so a NaN/inf
    there cannot leak into the value or the gradient.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.bool().expand_as(values)
    values = torch.where(mask, values, torch.zeros_like(values))
    count = mask.flatten(1).sum(1)                        # (B,)
    per_image = values.flatten(1).sum(1) / count.clamp_min(1)
    has_valid = (count > 0).to(values.dtype)
    return (per_image * has_valid).sum() / has_valid.sum().clamp_min(1)


def fill_invalid(pred: Tensor, target: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Target with invalid pixels set to the (detached) prediction: a NaN/inf there would
    otherwise reach the gradient through the loss's derivative (0 * NaN = NaN)."""
    if mask is None:
        return target
    return torch.where(mask.bool(), target, pred.detach())


def heat(values: Tensor, valid: Optional[Tensor], cmap: str = "viridis"):
    """(H,W) values -> (H,W,3) RGB through a matplotlib colormap, scaled to the valid
    pixels' range; invalid pixels black."""
    import numpy as np
    from matplotlib import colormaps

    v = values.detach().float().cpu().numpy()
    ok = np.ones_like(v, bool) if valid is None else valid.detach().cpu().numpy().astype(bool)
    lo, hi = (float(v[ok].min()), float(v[ok].max())) if ok.any() else (0.0, 1.0)
    rgb = colormaps[cmap]((v - lo) / max(hi - lo, 1e-12))[..., :3]
    return np.where(ok[..., None], rgb, 0.0)
