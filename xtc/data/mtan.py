"""Loader for the MTAN preprocessed ``.npy`` layout shared by Cityscapes and NYUv2.

Layout: ``{root}/{train,val}/{image,<label folder>,depth[,normal]}/{i}.npy``, i = 0..N-1.

Arrays: ``image`` (H,W,3) float in [0, 1]; label (H,W) float, -1 = ignore (250, the
ignore value of the authors' raw Cityscapes loader, is also read as ignore; any other value
outside [0, K) raises :class:`DatasetError` naming the file); ``depth`` (H,W,1) or (H,W) float
with 0 = invalid; ``normal`` (H,W,3) in [-1, 1] when the folder exists (NYUv2).

Splits: ``train`` and ``val`` are carved from MTAN's ``train`` folder (``val_fraction`` of it,
shuffled by ``seed``; model selection never sees the reported split), ``test`` is MTAN's
``val`` folder. Items follow the batch contract of ``xtc/data/__init__.py``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from xtc.data.errors import DatasetError
from xtc.data.transforms import augment_item

SPLITS = ("train", "val", "test")
IGNORE_INDEX = -1
RAW_IGNORE = 250  # the authors' Cityscapes ignore value, accepted as ignore on read


def split_indices(pool_size: int, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Indices of ``split`` (train | val) in a pool of ``pool_size``: a seeded shuffle, the
    first ``round(val_fraction * pool_size)`` go to val (sorted), the rest to train."""
    if split not in ("train", "val"):
        raise DatasetError(f"split={split!r}: only train and val are carved from the pool")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction={val_fraction} must be in [0, 1)")
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5B117]))) \
        .permutation(pool_size)
    n_val = int(round(val_fraction * pool_size))
    if n_val == 0 and val_fraction > 0:
        n_val = 1  # at least one val image, and then never also a train image
    if val_fraction > 0 and n_val >= pool_size:
        raise DatasetError(f"a pool of {pool_size} images is too small to carve a val split "
                           f"(fraction {val_fraction}) and keep train images apart from it; "
                           f"use more images (data.train_size) or train.protocol=mtan")
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return np.sort(chosen)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")


def resolve_augment(split: str, augment: Optional[bool]) -> bool:
    """None means True for train; augmentation never applies to val or test."""
    return split == "train" and (augment is None or bool(augment))


class SplitDataset(torch.utils.data.Dataset):
    """A split as ``indices`` into a pool; item ``index`` is ``read(indices[index])``, then
    augmented (train split only) with randomness from (split_seed, epoch, index) alone.

    Subclasses set ``indices``, ``split_seed``, ``augment``, ``depth_units`` and implement
    ``read``.
    """

    epoch = 0
    keys: Optional[frozenset] = None  # batch keys to yield (None: all); see keep()
    batch_keys: tuple[str, ...] = ()  # every key an item can hold

    def provides(self) -> tuple[str, ...]:
        """The batch keys this split's items hold."""
        return self.batch_keys

    def keep(self, keys) -> "SplitDataset":
        """Yield only ``keys`` (plus ``image``): a two-task run does not load, augment and
        batch normals it never uses. Raises DatasetError naming a key the data lack."""
        keys = frozenset(keys) | {"image"}
        missing = sorted(keys - set(self.provides()))
        if missing:
            raise DatasetError(f"{self.name}: the {self.split} split has no {missing} (it "
                               f"holds {sorted(self.provides())}); drop the task that needs "
                               f"them from model.tasks, or add the data (e.g. a normal/ folder "
                               f"for NYUv2's normals)")
        self.keys = keys
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of item i at epoch e depends on (split_seed, e, i) only."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        item = self.read(int(self.indices[index]))
        if self.keys is not None:
            item = {k: v for k, v in item.items() if k in self.keys}
        if self.augment:
            item = augment_item(item, self.split_seed, self.epoch, index, self.depth_units)
        return item

    def read(self, i: int) -> dict:
        raise NotImplementedError


class MTANDataset(SplitDataset):
    """Items ``image (3,H,W)``, ``seg_target (H,W)``, ``depth_target (1,H,W)``, ``depth_mask
    (1,H,W)`` and ``normal_target (3,H,W)`` when a ``normal`` folder exists.

    Subclasses set ``name``, ``label_folder``, ``num_classes``, ``class_names``,
    ``depth_units``.
    """

    name = "mtan"
    label_folder = "label"
    num_classes = 0
    class_names: list = []
    depth_units = "inverse depth"
    depth_range = (0.0, 1.0)  # nominal range of the depth unit (SSIM's max_val)
    ignore_index = IGNORE_INDEX
    batch_keys = ("image", "seg_target", "depth_target", "depth_mask")  # + normals if present

    def __init__(self, split: str, root: Union[str, Path, None] = None, *,
                 val_fraction: float = 0.1, augment: Optional[bool] = None, seed: int = 0,
                 split_seed: Optional[int] = None):
        check_split(split)
        self.split, self.seed, self.epoch = split, seed, 0
        self.split_seed = seed if split_seed is None else split_seed  # real data: one seed
        self.augment = resolve_augment(split, augment)
        if root is None or str(root) == "":
            raise DatasetError(f"{self.name}: no data root given; set data.root in the config "
                               f"or pass --set data.root=/path/to/{self.name} (a folder with "
                               f"train/ and val/ in the MTAN .npy layout)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: data root {self.root} does not exist; set "
                               f"data.root (or --set data.root=...) to the MTAN-layout folder")
        folder = self.root / ("val" if split == "test" else "train")
        self.folders = self._find_folders(folder)
        pool = self._count(folder)
        self._check_headers(pool)
        if split == "test":
            self.indices = np.arange(pool)
        else:
            self.indices = split_indices(pool, split, val_fraction, self.split_seed)

    # ------------------------------------------------------------------ files

    def _find_folders(self, folder: Path) -> dict:
        if not folder.is_dir():
            raise DatasetError(f"{self.name}: split folder {folder} is missing; expected "
                               f"{self.root}/train and {self.root}/val (MTAN layout)")
        names = {"image": "image", "label": self.label_folder, "depth": "depth"}
        folders = {}
        for key, sub in names.items():
            if not (folder / sub).is_dir():
                have = sorted(p.name for p in folder.iterdir() if p.is_dir())
                raise DatasetError(f"{self.name}: folder {folder / sub} is missing (found "
                                   f"{have}); the MTAN layout needs image/, {self.label_folder}/ "
                                   f"and depth/")
            folders[key] = folder / sub
        if (folder / "normal").is_dir():
            folders["normal"] = folder / "normal"
        return folders

    def _count(self, folder: Path) -> int:
        counts = {}
        for key, path in self.folders.items():
            numbers = sorted(int(m.group(1)) for p in path.iterdir()
                             if (m := re.fullmatch(r"(\d+)\.npy", p.name)))
            if not numbers:
                raise DatasetError(f"{self.name}: folder {path} holds no <i>.npy files")
            if numbers != list(range(len(numbers))):
                missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))[:5]
                raise DatasetError(f"{self.name}: files in {path} must be 0.npy..N-1.npy; "
                                   f"missing e.g. {missing}")
            counts[key] = len(numbers)
        if len(set(counts.values())) != 1:
            raise DatasetError(f"{self.name}: mismatched file counts in {folder}: {counts}; "
                               f"every folder needs one file per image")
        return next(iter(counts.values()))

    def _check_headers(self, pool: int) -> None:
        """Read every file's .npy header (not its data): truncated files, wrong shapes and
        non-numeric dtypes fail here, before training starts, naming the file."""
        expected = {}
        for key, path in self.folders.items():
            for i in range(pool):
                file = path / f"{i}.npy"
                try:
                    array = np.load(file, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise DatasetError(f"{self.name}: cannot read {file} ({exc}); the file is "
                                       f"truncated or not a .npy array: re-create it") from None
                if array.dtype.kind not in "fiub":
                    raise DatasetError(f"{file}: dtype {array.dtype} is not numeric")
                shape = array.shape[:2]
                if expected.setdefault("hw", shape) != shape or array.ndim not in (2, 3):
                    raise DatasetError(f"{file}: shape {array.shape} does not match the other "
                                       f"files' {expected['hw']} (H,W[,C]); all items of a "
                                       f"dataset share one size")

    def _load(self, key: str, i: int) -> tuple[np.ndarray, Path]:
        path = self.folders[key] / f"{i}.npy"
        try:
            return np.load(path, allow_pickle=False), path
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.name}: cannot read {path}: {exc}") from None

    # ------------------------------------------------------------------ dataset API

    def read(self, i: int) -> dict:
        """File ``i`` of the split folder as an item (no augmentation)."""
        image, path = self._load("image", i)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DatasetError(f"{path}: image must be (H,W,3), got {image.shape}")
        if not np.issubdtype(image.dtype, np.floating) or not (
                np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0 + 1e-6):
            raise DatasetError(f"{path}: image must be float RGB in [0, 1] (MTAN layout); got "
                               f"dtype {image.dtype}, range [{image.min()}, {image.max()}]; "
                               f"divide 8-bit images by 255 when preparing the data")
        h, w = image.shape[:2]
        label, lpath = self._load("label", i)
        depth, dpath = self._load("depth", i)
        if depth.ndim == 3:
            depth = depth[..., 0]
        if label.shape != (h, w) or depth.shape != (h, w):
            raise DatasetError(f"{self.name}: item {i} shapes disagree: image {image.shape}, "
                               f"{lpath.name} label {label.shape}, depth {depth.shape}")
        seg = self._labels(label, lpath)
        if not np.isfinite(depth).all():
            raise DatasetError(f"{dpath}: depth holds {int((~np.isfinite(depth)).sum())} NaN/inf "
                               f"values; write 0 for invalid pixels (the layout's convention)")
        depth_t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        depth_t = depth_t.clamp_min(0.0)
        item = {"image": torch.from_numpy(np.ascontiguousarray(
                    image.transpose(2, 0, 1), dtype=np.float32)),
                "seg_target": seg, "depth_target": depth_t, "depth_mask": depth_t > 0}
        if "normal" in self.folders:
            item.update(self._normals(i, (h, w)))
        return item

    def provides(self) -> tuple[str, ...]:
        normals = ("normal_target", "normal_mask")
        return tuple(k for k in self.batch_keys if k not in normals or "normal" in self.folders)

    def _normals(self, i: int, size: tuple) -> dict:
        """``normal/{i}.npy`` (H,W,3) in [-1, 1]: zero vectors (and NaN) are invalid, valid
        ones are renormalised to unit length (the files' float rounding)."""
        normal, path = self._load("normal", i)
        if normal.shape != (*size, 3):
            raise DatasetError(f"{path}: normals must be (H,W,3) = {(*size, 3)}; got "
                               f"{normal.shape}")
        n = torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1), dtype=np.float32))
        finite = torch.isfinite(n).all(0, keepdim=True)
        n = torch.where(finite, n, 0.0)
        length = torch.linalg.vector_norm(n, dim=0, keepdim=True)
        mask = finite & (length > 1e-3)
        return {"normal_target": torch.where(mask, n / length.clamp_min(1e-12), 0.0),
                "normal_mask": mask}

    def _labels(self, label: np.ndarray, path: Path) -> torch.Tensor:
        ignore = (label == -1) | (label == RAW_IGNORE)
        valid = ignore | ((label >= 0) & (label < self.num_classes) & (label == np.rint(label)))
        if not valid.all():
            values = np.unique(label[~valid])[:5]
            raise DatasetError(f"{path}: label values {values.tolist()} are outside "
                               f"[0, {self.num_classes}) and not an ignore value (-1 or 250); "
                               f"is this the right dataset / classes setting?")
        seg = np.where(ignore, IGNORE_INDEX, label).astype(np.int64)
        return torch.from_numpy(seg)

    def fingerprint(self) -> str:
        """sha256 (16 hex) over the split, its indices, the folder's file names and sizes and
        the bytes of file 0."""
        digest = hashlib.sha256(f"{self.name}:{self.label_folder}:{self.split}".encode())
        digest.update(np.asarray(self.indices, dtype=np.int64).tobytes())
        for key in sorted(self.folders):
            for p in sorted(self.folders[key].iterdir()):
                digest.update(f"{key}/{p.name}:{p.stat().st_size};".encode())
            digest.update((self.folders[key] / "0.npy").read_bytes())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, root='{self.root}', n={len(self)}, "
                f"classes={self.num_classes}, depth='{self.depth_units}', augment={self.augment})")
