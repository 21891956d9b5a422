"""A split held on the training device, batched and augmented there (``data.resident``).

A dataset that fits in device memory (Cityscapes at 128x256 is ~2.4 GB) does not need a
DataLoader: its items are read once, stacked and moved to the device, and every batch is an
index gather followed by one batched kornia warp on the device. On a GPU this removes the
loader workers and the host-to-device copy of every batch from the training step.

Batches equal those of the DataLoader path: the caller passes the same index order, and each
item's augmentation is drawn from the same ``(seed, epoch, index)`` generator as
:meth:`xtc.data.mtan.SplitDataset.__getitem__` (labels, masks and flips identical; the
bilinear image resampling agrees to float rounding), so runs and exact resume work either way.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import default_collate

from xtc.data.mtan import SplitDataset
from xtc.data.transforms import AugmentParams, apply_params, item_generator, sample_params

__all__ = ["ResidentSplit", "check_fits"]

HEADROOM = 0.5  # the split may take at most this share of the free device memory


def check_fits(nbytes: int, free_bytes: int, what: str, device: torch.device) -> None:
    """Refuse a split that would leave too little device memory for training."""
    if nbytes > HEADROOM * free_bytes:
        raise MemoryError(f"data.resident: {what} needs {nbytes / 2**30:.2f} GiB on {device}, "
                          f"more than {HEADROOM:.0%} of the {free_bytes / 2**30:.2f} GiB free "
                          f"(the model needs the rest); set data.resident=false to stream it "
                          f"with a DataLoader, or use a smaller resolution")


class ResidentSplit:
    """Every item of ``dataset`` (un-augmented) as stacked tensors on ``device``.

    ``batches(order, batch_size)`` yields collated batch dicts for the dataset positions in
    ``order``, augmented like the dataset would (train split, ``dataset.augment``) for the
    epoch set by :meth:`set_epoch`. ``len()`` and ``set_epoch`` mirror the dataset.
    """

    def __init__(self, dataset: SplitDataset, device: torch.device | str) -> None:
        if not isinstance(dataset, SplitDataset):
            raise TypeError(f"data.resident needs a split dataset (synthetic-city, cityscapes, "
                            f"nyuv2); got {type(dataset).__name__}")
        self.dataset, self.device = dataset, torch.device(device)
        self.epoch = dataset.epoch
        items = default_collate([dataset.read(int(i)) for i in dataset.indices])
        items = {k: v for k, v in items.items() if torch.is_tensor(v)}
        if self.device.type == "cuda":
            check_fits(sum(v.numel() * v.element_size() for v in items.values()),
                       torch.cuda.mem_get_info(self.device)[0], f"the {dataset.split} split",
                       self.device)
        self.tensors = {k: v.to(self.device) for k, v in items.items()}
        self.height, self.width = self.tensors["image"].shape[-2:]

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _params(self, positions: Sequence[int]) -> AugmentParams:
        """Each item's geometry from its own (seed, epoch, index) generator, as the dataset
        draws it, stacked into one batch of parameters."""
        draws = [sample_params(1, self.height, self.width,
                               item_generator(self.dataset.split_seed, self.epoch, int(p)))
                 for p in positions]
        return AugmentParams(*(torch.cat([getattr(d, f) for d in draws])
                               for f in ("scale", "top", "left", "crop_h", "crop_w", "flip")))

    def batches(self, order: Sequence[int], batch_size: int) -> Iterator[dict]:
        """Batches of ``batch_size`` positions in ``order`` (the last one may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = list(order)
        for start in range(0, len(order), batch_size):
            positions = order[start:start + batch_size]
            index = torch.as_tensor(positions, device=self.device)
            batch = {k: v.index_select(0, index) for k, v in self.tensors.items()}
            if self.dataset.augment:
                batch = apply_params(batch, self._params(positions), self.dataset.depth_units)
            yield batch
