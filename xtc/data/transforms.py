"""Joint augmentation for (image, segmentation, depth) batches, built on kornia.

One random geometry per sample is applied identically to every map of that sample:

* **scale-crop**: pick ``s`` in ``{1.0, 1.2, 1.5}``, crop a ``round(H/s) x round(W/s)``
  window at a random position and resize it back to ``H x W`` (image bilinear; labels,
  depth, masks and normals nearest, so no class or depth value is ever invented);
* **horizontal flip** with probability 0.5 (the x component of normals changes sign).

Depth is rescaled consistently with its units: zooming in by ``s`` brings the scene ``s``
times closer, so inverse depth (disparity) is multiplied by ``s`` and metric depth divided by
``s`` (the authors' Cityscapes code did neither, docs/method.md §11 item 10). The depth mask goes
through the same crop (authors' defect §11 item 9) and stays ``depth_target > 0``.

Batches are dicts: ``image (B,3,H,W)`` float, ``seg_target (B,H,W)`` long (-1 ignore),
``depth_target (B,1,H,W)`` float, ``depth_mask (B,1,H,W)`` bool, optional
``normal_target (B,3,H,W)`` and ``normal_mask (B,1,H,W)``; what happens to each key is its
task's rule (``xtc.tasks.Task.augment``: labels, depth, vectors, mask). Parameters are drawn
from a ``torch.Generator`` on the CPU, so the same generator state gives the same result on
CPU and GPU and in any worker.

Examples:
    >>> import torch
    >>> batch = {"image": torch.rand(2, 3, 32, 64), "seg_target": torch.zeros(2, 32, 64).long(),
    ...          "depth_target": torch.rand(2, 1, 32, 64),
    ...          "depth_mask": torch.ones(2, 1, 32, 64).bool()}
    >>> out = augment_batch(batch, torch.Generator().manual_seed(0), "inverse depth")
    >>> out["image"].shape
    torch.Size([2, 3, 32, 64])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

SCALES = (1.0, 1.2, 1.5)
DEPTH_UNITS = ("inverse depth", "metres")


@dataclass
class AugmentParams:
    """Per-sample geometry: ``scale (B,)`` float, ``top``/``left``/``crop_h``/``crop_w`` (B,) long,
    ``flip (B,)`` bool. Pixel boxes are in the input resolution."""

    scale: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    crop_h: torch.Tensor
    crop_w: torch.Tensor
    flip: torch.Tensor


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, index)`` only (worker- and order-independent)."""
    digest = hashlib.sha256(f"xtc-augment:{seed}:{epoch}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_params(batch_size: int, height: int, width: int, generator: torch.Generator,
                  scales: Sequence[float] = SCALES, flip_p: float = 0.5) -> AugmentParams:
    """Draw one scale, crop position and flip per sample (all on the CPU)."""
    choice = torch.randint(len(scales), (batch_size,), generator=generator)
    scale = torch.tensor([float(s) for s in scales], dtype=torch.float64)[choice]
    crop_h = torch.round(height / scale).long().clamp(1, height)
    crop_w = torch.round(width / scale).long().clamp(1, width)
    u = torch.rand(batch_size, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - crop_h + 1).double()).long()
    left = torch.floor(u[:, 1] * (width - crop_w + 1).double()).long()
    flip = torch.rand(batch_size, generator=generator) < flip_p
    return AugmentParams(scale.float(), top, left, crop_h, crop_w, flip)


def apply_params(batch: dict, params: AugmentParams, depth_units: str) -> dict:
    """Apply ``params`` to every map of ``batch`` (see module docstring); returns a new dict.

    Keys other than the known maps are passed through unchanged.
    """
    from kornia.geometry.transform import crop_and_resize

    if depth_units not in DEPTH_UNITS:
        raise ValueError(f"depth_units={depth_units!r}; expected one of {DEPTH_UNITS}")
    image = batch["image"]
    if image.ndim != 4:
        raise ValueError(f"augment expects a batched dict with image (B,3,H,W); got "
                         f"image of shape {tuple(image.shape)} (add a batch dimension)")
    b, _, h, w = image.shape
    device = image.device
    top, left = params.top.to(device), params.left.to(device)
    bottom = top + params.crop_h.to(device) - 1
    right = left + params.crop_w.to(device) - 1
    # kornia boxes: (B, 4, 2) corners (x, y) in order top-left, top-right, bottom-right, bottom-left
    boxes = torch.stack([torch.stack([left, top], -1), torch.stack([right, top], -1),
                         torch.stack([right, bottom], -1), torch.stack([left, bottom], -1)],
                        dim=1).to(image.dtype if image.is_floating_point() else torch.float32)
    identity = bool((params.scale == 1.0).all())
    flip = params.flip.to(device).view(b, 1, 1, 1)

    def warp(x: torch.Tensor, mode: str) -> torch.Tensor:  # x: (B,C,H,W) float
        if not identity:
            x = crop_and_resize(x, boxes.to(x.dtype), (h, w), mode=mode, align_corners=True)
        return torch.where(flip, x.flip(-1), x)

    # one bilinear warp for the image, one nearest warp for every other map stacked on C;
    # each map's rule comes from the task that owns its key (Task.augment)
    rules = augment_rules()
    keys = [k for k in batch if rules.get(k, "derived") != "derived"]
    dtype = image.dtype if image.is_floating_point() else torch.float32
    maps = [batch[k][:, None] if batch[k].ndim == 3 else batch[k] for k in keys]
    warped = warp(torch.cat([m.to(dtype) for m in maps], dim=1), "nearest") if maps else None
    out = dict(batch)
    out["image"] = warp(image, "bilinear").to(image.dtype)
    start = 0
    for key, source in zip(keys, maps):
        value = warped[:, start:start + source.shape[1]]
        start += source.shape[1]
        rule, kind = rules[key], batch[key].dtype
        if rule == "labels":
            value = value.round().to(kind).reshape(batch[key].shape)
        elif rule == "mask":
            value = value > 0.5
        elif rule == "depth":
            scale = params.scale.to(device=device, dtype=value.dtype).view(b, 1, 1, 1)
            value = (value * scale if depth_units == "inverse depth" else value / scale).to(kind)
        elif rule == "vectors":  # a flip mirrors the x component
            sign = torch.where(flip, -1.0, 1.0).to(value.dtype)
            value = torch.cat([value[:, :1] * sign, value[:, 1:]], dim=1).to(kind)
        out[key] = value
    if "depth_target" in out:  # the depth mask stays depth_target > 0 after the warp
        positive = out["depth_target"] > 0
        out["depth_mask"] = out["depth_mask"] & positive if "depth_mask" in keys else positive
    return out


def augment_rules() -> dict[str, str]:
    """batch key -> augmentation rule, from every registered task (``Task.augment``)."""
    from xtc.tasks import TASKS

    return {key: rule for name in TASKS.in_order() for key, rule in TASKS.get(name).augment.items()}


def augment_batch(batch: dict, generator: torch.Generator, depth_units: str,
                  scales: Sequence[float] = SCALES, flip_p: float = 0.5,
                  params: Optional[AugmentParams] = None) -> dict:
    """Random scale-crop + horizontal flip of a batched dict, per-sample parameters.

    Args:
        batch: dict of (B,...) tensors (module docstring), on any device.
        generator: CPU ``torch.Generator`` the parameters are drawn from.
        depth_units: ``"inverse depth"`` (multiplied by s) or ``"metres"`` (divided by s).
        params: use these instead of drawing new ones (tests, replays).
    """
    if batch["image"].ndim != 4:
        raise ValueError(f"augment expects a batched dict with image (B,3,H,W); got image of "
                         f"shape {tuple(batch['image'].shape)} (use augment_item for one item)")
    b, _, h, w = batch["image"].shape
    if params is None:
        params = sample_params(b, h, w, generator, scales, flip_p)
    return apply_params(batch, params, depth_units)


def augment_item(item: dict, seed: int, epoch: int, index: int, depth_units: str) -> dict:
    """Augment one dataset item (no batch dim) with randomness from ``(seed, epoch, index)``."""
    batched = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor)}
    out = augment_batch(batched, item_generator(seed, epoch, index), depth_units)
    return {**item, **{k: v[0] for k, v in out.items()}}
