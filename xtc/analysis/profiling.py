"""How the cost of a training step grows with resolution and batch size.

:func:`time_training_step` times the step :func:`xtc.train.fit` runs (``forward_losses`` +
``optimizer_step``, with the config's ``train.precision`` and ``train.channels_last``) on a
batch of the synthetic city; :func:`scaling_grid` does it for every (resolution, batch size)
cell. ``notebooks/06_scaling.ipynb`` plots the grid; ``bench/scaling.py`` prints it as JSON.

Each cell trains a fresh copy of the same initial weights: one untimed warm-up step (oneDNN /
cuDNN pick their kernels for the new shape), then ``repeats`` steps back to back. The minimum
is the step least disturbed by other processes on a shared machine; the median is kept too.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from xtc.config import Config
from xtc.data import build_dataset
from xtc.data.synthetic import CLASS_NAMES
from xtc.runtime import choose_device
from xtc.train import build_experiment, forward_losses, optimizer_step

__all__ = ["synthetic_batch", "time_training_step", "scaling_grid", "fit_cost_model"]


def synthetic_batch(batch_size: int, height: int, width: int, seed: int = 0) -> dict:
    """A collated batch of real synthetic-city scenes (so losses and metric inputs are
    realistic), without augmentation."""
    from torch.utils.data import default_collate

    ds = build_dataset("synthetic-city", "train", height=height, width=width,
                       train_size=max(2 * batch_size, 16), augment=False, seed=seed)
    return default_collate([ds[i] for i in range(batch_size)])


def time_training_step(cfg: Config, batch: dict, model: torch.nn.Module, repeats: int = 3,
                       device: Optional[torch.device] = None) -> list[float]:
    """Seconds of each of ``repeats`` training steps of a copy of ``model`` on ``batch``,
    after one untimed warm-up step. ``model`` itself is not changed."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = device or next(model.parameters()).device
    exp = build_experiment(cfg, device, num_classes=model.num_classes)
    exp.model.load_state_dict(copy.deepcopy(model.state_dict()))
    model, criterion, optimizer = exp.model.train(), exp.criterion.train(), exp.optimizer

    def step() -> None:
        optimizer_step(forward_losses(model, criterion, batch, device, cfg), optimizer, criterion)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def scaling_grid(cfg: Config, resolutions: Sequence[tuple[int, int]], batch_sizes: Sequence[int],
                 repeats: int = 3, max_pixels: Optional[int] = None, seed: int = 0,
                 log: Optional[Callable[[str], None]] = None) -> dict:
    """Step time for every (height, width) x batch size, with ``cfg``'s model and settings.

    Cells with batch x height x width above ``max_pixels`` are skipped (listed in
    ``skipped``). Returns ``{"rows": [...], "skipped": [...]}``; a row has ``height``,
    ``width``, ``batch_size``, ``ms_per_step`` (min), ``ms_per_step_median``,
    ``images_per_s``, ``megapixels_per_s`` and ``times_ms``.
    """
    for h, w in resolutions:
        if h % 32 or w % 32:
            raise ValueError(f"resolution {h}x{w}: height and width must be multiples of 32 "
                             f"(the encoder downsamples 32x)")
    torch.manual_seed(seed)
    device = choose_device(cfg.train.device)
    model = build_experiment(cfg, device, optimizer=False, num_classes=len(CLASS_NAMES)).model
    rows, skipped = [], []
    for h, w in resolutions:
        scenes = synthetic_batch(max(batch_sizes), h, w, seed)
        for b in batch_sizes:
            if max_pixels is not None and b * h * w > max_pixels:
                skipped.append(f"{h}x{w}_b{b}")
                continue
            batch = {k: v[:b] for k, v in scenes.items()}
            times = time_training_step(cfg, batch, model, repeats, device)
            ms, ms_median = min(times) * 1e3, statistics.median(times) * 1e3
            rows.append({"height": h, "width": w, "batch_size": b, "ms_per_step": ms,
                         "ms_per_step_median": ms_median, "images_per_s": b / (ms / 1e3),
                         "megapixels_per_s": b * h * w / 1e6 / (ms / 1e3),
                         "times_ms": [t * 1e3 for t in times]})
            if log is not None:
                log(f"{h}x{w} batch {b}: {[round(t * 1e3) for t in times]} ms")
    return {"rows": rows, "skipped": skipped}


def fit_cost_model(rows: Sequence[dict]) -> dict:
    """Fit ``ms_per_step = fixed_ms + ms_per_megapixel * batch * H * W / 1e6`` to the grid
    rows, minimising the *relative* error (so the small cells count as much as the large
    ones): the per-step overhead and the marginal cost of a megapixel, with the largest
    relative error of the fit (large = cost is not linear in pixels on this device)."""
    if len({r["batch_size"] * r["height"] * r["width"] for r in rows}) < 2:
        raise ValueError("fit_cost_model needs rows with at least two different batch x pixel "
                         "counts")
    mpx = torch.tensor([r["batch_size"] * r["height"] * r["width"] / 1e6 for r in rows],
                       dtype=torch.float64)
    ms = torch.tensor([r["ms_per_step"] for r in rows], dtype=torch.float64)
    design = torch.stack([torch.ones_like(mpx), mpx], 1) / ms[:, None]
    fixed, slope = torch.linalg.lstsq(design, torch.ones_like(ms)[:, None]).solution[:, 0].tolist()
    predicted = fixed + slope * mpx
    return {"fixed_ms": fixed, "ms_per_megapixel": slope,
            "max_relative_error": float(((predicted - ms).abs() / ms).max())}
