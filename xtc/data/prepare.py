"""Write datasets in the MTAN ``.npy`` layout that ``xtc.data.cityscapes`` reads.

Layout written (one file per image, i = 0..N-1)::

    out/train/image/{i}.npy     (H,W,3) float32 RGB in [0, 1]
    out/train/label_7/{i}.npy   (H,W) float32 class ids, -1 = ignore (label_19 for 19 classes)
    out/train/depth/{i}.npy     (H,W,1) float32 inverse depth (scaled disparity), 0 = invalid
    out/val/...                 the same for the held-out split (read as split="test")

Both writers build the tree in a temporary sibling folder and rename it to ``out`` at the end,
so a failed run leaves nothing half-written; they refuse to write into a non-empty ``out``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np

from xtc.data.errors import DatasetError

MAX_TARGET = 0.4922  # MTAN's Cityscapes depth range: disparity/256 clipped here

# 7 Cityscapes categories (docs/method.md §5.1): labelId -> class; void ids 0-6 -> -1
_CATEGORY_RANGES = [(0, range(7, 11)), (1, range(11, 17)), (2, range(17, 21)),
                    (3, range(21, 23)), (4, range(23, 24)), (5, range(24, 26)),
                    (6, range(26, 34))]
_TRAIN_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def label_lut(classes: int) -> np.ndarray:
    """(256,) int64 map from Cityscapes labelIds (uint8 png) to class ids, -1 = ignore.

    7 classes: the categories of docs/method.md §5.1; id 255 (license plate, id -1 stored as
    uint8) counts as vehicle as in that table. 19 classes: the standard trainIds.
    """
    lut = np.full(256, -1, dtype=np.int64)
    if classes == 7:
        for cls, ids in _CATEGORY_RANGES:
            lut[list(ids)] = cls
        lut[255] = 6
    elif classes == 19:
        lut[_TRAIN_IDS] = np.arange(19)
    else:
        raise DatasetError(f"classes={classes}: Cityscapes labels come as 7 categories or 19 "
                           f"trainIds; use classes=7 or 19")
    return lut


def disparity_to_target(raw: np.ndarray) -> np.ndarray:
    """Raw uint16 disparity png values p -> inverse-depth target t (float32).

    p > 0: disparity d = (p - 1) / 256 px and t = d / 256 = (p - 1) / 256**2, clipped to
    0.4922 (MTAN's range); p = 0: t = 0 (invalid). p = 1 (zero disparity) also gives t = 0,
    which the loaders' mask ``t > 0`` treats as invalid.
    """
    p = raw.astype(np.float64)
    t = np.where(p > 0, (p - 1.0) / 256.0 ** 2, 0.0)
    return np.minimum(t, MAX_TARGET).astype(np.float32)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel centre: ``floor((i + 0.5) * src / dst)``."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def area_resize(image: np.ndarray, size: tuple) -> np.ndarray:
    """(H,W,C) float -> (h,w,C) by exact area averaging (PIL BOX per channel), no aliasing."""
    from PIL import Image

    h, w = size
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))
                           .resize((w, h), Image.Resampling.BOX))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def prepare_cityscapes(raw: Union[str, Path], out: Union[str, Path], classes: int = 7,
                       size: tuple = (128, 256)) -> Path:
    """Raw Cityscapes release -> MTAN layout at ``size`` (H, W); returns ``out``.

    Reads ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``, ``gtFine/{split}/{city}/
    *_gtFine_labelIds.png`` and ``disparity/{split}/{city}/*_disparity.png`` (uint16) for
    split train -> ``out/train`` and val -> ``out/val``.

    * image: RGB / 255, resized by area averaging (the authors' nearest resize aliases,
      docs/method.md §11 item 11);
    * label: :func:`label_lut` (void -> -1), nearest resize;
    * depth: :func:`disparity_to_target`, nearest resize with the *same* source pixels as the
      label, so labels and depth stay pixel-aligned, values are never mixed across depth
      edges, and the validity (t > 0) of each output pixel is that of its full-resolution
      source pixel.
    """
    from PIL import Image

    raw = Path(raw).expanduser()
    lut = label_lut(classes)
    for sub in ("leftImg8bit", "gtFine", "disparity"):
        if not (raw / sub).is_dir():
            raise DatasetError(f"raw Cityscapes folder {raw / sub} is missing; {raw} must hold "
                               f"leftImg8bit/, gtFine/ and disparity/ from cityscapes-dataset.com")
    h, w = size

    def write(tmp: Path) -> None:
        for split, dst in (("train", "train"), ("val", "val")):
            images = sorted((raw / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
            if not images:
                raise DatasetError(f"no *_leftImg8bit.png files under "
                                   f"{raw / 'leftImg8bit' / split}/<city>/")
            for sub in ("image", f"label_{classes}", "depth"):
                (tmp / dst / sub).mkdir(parents=True)
            for i, img_path in enumerate(_progress(images, f"cityscapes {split}")):
                stem = img_path.name[: -len("_leftImg8bit.png")]
                city = img_path.parent.name
                lab_path = raw / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
                disp_path = raw / "disparity" / split / city / f"{stem}_disparity.png"
                for p in (lab_path, disp_path):
                    if not p.is_file():
                        raise DatasetError(f"{img_path.name} has no matching {p}")
                rgb = np.asarray(Image.open(img_path).convert("RGB"), np.float32) / 255.0
                ids = np.asarray(Image.open(lab_path))
                disp = np.asarray(Image.open(disp_path)).astype(np.int64)
                if ids.shape != rgb.shape[:2] or disp.shape != rgb.shape[:2]:
                    raise DatasetError(f"{stem}: image {rgb.shape[:2]}, labels {ids.shape} and "
                                       f"disparity {disp.shape} differ in size")
                rows, cols = nearest_indices(ids.shape[0], h), nearest_indices(ids.shape[1], w)
                label = lut[ids[rows][:, cols].astype(np.int64)].astype(np.float32)
                depth = disparity_to_target(disp[rows][:, cols])[..., None]
                image = np.clip(area_resize(rgb, (h, w)), 0.0, 1.0).astype(np.float32)
                np.save(tmp / dst / "image" / f"{i}.npy", image)
                np.save(tmp / dst / f"label_{classes}" / f"{i}.npy", label)
                np.save(tmp / dst / "depth" / f"{i}.npy", depth)

    return _write_atomically(Path(out), write)


def prepare_synthetic(out: Union[str, Path], n: int, height: int = 128, width: int = 256,
                      seed: int = 0, test_n: Optional[int] = None) -> Path:
    """Export the synthetic city to the MTAN layout (readable as ``cityscapes``, classes=7).

    ``train/`` holds scenes 0..n-1 (the train pool of ``SyntheticCity(train_size=n)``);
    ``val/`` holds ``test_n`` (default ``max(1, n // 5)``) test scenes, the same as
    ``SyntheticCity``'s test split. Folders: ``image/``, ``label_7/``, ``depth/``.
    """
    from xtc.data.synthetic import TEST_OFFSET, render_scene

    if n <= 0:
        raise DatasetError(f"prepare_synthetic: n={n} must be positive")
    test_n = max(1, n // 5) if test_n is None else test_n
    render_scene(seed, 0, height, width)  # validate the size before creating anything

    def write(tmp: Path) -> None:
        for split, count, offset in (("train", n, 0), ("val", test_n, TEST_OFFSET)):
            for sub in ("image", "label_7", "depth"):
                (tmp / split / sub).mkdir(parents=True)
            for i in _progress(range(count), f"synthetic {split}"):
                s = render_scene(seed, offset + i, height, width)
                np.save(tmp / split / "image" / f"{i}.npy", np.ascontiguousarray(s["image"]))
                np.save(tmp / split / "label_7" / f"{i}.npy", s["label"].astype(np.float32))
                np.save(tmp / split / "depth" / f"{i}.npy", s["depth"][..., None])

    return _write_atomically(Path(out), write)


def _write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"output folder {out} already exists and is not empty; remove it "
                           f"or choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _progress(items: Iterable, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
