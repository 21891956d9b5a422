"""Datasets: the synthetic city (default, no download), Cityscapes and NYUv2 (MTAN layout).

Every dataset yields dict items ``image (3,H,W)`` float32 in [0, 1] (not normalised; the model
normalises), ``seg_target (H,W)`` int64 with -1 = ignore, ``depth_target (1,H,W)`` float32
with 0 = invalid, ``depth_mask (1,H,W)`` bool ``= depth_target > 0``; the synthetic city and
NYUv2 (with its ``normal`` folders) add ``normal_target (3,H,W)`` and ``normal_mask (1,H,W)``.
``torch.utils.data.default_collate`` batches them.

Splits: ``train`` and ``val`` are carved from the dataset's training pool (``val_fraction``,
seeded by ``split_seed``, which also seeds augmentation; ``None`` means ``seed``), ``test``
is its held-out split. Augmentation (``augment=None`` means on
for train) is never applied to val or test.

Examples:
    >>> ds = build_dataset("synthetic-city", "val", train_size=20, height=64, width=128)
    >>> len(ds), ds.num_classes, ds.depth_units
    (2, 7, 'inverse depth')
    >>> sorted(ds[0])
    ['depth_mask', 'depth_target', 'image', 'normal_mask', 'normal_target', 'seg_target']
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from xtc.data.cityscapes import Cityscapes
from xtc.data.errors import DatasetError
from xtc.data.nyuv2 import NYUv2
from xtc.data.synthetic import SyntheticCity, render_scene
from xtc.registry import Registry

__all__ = ["DATASETS", "DatasetError", "build_dataset", "build_dataset_from_config",
           "list_datasets", "num_classes", "SyntheticCity", "Cityscapes", "NYUv2", "render_scene"]

DATASETS = Registry("dataset")
DATASETS.register("synthetic-city")(SyntheticCity)
DATASETS.register("cityscapes")(Cityscapes)
DATASETS.register("nyuv2")(NYUv2)

_COMMON = ("val_fraction", "augment", "seed", "split_seed")
_OPTIONS = {"synthetic-city": _COMMON + ("height", "width", "train_size", "test_size"),
            "cityscapes": _COMMON + ("classes",),
            "nyuv2": _COMMON}


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


def build_dataset(name: str, split: str, root: Optional[str] = None, **options: Any):
    """Build dataset ``name`` for ``split`` (train | val | test); see the module docstring.

    Options: ``val_fraction=0.1``, ``augment=None``, ``seed=0``; synthetic-city also
    ``height=128, width=256, train_size=1000, test_size=200``; cityscapes ``classes=7``.
    """
    builder = DATASETS.get(name)
    unknown = sorted(set(options) - set(_OPTIONS.get(name, options)))
    if unknown:
        raise DatasetError(f"dataset '{name}' has no option(s) {unknown}; valid options: "
                           f"{list(_OPTIONS[name])}")
    return builder(split, root, **options)


def build_dataset_from_config(data_cfg, split: str, tasks: Optional[Iterable[str]] = None):
    """Build from an ``xtc.config.DataConfig``, passing only the options ``data_cfg.name``
    uses. With ``tasks``, items hold only the batch keys those tasks need (``Task.batch_keys``)."""
    name = data_cfg.name
    DATASETS.get(name)  # unknown names fail here, listing the valid ones
    options = {key: getattr(data_cfg, key) for key in _OPTIONS[name]}
    dataset = build_dataset(name, split, data_cfg.root, **options)
    if tasks is not None:
        from xtc.tasks import TASKS

        dataset.keep({k for t in tasks for k in TASKS.get(t).batch_keys})
    return dataset


def num_classes(data_cfg) -> int:
    """The segmentation classes of ``data_cfg``'s dataset, without reading any data."""
    cls = DATASETS.get(data_cfg.name)
    return data_cfg.classes if data_cfg.name == "cityscapes" else cls.num_classes
