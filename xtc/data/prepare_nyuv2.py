"""Build NYUv2 in the MTAN ``.npy`` layout from the official labelled NYU Depth v2 release.

Input: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with ``h5py``) and the
official train/test split ``splits.mat`` (MATLAB v5, read with ``scipy.io.loadmat``).

Axis order: MATLAB stores the arrays column-major as ``images`` H x W x 3 x N, ``depths`` and
``labels`` H x W x N (H, W = 480, 640); h5py shows every MATLAB array with its axes reversed, so
the datasets read as ``images`` (N, 3, W, H) = (1449, 3, 640, 480) uint8, ``depths`` (N, W, H)
float metres and ``labels`` (N, W, H) uint16 (0 = unlabelled, 1..894 the raw class ids). Image
``i`` as (H, W, 3) RGB is therefore ``images[i].transpose(2, 1, 0)`` and its depth and labels
(H, W) are ``depths[i].T`` and ``labels[i].T``.

Layout written (one file per image; :func:`prepare_nyuv2` has the details)::

    out/train/image/{i}.npy    (288,384,3) float32 RGB in [0, 1]
    out/train/label/{i}.npy    (288,384) float32 13-class ids, -1 = void
    out/train/depth/{i}.npy    (288,384,1) float32 metres, 0 = invalid
    out/train/normal/{i}.npy   (288,384,3) float32 unit normals, (0,0,0) = invalid (derived)
    out/val/...                the 654 official test images (xtc reads val/ as split="test")

The normals are derived from the Kinect depth by xtc (:func:`derive_normals`); they are NOT
MTAN's normal files, which came from Eigen & Fergus's preprocessing, so numbers measured on
them are not comparable with the published normal columns. For the published protocol use
MTAN's preprocessed NYUv2, linked from the MTAN README (https://github.com/lorenmt/mtan).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from xtc.data.errors import DatasetError
from xtc.data.prepare import _progress, _write_atomically, area_resize, nearest_indices
from xtc.errors import SetupError

NYU_SIZE = (480, 640)  # (H, W) of every image of the labelled release
NUM_RAW_CLASSES = 894
# The crop applied before resizing: rows 45:471, cols 41:601 of the 480x640 image (0-based,
# end-exclusive; 426 x 560 px). It removes the white/unlabelled border left by projecting the
# depth onto the RGB image. It is the NYU toolbox's valid-projection mask (MATLAB's 1-based,
# inclusive mask(45:471, 41:601), 427 x 561 px) written as 0-based slices, as the usual NYUv2
# evaluation crop since Eigen et al. 2014 does: one row and one column smaller. It is xtc's
# choice, not a reconstruction of how MTAN's 288x384 files were made.
CROP = (slice(45, 471), slice(41, 601))

# NYU Depth v2 colour-camera intrinsics for the 640x480 image, in the toolbox's 1-based pixel
# coordinates (x = (u - cx) * z / fx with u = 1..640; NYU toolbox camera_params.m /
# rgb_plane2rgb_world.m). The labelled release's depth is already registered to this camera.
FX, FY = 5.1885790117450188e+02, 5.1946961112127485e+02
CX, CY = 3.2558244941119034e+02, 2.5373616633400465e+02

NORMAL_SMOOTHING = 3.0  # px: std of the Gaussian smoothing the back-projected 480x640 points
NORMAL_STEP = 3         # px: half-baseline of the central differences on the 480x640 grid

# 894 raw NYU class ids -> 40 classes (Gupta et al. 2013, classMapping40.mat `mapClass`):
# entry k-1 is the 40-class id (1..40) of raw id k. Copied from the public text copy in
# github.com/StevenHickson/Adapnet-Shape, dataset/nyu13_dataset.py (`label_nyu_mapping`,
# commit a38aa881ae9adaa750980beff8cc43d6bead14b9), and checked entry by entry against two other
# public copies of the same table (they agree on all 894 entries).
RAW_TO_40 = np.array([
    40, 40, 3, 22, 5, 40, 12, 38, 40, 40, 2, 39, 40, 40, 26, 40, 24, 40, 7, 40, 1, 40, 40, 34,
    38, 29, 40, 8, 40, 40, 40, 40, 38, 40, 40, 14, 40, 38, 40, 40, 40, 15, 39, 40, 30, 40, 40, 39,
    40, 39, 38, 40, 38, 40, 37, 40, 38, 38, 9, 40, 40, 38, 40, 11, 38, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 38, 13, 40, 40, 6, 40, 23, 40, 39, 10, 16, 40, 40, 40, 40, 38, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 38, 40, 39, 40, 40, 40, 40, 39, 38, 40, 40, 40, 40, 40, 40, 18, 40,
    40, 19, 28, 33, 40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 27, 36, 40, 40, 40, 40, 21, 40, 20, 35,
    40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 4, 32, 40, 40, 39, 40, 39, 40, 40, 40, 40, 40,
    17, 40, 40, 25, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 38, 38,
    40, 40, 39, 40, 39, 40, 38, 39, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 38, 40, 40,
    38, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 39, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 39, 40, 40, 40, 38, 40, 40, 39, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 31, 40, 40, 40, 40, 40,
    40, 40, 38, 40, 40, 38, 39, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 39, 40, 40, 39, 40,
    40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 38, 39, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 38, 39, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 38,
    40, 40, 40, 38, 40, 39, 40, 40, 40, 39, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 39, 40, 40, 39, 39, 40, 40, 40, 40, 38, 40, 40, 38,
    39, 39, 40, 39, 40, 39, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 38, 40, 39, 40,
    40, 40, 40, 40, 39, 39, 40, 40, 40, 40, 40, 40, 39, 39, 40, 40, 38, 39, 39, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 39, 39, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 39, 40, 40, 39, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 38, 40, 40, 40, 40, 40, 40, 40, 39, 38, 39, 40,
    38, 39, 40, 39, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 38, 40, 40, 39,
    40, 40, 40, 39, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 39, 38, 40, 40, 38, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 38, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 38, 38, 38, 40, 40, 40, 38, 40, 40, 40, 38, 38, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 38, 40, 38, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 39, 40, 39, 40, 40, 40, 40, 38, 38, 40, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 39, 40, 40, 39, 40, 40, 39, 39, 40, 40, 40, 40, 40, 40, 40, 40, 39, 39, 39, 40,
    40, 40, 40, 39, 40, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40,
    40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 38, 40, 39, 40,
    40, 40, 40, 38, 40, 40, 40, 40, 40, 38, 40, 40, 40, 40, 40, 40, 40, 39, 40, 40, 40, 40, 40, 40,
    40, 40, 40, 39, 40, 40,
], dtype=np.int64)

# 40 classes -> 13 classes (Couprie et al. 2013; class13Mapping.mat of
# github.com/ankurhanda/nyuv2-meta-data): entry c is the 1-based 13-class id of 40-class id c,
# entry 0 (void) stays 0. Text copies: github.com/howard-mahe/nyudv2_class_mapping,
# utils/map40to13.m (which also names the 13 ids: 1 bed, 2 books, 3 ceiling, 4 chair, 5 floor,
# 6 furniture, 7 objects, 8 picture, 9 sofa, 10 table, 11 TV, 12 wall, 13 window), and the same
# list in StevenHickson/Adapnet-Shape dataset/nyu13_dataset.py (`map_to_20`) and
# jmccormac/pySceneNetRGBD. The 1-based order is alphabetical and equals
# xtc.data.nyuv2.CLASSES_13, so xtc's id is the 13-class id minus 1.
NYU40_TO_13 = np.array([0, 12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7,
                        3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7], dtype=np.int64)

NORMALS = ("derive", "none")


def label_lut() -> np.ndarray:
    """(895,) int64 map from raw NYU label ids to xtc's 13 class ids, -1 = void.

    Raw 0 (unlabelled) -> -1; raw k in 1..894 -> ``NYU40_TO_13[RAW_TO_40[k - 1]] - 1``, an id in
    0..12 in the order of ``xtc.data.nyuv2.CLASSES_13`` (bed, books, ceiling, chair, floor,
    furniture, objects, picture, sofa, table, tv, wall, window).
    """
    lut = np.full(NUM_RAW_CLASSES + 1, -1, dtype=np.int64)
    lut[1:] = NYU40_TO_13[RAW_TO_40] - 1
    return lut


def derive_normals(depth: np.ndarray, fx: float = FX, fy: float = FY, cx: float = CX,
                   cy: float = CY, *, sigma: float = NORMAL_SMOOTHING,
                   step: int = NORMAL_STEP) -> np.ndarray:
    """(H,W) depth in metres (0 = invalid) -> (H,W,3) float32 unit surface normals.

    Method: (1) back-project every pixel with the pinhole intrinsics, in the NYU toolbox's
    1-based pixel coordinates: ``X = (u - cx) z / fx``, ``Y = (v - cy) z / fy``, ``Z = z``
    (u = column + 1, v = row + 1; camera frame x right, y down, z forward); (2) smooth the
    points with a Gaussian of std ``sigma`` px (truncated at 2 sigma) by normalised convolution
    over the valid pixels only, so an invalid pixel never pulls its neighbours towards 0 and,
    since a weighted mean of coplanar points stays on their plane, a plane's normals stay exact
    next to holes and image borders; (3) tangents by central differences
    ``P(v, u + s) - P(v, u - s)`` and ``P(v + s, u) - P(v - s, u)`` with ``s = step``; (4) the
    normal is their cross product, flipped where needed to face the camera (``n . P < 0``: it
    points from the surface back toward the camera centre) and scaled to unit length; (5) it is
    written in xtc's convention, camera frame with x to the right, y UP and z TOWARD the camera,
    i.e. ``(nx, -ny, -nz)`` of the frame above. So a surface seen head-on has ``n_z > 0``
    (visible surfaces have ``n_z >= 0`` up to grazing views off the optical axis) and a floor
    seen by a level camera is about ``(0, 1, 0)``. The defaults (``sigma`` = ``step`` = 3 px at
    640x480) average out the Kinect's depth quantisation (a few cm steps at 2-4 m) at the cost of
    rounding creases over about 6 px.

    A pixel gets the zero vector (read by xtc as invalid) where its depth or one of the four
    depths its tangents use is 0 or not finite, and within ``step`` px of the image border.
    Across depth discontinuities the tangents span two surfaces; those normals are kept.
    """
    from scipy.ndimage import gaussian_filter

    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise DatasetError(f"derive_normals: depth must be (H,W), got {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    d = np.where(valid, d, 0.0)
    h, w = d.shape
    s = int(step)
    normal = np.zeros((h, w, 3), dtype=np.float32)
    if s < 1 or h <= 2 * s or w <= 2 * s:
        return normal
    u = np.arange(1, w + 1, dtype=np.float64)[None, :]
    v = np.arange(1, h + 1, dtype=np.float64)[:, None]
    points = np.stack([(u - cx) / fx * d, (v - cy) / fy * d, d], axis=-1)  # 0 where invalid
    if sigma > 0:
        weight = gaussian_filter(valid.astype(np.float64), sigma, mode="constant",
                                 truncate=2.0)
        points = np.stack([gaussian_filter(points[..., c], sigma, mode="constant", truncate=2.0)
                           for c in range(3)], axis=-1) / np.maximum(weight, 1e-12)[..., None]
    inner = (slice(s, h - s), slice(s, w - s))
    du = points[s:h - s, 2 * s:] - points[s:h - s, :w - 2 * s]
    dv = points[2 * s:, s:w - s] - points[:h - 2 * s, s:w - s]
    ok = (valid[inner] & valid[s:h - s, 2 * s:] & valid[s:h - s, :w - 2 * s]
          & valid[2 * s:, s:w - s] & valid[:h - 2 * s, s:w - s])
    n = np.cross(du, dv)
    n = np.where(((n * points[inner]).sum(-1) > 0)[..., None], -n, n)  # face the camera
    length = np.linalg.norm(n, axis=-1)
    ok &= length > 1e-12
    n = n / np.maximum(length, 1e-12)[..., None]
    n = np.stack([n[..., 0], -n[..., 1], -n[..., 2]], axis=-1)  # y down, z forward -> y up, z back
    normal[inner] = np.where(ok[..., None], n, 0.0)
    return normal


def read_splits(path: Union[str, Path], n: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based ``(train, test)`` image indices from the official ``splits.mat``.

    The file holds ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based indices into the 1449
    images of the labelled release; both must lie in 1..n, hold no repeats and not overlap.
    The order of the file is kept (``train/{i}.npy`` is the i-th entry of ``trainNdxs``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"split file {path} not found; download the official splits.mat "
                           f"(http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat, "
                           f"linked from the NYU Depth V2 page) and pass it as splits= "
                           f"(--splits), or put it next to nyu_depth_v2_labeled.mat")
    data = _load_splits(path)
    found = sorted(k for k in data if not k.startswith("__"))
    chosen = []
    for key in ("trainNdxs", "testNdxs"):
        if key not in data:
            raise DatasetError(f"split file {path} has no {key!r} (found {found}); it must be "
                               f"the official NYUv2 splits.mat with trainNdxs and testNdxs")
        idx = np.asarray(data[key]).ravel()
        if idx.size == 0 or idx.dtype.kind not in "iuf" or not np.all(idx == np.round(idx)):
            raise DatasetError(f"{path}: {key} must be a non-empty list of integer image "
                               f"indices (1-based), got dtype {idx.dtype}, {idx.size} values")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 1) | (idx > n)]
        if bad.size:
            raise DatasetError(f"{path}: {key} holds indices {bad[:5].tolist()} outside 1..{n} "
                               f"(1-based indices into the {n} images of the .mat file); use the "
                               f"splits.mat that belongs to nyu_depth_v2_labeled.mat (1449 "
                               f"images), or re-download a truncated .mat")
        if np.unique(idx).size != idx.size:
            raise DatasetError(f"{path}: {key} lists some images more than once; use the "
                               f"official splits.mat")
        chosen.append(idx - 1)
    both = np.intersect1d(chosen[0], chosen[1])
    if both.size:
        raise DatasetError(f"{path}: images {(both[:5] + 1).tolist()} are in both trainNdxs and "
                           f"testNdxs; train and test must be disjoint (use the official "
                           f"splits.mat)")
    return chosen[0], chosen[1]


def prepare_nyuv2(mat: Union[str, Path], out: Union[str, Path],
                  splits: Optional[Union[str, Path]] = None, *, normals: str = "derive",
                  size: tuple = (288, 384)) -> Path:
    """Official labelled NYUv2 -> MTAN layout at ``size`` (H, W); returns ``out``.

    ``mat`` is ``nyu_depth_v2_labeled.mat``; ``splits`` the official ``splits.mat`` (default:
    ``splits.mat`` next to ``mat``). ``out/train`` gets the 795 ``trainNdxs`` images and
    ``out/val`` the 654 ``testNdxs`` images (xtc reads ``val/`` as its test split), numbered
    0..N-1 in the order of the split file. Per image:

    * crop rows 45:471, cols 41:601 of the 480x640 frame (:data:`CROP`, the standard NYU valid
      crop, removing the white border), then resize the 426x560 crop to ``size``. This is what
      xtc does; MTAN's 288x384 files were also a crop plus a resize, by a recipe that was not
      published, so pixels do not line up exactly with MTAN's files;
    * image ``(H,W,3)`` float32 RGB / 255 in [0, 1], area-averaged resize;
    * label ``(H,W)`` float32: raw ids -> 40 classes -> 13 classes (:func:`label_lut`, void and
      unlabelled = -1), nearest resize;
    * depth ``(H,W,1)`` float32 metres, 0 = invalid (non-finite or <= 0), nearest resize with
      the *same* source pixels as the label. It is the release's ``depths`` array, the
      in-painted (hole-filled) Kinect depth; ``rawDepths`` is not used;
    * normal ``(H,W,3)`` float32 (``normals="derive"``; ``"none"`` writes no ``normal/``):
      :func:`derive_normals` on the full 480x640 depth with the Kinect colour intrinsics, then
      the same nearest sampling as depth; unit length, x right, y up, z toward the camera,
      (0,0,0) = invalid. These normals are derived from the Kinect depth by xtc and are NOT
      MTAN's normal files (Eigen & Fergus's preprocessing): results with them are not
      comparable with the published normal columns. For the published protocol, use MTAN's
      preprocessed NYUv2 linked from https://github.com/lorenmt/mtan (README).

    Bad input (missing or wrong files, split indices out of range, a non-empty ``out``) raises
    :class:`DatasetError` before anything is written; the tree is built in a temporary sibling
    folder and renamed to ``out`` at the end, so a failure leaves nothing half-written.
    """
    if normals not in NORMALS:
        raise DatasetError(f"normals={normals!r}: choose 'derive' (normals from the depth) or "
                           f"'none' (no normal/ folder)")
    h, w = _check_size(size)
    mat = Path(mat).expanduser()
    if not mat.is_file():
        raise DatasetError(f"NYUv2 file {mat} not found; download nyu_depth_v2_labeled.mat "
                           f"(~2.8 GB) from https://cs.nyu.edu/~silberman/datasets/"
                           f"nyu_depth_v2.html (see docs/nyuv2.md)")
    splits_path = mat.with_name("splits.mat") if splits is None else Path(splits)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"output folder {out} already exists and is not empty; remove it "
                           f"or choose another output path")
    h5py = _import_h5py()
    if not h5py.is_hdf5(mat):
        raise DatasetError(f"{mat} is not an HDF5 file (MATLAB v7.3); the labelled release "
                           f"nyu_depth_v2_labeled.mat is one: is this the right file, or a "
                           f"partial download (re-download it)?")
    try:
        f = h5py.File(mat, "r")
    except OSError as exc:
        raise DatasetError(f"cannot open {mat} ({exc}); re-download "
                           f"nyu_depth_v2_labeled.mat") from None
    with f:
        n = _check_arrays(f, mat)
        train, test = read_splits(splits_path, n)
        lut = label_lut()
        rows = CROP[0].start + nearest_indices(CROP[0].stop - CROP[0].start, h)
        cols = CROP[1].start + nearest_indices(CROP[1].stop - CROP[1].start, w)
        subs = ("image", "label", "depth") + (("normal",) if normals == "derive" else ())

        def write(tmp: Path) -> None:
            for split, indices in (("train", train), ("val", test)):
                for sub in subs:
                    (tmp / split / sub).mkdir(parents=True)
                for i, k in enumerate(_progress(indices, f"nyuv2 {split}")):
                    arrays = _convert(f, int(k), lut, rows, cols, (h, w), normals == "derive")
                    for sub in subs:
                        np.save(tmp / split / sub / f"{i}.npy", arrays[sub])

        return _write_atomically(out, write)


def _convert(f, k: int, lut: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: tuple,
             with_normals: bool) -> dict:
    """Image ``k`` (0-based) of the open .mat as the output arrays."""
    rgb = np.asarray(f["images"][k]).transpose(2, 1, 0)      # (3,W,H) -> (H,W,3)
    depth = np.asarray(f["depths"][k], dtype=np.float64).T  # (W,H) -> (H,W) metres
    raw = np.asarray(f["labels"][k]).T.astype(np.int64)     # (W,H) -> (H,W)
    if raw.min() < 0 or raw.max() > NUM_RAW_CLASSES:
        raise DatasetError(f"image {k + 1}: label ids range {raw.min()}..{raw.max()}, outside "
                           f"0..{NUM_RAW_CLASSES} (the raw NYU classes); is this "
                           f"nyu_depth_v2_labeled.mat?")
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    crop = rgb[CROP].astype(np.float32) / 255.0
    arrays = {
        "image": np.clip(area_resize(crop, size), 0.0, 1.0).astype(np.float32),
        "label": lut[raw[rows][:, cols]].astype(np.float32),
        "depth": depth[rows][:, cols].astype(np.float32)[..., None],
    }
    if with_normals:
        arrays["normal"] = np.ascontiguousarray(derive_normals(depth)[rows][:, cols])
    return arrays


def _check_arrays(f, mat: Path) -> int:
    """Number of images; checks names, shapes (h5py order N,3,W,H / N,W,H) and dtypes."""
    import h5py

    have = sorted(f.keys())
    for key in ("images", "depths", "labels"):
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise DatasetError(f"{mat} has no {key!r} array (found {have}); it must be the "
                               f"labelled release nyu_depth_v2_labeled.mat with images, depths "
                               f"and labels")
    images, depths, labels = f["images"], f["depths"], f["labels"]
    height, width = NYU_SIZE
    if images.ndim != 4 or images.shape[1:] != (3, width, height):
        raise DatasetError(f"{mat}: 'images' has shape {images.shape} as read by h5py; the "
                           f"labelled release reads as (N, 3, {width}, {height}) (MATLAB's "
                           f"{height}x{width}x3xN with the axes reversed)")
    n = images.shape[0]
    for name, array in (("depths", depths), ("labels", labels)):
        if array.shape != (n, width, height):
            raise DatasetError(f"{mat}: {name!r} has shape {array.shape} as read by h5py; it "
                               f"must be (N, {width}, {height}) with N = {n} like 'images'")
    if n == 0:
        raise DatasetError(f"{mat} holds no images")
    if images.dtype != np.uint8:
        raise DatasetError(f"{mat}: 'images' has dtype {images.dtype}; the release's images are "
                           f"uint8 RGB")
    if labels.dtype.kind not in "iu" or depths.dtype.kind != "f":
        raise DatasetError(f"{mat}: 'labels' must be integer class ids and 'depths' float "
                           f"metres, got {labels.dtype} and {depths.dtype}")
    return n


def _load_splits(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except NotImplementedError:  # a MATLAB v7.3 (HDF5) copy of the split file
        h5py = _import_h5py()
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]) for k in f if isinstance(f[k], h5py.Dataset)}
    except Exception as exc:  # scipy raises ValueError, MatReadError, ... for non-.mat files
        raise DatasetError(f"cannot read split file {path} ({exc}); it must be the official "
                           f"splits.mat (MATLAB) with trainNdxs and testNdxs") from None


def _check_size(size) -> tuple:
    try:
        h, w = (int(x) for x in size)
    except (TypeError, ValueError):
        raise DatasetError(f"size={size!r} must be (height, width), e.g. (288, 384)") from None
    if h <= 0 or w <= 0:
        raise DatasetError(f"size={size!r}: height and width must be positive")
    return h, w


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise SetupError("reading nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5) needs h5py: "
                         "pip install h5py") from None
    return h5py
