r"""SyntheticCity: procedural street scenes whose depth follows from class and position.

A pinhole camera (focal length ``f`` px, principal column ``c_x``, horizon row ``y_h``) at
height ``h`` m over a flat street. Scene parameters are drawn in metres, so one (seed, index)
gives the same scene at every resolution.

* **Ground** (``flat``, road and pavement): a pixel at row ``y > y_h`` sees the ground at
  ``Z = f h / (y - y_h)``, so its inverse depth ``1/Z = (y - y_h) / (f h)`` grows linearly
  toward the bottom of the image. A ground pixel at column ``x`` has lateral position
  ``X = (x - c_x) Z / f``: road where ``|X| < R``, pavement beyond, lane markings on ``X = 0``.
* **Upright things** (``vehicle``, ``human``, ``object`` = poles and signs, ``nature`` = trees)
  stand on the ground at distance ``Z`` and lateral ``X``: the foot row is ``y_h + f h / Z``,
  the top row ``y_h + f (h - H_obj) / Z``, columns ``c_x + f (X \pm W_obj/2) / Z``; the whole
  front face has inverse depth ``1/Z``.
* **Facades** (``construction``) are vertical planes along the street at ``X = \pm X_f``: at
  column ``x`` they are at ``Z(x) = f X_f / |x - c_x|`` (inverse depth linear in ``x``), from
  their foot ``y_h + f h / Z`` up to ``y_h - f (H_b - h) / Z`` for a block of height ``H_b``.
  A backdrop block row closes the street at ``Z_back``.
* **Sky**: everything no surface covers; inverse depth 0, ``depth_mask`` False.
* **Occlusion**: surfaces are painted far to near with a z-test, so each pixel's class and
  depth come from the nearest surface; segment boundaries are depth discontinuities except
  where a thing touches the ground (its foot), where depth is continuous, as in real scenes.
* **Stereo holes**: 1-2 px left of each rising depth edge (what a right camera cannot see)
  are partly marked invalid; an optional ego-car hood at the bottom is ignore (-1) and invalid.
* **Surface normals** (exact, from the same geometry; each pixel's normal is the normal of the
  surface that won its z-test). Camera frame: ``x`` to the right, ``y`` **up**, ``z`` **toward
  the camera** (out of the image); unit vectors facing the camera. Ground (road, pavement)
  ``(0, 1, 0)``; the left facade (``X < 0``) faces the street, ``(1, 0, 0)``; the right facade
  ``(-1, 0, 0)``; the backdrop and every upright thing (vehicles, humans, poles, signs, trees,
  hedges: fronto-parallel faces at constant inverse depth) ``(0, 0, 1)``. Sky and the ego-car
  hood have no surface: zero vector, ``normal_mask`` False. ``normal_mask`` means "the surface is
  known", not "depth is valid": stereo-hole pixels keep their (exact) normal and stay valid, so
  ``normal_mask`` is ``depth_mask`` plus the stereo holes (and, like the ground, pixels whose
  depth is clipped at 0.4922 are valid in both). Normals cost no random numbers: every other
  output is bit-identical to what the generator gave before normals existed.

Units: the target is Cityscapes-like scaled disparity ``t = K / Z`` with
``K = 0.2 m * 2262 px / 256 = 1.767 m`` (Cityscapes baseline x focal length, disparity/256 as in
MTAN's files), clipped to 0.4922. With ``f = (1.0..1.15) W`` and ``h = 1.2..1.6`` m the bottom
row of a 128x256 image stays below ~0.49, so values lie in ~0..0.5 like MTAN Cityscapes.

Appearance: per-image palette jitter (hue mix, brightness, contrast), per-instance colours
(cars, clothes, building blocks), textures (blotchy noise, facade windows and floors, lane
markings), a global illumination gain and tint, and haze ``T = exp(-Z / Z_haze)`` blending
toward the haze colour with distance.

Items (:class:`SyntheticCity`): ``image``, ``seg_target``, ``depth_target``, ``depth_mask``,
``normal_target (3,H,W)`` float32 (the convention above) and ``normal_mask (1,H,W)`` bool.

Examples:
    >>> s = render_scene(0, 0, 64, 128)
    >>> s["image"].shape, s["label"].dtype, s["depth"].dtype
    ((64, 128, 3), dtype('int64'), dtype('float32'))
    >>> s["normal"].shape, s["normal"].dtype, s["normal_mask"].dtype
    ((64, 128, 3), dtype('float32'), dtype('bool'))
    >>> s["normal"][-10, 64].tolist(), bool(s["normal_mask"][s["label"] == SKY].any())
    ([0.0, 1.0, 0.0], False)
    >>> sorted(s["camera"])
    ['c_x', 'cam_h', 'f', 'y_h']
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch

from xtc.data.errors import DatasetError
from xtc.data.mtan import SplitDataset, check_split, resolve_augment, split_indices

# Unchanged by the normals: image, label and depth are bit-identical to v1's, so fingerprints
# (and cached or prepared data) of earlier runs stay valid; normals are a pure addition.
GENERATOR_VERSION = "synthetic-city-v1"
CLASS_NAMES = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
FLAT, CONSTRUCTION, OBJECT, NATURE, SKY, HUMAN, VEHICLE = range(7)
DISPARITY_SCALE = 0.2 * 2262 / 256  # K in t = K / Z (metres)
MAX_TARGET = 0.4922
TEST_OFFSET = 1 << 30  # test item j is scene index TEST_OFFSET + j (disjoint from the pool)
# surface ids of the normal buffer: row i of NORMALS is the unit normal (module docstring)
N_NONE, N_GROUND, N_LEFT, N_RIGHT, N_FRONT = range(5)
NORMALS = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1]], np.float32)
_NORMALS_T = np.ascontiguousarray(NORMALS.T)  # (3, n_surfaces): a channels-first lookup


class _Canvas:
    """Z-buffered painting: ``inv`` (1/m, 0 = nothing), ``label``, ``inst`` (colour id),
    ``surf`` (surface id: the row of ``NORMALS`` of the surface that won the z-test)."""

    def __init__(self, inv: np.ndarray, label: np.ndarray, inst: np.ndarray,
                 surf: np.ndarray):
        self.inv, self.label, self.inst, self.surf = inv, label, inst, surf
        self.colours: list = []  # RGB per instance id, id = position

    def new_colour(self, rgb) -> int:
        self.colours.append(np.asarray(rgb, dtype=np.float32))
        return len(self.colours) - 1

    def paint(self, y0, y1, x0, x1, shape: np.ndarray, inv: float, label: int, inst) -> None:
        """Paint ``shape`` (bool, (y1-y0, x1-x0)) at constant inverse depth where nearer: a
        fronto-parallel face, so its normal is ``(0, 0, 1)``."""
        region = self.inv[y0:y1, x0:x1]
        m = shape & (inv > region)
        np.copyto(region, inv, where=m, casting="unsafe")
        np.copyto(self.label[y0:y1, x0:x1], label, where=m, casting="unsafe")
        np.copyto(self.inst[y0:y1, x0:x1], inst, where=m, casting="unsafe")
        np.copyto(self.surf[y0:y1, x0:x1], N_FRONT, where=m, casting="unsafe")


def _jitter_colour(rng: np.random.Generator, rgb, spread: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(rgb) + rng.normal(0, spread, 3), 0.02, 0.98)


def render_scene(seed: int, index: int, height: int = 128, width: int = 256) -> dict:
    """Render scene ``index`` of stream ``seed``: a pure, deterministic function.

    Returns:
        ``image`` (H,W,3) float32 in [0, 1]; ``label`` (H,W) int64 in 0..6, -1 = ignore;
        ``depth`` (H,W) float32 inverse depth ``K/Z`` (module docstring), 0 = invalid;
        ``mask`` (H,W) bool, ``depth > 0``; ``normal`` (H,W,3) float32 unit surface normals
        (module docstring: x right, y up, z toward the camera), zero where ``normal_mask``
        (H,W) bool is False (sky, hood); ``camera`` dict of floats ``f`` (px), ``c_x``,
        ``y_h`` (px, pixel centres at ``index + 0.5``) and ``cam_h`` (m).
    """
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise DatasetError(f"synthetic-city size {height}x{width}: height and width must be "
                           f"positive multiples of 32")
    scene_ss, tex_ss = np.random.SeedSequence([seed, index]).spawn(2)
    rng = np.random.Generator(np.random.PCG64(scene_ss))  # geometry: resolution-independent
    trng = np.random.Generator(np.random.PCG64(tex_ss))  # pixel textures
    H, W = height, width

    # ---- camera and street layout (metres)
    f = W * rng.uniform(1.0, 1.15)
    cam_h = rng.uniform(1.2, 1.6)
    y_h = H / 3 + rng.uniform(-0.03, 0.03) * H
    c_x = W / 2 + rng.uniform(-0.04, 0.04) * W
    road = rng.uniform(4.0, 7.0)  # half-width R
    pave = rng.uniform(2.0, 4.0)
    z_back = rng.uniform(60, 160)
    z_haze = rng.uniform(60, 250)

    ys = np.arange(H, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(W, dtype=np.float32)[None, :] + 0.5
    ground_inv = np.maximum((ys - y_h) / (f * cam_h), 0).astype(np.float32)  # (H,1)
    inv = np.broadcast_to(ground_inv, (H, W)).copy()
    label = np.where(inv > 0, FLAT, SKY).astype(np.int64)
    canvas = _Canvas(inv, label, np.zeros((H, W), np.int16),
                     (inv > 0).astype(np.int8))  # N_GROUND (1) below the horizon, else N_NONE

    # ---- palettes: a random 3x3 near-identity mix = hue jitter for the whole image
    mix = np.eye(3) + rng.normal(0, 0.08, (3, 3))
    sky_c = canvas.new_colour(_jitter_colour(rng, (0.55, 0.68, 0.88)))  # inst 0
    road_c = canvas.new_colour(_jitter_colour(rng, (0.30, 0.30, 0.32), 0.04))
    pave_c = canvas.new_colour(_jitter_colour(rng, (0.55, 0.50, 0.47)))
    mark_c = canvas.new_colour((0.85, 0.85, 0.8))
    window_c = canvas.new_colour(_jitter_colour(rng, (0.18, 0.22, 0.3), 0.05))
    building = _jitter_colour(rng, [(0.6, 0.5, 0.4), (0.5, 0.5, 0.52), (0.7, 0.62, 0.5),
                                    (0.45, 0.35, 0.3)][rng.integers(4)], 0.06)
    foliage = _jitter_colour(rng, (0.28, 0.42, 0.18), 0.05)
    gz = 1.0 / np.maximum(ground_inv, 1e-6)  # ground distance per row (H,1)
    gx = np.abs((xs - c_x) / f * gz)  # |ground lateral position| (H,W)
    marks = ((gx < 0.08) & (gz / 9.0 - np.floor(gz / 9.0) < 0.5)) | (np.abs(gx - road + 0.2) < 0.07)
    ground = np.where(marks & (gz < 80), mark_c, np.where(gx > road, pave_c, road_c))
    canvas.inst[:] = np.where(inv > 0, ground, sky_c)

    # ---- facades along both sides: blocks of random length and height, some gaps
    z = np.cumsum(rng.uniform(8, 25, 24)) + rng.uniform(-10, 2)  # block far ends (m)
    heights = rng.uniform(6, 25, 24) * (rng.random(24) > 0.12)
    block_c = [canvas.new_colour(np.clip(building * rng.uniform(0.75, 1.2), 0, 1))
               for _ in range(24)]
    side_x = np.where(xs[0] < c_x, -(road + pave + rng.uniform(0, 1)),
                      road + pave + rng.uniform(0, 1))  # (W,)
    fz = (f * np.abs(side_x) / np.maximum(np.abs(xs[0] - c_x), 1e-3)).astype(np.float32)
    block = np.minimum(np.searchsorted(z, fz), 23)
    fh = np.where((fz < z_back) & (fz > 0.5), heights[block], 0.0)
    top = y_h - f * (fh - cam_h) / fz  # (W,)
    finv = (1.0 / fz).astype(np.float32)
    shape = (ys >= top[None]) & (fh[None] > 0)
    fac = shape & (finv[None] > inv)
    np.copyto(inv, finv[None], where=fac)
    np.copyto(label, CONSTRUCTION, where=fac)
    np.copyto(canvas.surf, np.where(side_x < 0, N_LEFT, N_RIGHT).astype(np.int8)[None], where=fac)
    # windows: floors every ~3.2 m, bays every ~3 m along the street, above the ground floor
    height_m = cam_h - (ys - y_h) * fz[None] / f
    floor_h, bay = rng.uniform(2.8, 3.6), rng.uniform(2.5, 4.0)
    level = height_m / floor_h - np.floor(height_m / floor_h)
    along = fz / bay - np.floor(fz / bay)
    win = ((level > 0.35) & (level < 0.8) & (along < 0.5)[None] & (height_m > 3.0)
           & (height_m < fh[None] - 1.0))
    ids = np.asarray(block_c, np.int16)[block]
    np.copyto(canvas.inst, np.where(win, np.int16(window_c), ids[None]), where=fac)

    # ---- backdrop closing the street at z_back (a few blocks of different heights)
    cuts = np.sort(rng.uniform(0, W, 4)).astype(int)
    back_h = rng.uniform(0, 30, 5) * (rng.random(5) > 0.2)
    col_h = back_h[np.searchsorted(cuts, np.arange(W), side="right")]
    back_top = y_h - f * (col_h - cam_h) / z_back
    foot = int(np.clip(np.ceil(y_h + f * cam_h / z_back), 0, H))
    back_c = canvas.new_colour(np.clip(building * 0.9, 0, 1))
    canvas.paint(0, foot, 0, W, (ys[:foot] >= back_top[None]) & (col_h[None] > 0),
                 1.0 / z_back, CONSTRUCTION, back_c)

    # ---- things standing on the ground, painted far to near
    things = []
    for _ in range(rng.integers(2, 8)):  # vehicles in lanes
        things.append(("vehicle", rng.uniform(5, 70), rng.choice([-1, 1]) * road *
                       rng.uniform(0.2, 0.75), rng.uniform(1.4, 2.0), rng.uniform(1.8, 5.0)))
    for _ in range(rng.integers(0, 7)):  # pedestrians, mostly on the pavement
        x = rng.choice([-1, 1]) * (road + rng.uniform(0.3, pave - 0.3) if rng.random() < 0.8
                                   else rng.uniform(0, road))
        things.append(("human", rng.uniform(4, 45), x, rng.uniform(1.5, 1.9),
                       rng.uniform(0.45, 0.7)))
    for _ in range(rng.integers(1, 6)):  # poles with signs on the kerb
        things.append(("object", rng.uniform(5, 80), rng.choice([-1, 1]) * (road + 0.3),
                       rng.uniform(3, 7), rng.uniform(0.15, 0.3)))
    for _ in range(rng.integers(0, 6)):  # trees and hedges in front of the facades
        hedge = rng.random() < 0.3
        things.append(("nature", rng.uniform(6, 80), rng.choice([-1, 1]) *
                       (road + pave - rng.uniform(0.5, 1.2)),
                       rng.uniform(0.8, 1.5) if hedge else rng.uniform(4, 9),
                       rng.uniform(3, 8) if hedge else rng.uniform(2.5, 5)))
    for kind, dist, x, obj_h, obj_w in sorted(things, key=lambda t: -t[1]):
        _paint_thing(canvas, rng, kind, dist, x, obj_h, obj_w, f, cam_h, y_h, c_x, H, W, foliage)

    # ---- ego-car hood (ignore) in some images
    if rng.random() < 0.3:
        hood = H - (H * rng.uniform(0.05, 0.09) + 0.1 * H * ((xs - c_x) / W) ** 2)
        m = ys >= hood
        np.copyto(label, -1, where=m)
        np.copyto(inv, 0.0, where=m)
        np.copyto(canvas.surf, N_NONE, where=m, casting="unsafe")
        np.copyto(canvas.inst, canvas.new_colour(_jitter_colour(rng, (0.15, 0.15, 0.17), 0.03)),
                  where=m, casting="unsafe")

    # ---- depth target, stereo holes left of rising depth edges
    depth = np.minimum(inv * DISPARITY_SCALE, MAX_TARGET).astype(np.float32)
    rise = np.zeros((H, W), bool)
    rise[:, :-1] = (depth[:, 1:] - depth[:, :-1]) > 0.01
    rise[:, :-2] |= rise[:, 1:-1]
    gate = trng.random((H // 4, W // 8), dtype=np.float32) < 0.6
    holes = rise & np.repeat(np.repeat(gate, 4, 0), 8, 1)
    np.copyto(depth, 0.0, where=holes)

    # ---- appearance (computed channels-first (3,H,W); returned as an (H,W,3) view)
    lut = (np.stack(canvas.colours) @ mix.T).astype(np.float32)  # (n_inst, 3)
    image = np.take(lut.T, canvas.inst, axis=1)  # (3,H,W)
    blotch = trng.standard_normal((H // 4, W // 4)).astype(np.float32)
    blotch = np.repeat(np.repeat(blotch, 4, 0), 4, 1)
    grain = trng.random((H, W), dtype=np.float32) - 0.5
    image *= 1.0 + 0.05 * blotch + 0.12 * grain
    sky = label == SKY
    trans = np.exp(-1.0 / (np.maximum(inv, 1e-6) * z_haze))
    trans = np.where(sky | (label < 0), np.float32(1.0), trans)  # sky: gradient below instead
    haze = (canvas.colours[sky_c] * 0.6 + 0.35).astype(np.float32)[:, None, None]
    sky_grad = np.clip((ys - y_h * 0.2) / (y_h + 1), 0, 1) * sky  # lighter toward the horizon
    image = image * (trans - 0.3 * sky_grad) + haze * (1 - trans + 0.3 * sky_grad)
    gain = (rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)[:, None, None]
    contrast = np.float32(rng.uniform(0.8, 1.2))
    mean = image[:, ::4, ::4].mean(axis=(1, 2), keepdims=True)
    image = np.clip(((image - mean) * contrast + mean) * gain, 0.0, 1.0).astype(np.float32)
    image = image.transpose(1, 2, 0)
    # ---- normals of the surfaces that won the z-test (channels-first, an (H,W,3) view)
    normal = np.take(_NORMALS_T, canvas.surf, axis=1)  # (3,H,W); faster than NORMALS[surf]
    camera = {"f": float(f), "c_x": float(c_x), "y_h": float(y_h), "cam_h": float(cam_h)}
    return {"image": image, "label": label, "depth": depth, "mask": depth > 0,
            "normal": normal.transpose(1, 2, 0), "normal_mask": canvas.surf != N_NONE,
            "camera": camera}


def _paint_thing(canvas: _Canvas, rng: np.random.Generator, kind: str, dist: float, x: float,
                 obj_h: float, obj_w: float, f: float, cam_h: float, y_h: float, c_x: float,
                 H: int, W: int, foliage: np.ndarray) -> None:
    """Paint one upright thing standing on the ground at (x, dist) metres."""
    foot = y_h + f * cam_h / dist
    top_ = foot - f * obj_h / dist
    left = c_x + f * (x - obj_w / 2) / dist
    right = c_x + f * (x + obj_w / 2) / dist
    y0, y1 = int(np.clip(round(top_), 0, H)), int(np.clip(round(foot), 0, H))
    x0, x1 = int(np.clip(round(left), 0, W)), int(np.clip(round(right), 0, W))
    if y1 - y0 < 1 or x1 - x0 < 1:
        return
    v = ((np.arange(y0, y1) + 0.5 - top_) / max(foot - top_, 1e-3))[:, None]  # 0 top .. 1 foot
    u = ((np.arange(x0, x1) + 0.5 - left) / max(right - left, 1e-3))[None, :]  # 0 .. 1
    inv = 1.0 / dist
    if kind == "vehicle":
        body = canvas.new_colour(_jitter_colour(rng, rng.uniform(0.05, 0.9, 3), 0.02))
        glass = canvas.new_colour((0.12, 0.15, 0.2))
        cabin = (v < 0.45) & (u > 0.12 + 0.2 * (0.45 - v)) & (u < 0.88 - 0.2 * (0.45 - v))
        shape = cabin | (v >= 0.45)
        inst = np.where(cabin & (v > 0.08) & (u > 0.2) & (u < 0.8), glass, body)
        inst = np.where((v > 0.88) & ((u < 0.3) | (u > 0.7)), glass, inst).astype(np.int16)
        canvas.paint(y0, y1, x0, x1, shape, inv, VEHICLE, inst)
    elif kind == "human":
        cloth = canvas.new_colour(_jitter_colour(rng, rng.uniform(0.05, 0.8, 3), 0.02))
        skin = canvas.new_colour(_jitter_colour(rng, (0.75, 0.58, 0.45), 0.1))
        head = ((u - 0.5) / 0.22) ** 2 + ((v - 0.07) / 0.07) ** 2 < 1
        body = (v >= 0.13) & (np.abs(u - 0.5) < 0.5 - 0.25 * np.abs(v - 0.4))
        inst = np.where(head, skin, cloth).astype(np.int16)
        canvas.paint(y0, y1, x0, x1, head | body, inv, HUMAN, inst)
    elif kind == "object":
        grey = canvas.new_colour(_jitter_colour(rng, (0.5, 0.5, 0.48), 0.05))
        canvas.paint(y0, y1, x0, x1, np.ones((y1 - y0, x1 - x0), bool), inv, OBJECT, grey)
        sign_w, sign_h = 0.7, 0.6  # a sign board at the top of the pole
        sy0 = int(np.clip(round(top_), 0, H))
        sy1 = int(np.clip(round(top_ + f * sign_h / dist), 0, H))
        sx0 = int(np.clip(round(c_x + f * (x - sign_w / 2) / dist), 0, W))
        sx1 = int(np.clip(round(c_x + f * (x + sign_w / 2) / dist), 0, W))
        if sy1 > sy0 and sx1 > sx0:
            board = canvas.new_colour([(0.9, 0.8, 0.1), (0.1, 0.3, 0.8), (0.85, 0.15, 0.1)]
                                      [rng.integers(3)])
            canvas.paint(sy0, sy1, sx0, sx1, np.ones((sy1 - sy0, sx1 - sx0), bool), inv,
                         OBJECT, board)
    else:  # nature: a tree (trunk + noisy crown) or a hedge (noisy top edge)
        leaf = canvas.new_colour(np.clip(foliage * rng.uniform(0.8, 1.2), 0, 1))
        bumps = rng.uniform(-0.25, 0.25, 6)
        wobble = np.interp(u, np.linspace(0, 1, 6), bumps)  # (1,w) irregular outline
        if obj_h < 2.0:
            shape = v > 0.15 + 0.5 * np.abs(wobble)
            inst = leaf
        else:
            crown = ((u - 0.5) / 0.5) ** 2 + ((v - 0.38) / 0.38) ** 2 < 1 + wobble
            trunk = (v > 0.6) & (np.abs(u - 0.5) < 0.06)
            shape = crown | trunk
            bark = canvas.new_colour((0.3, 0.22, 0.15))
            inst = np.where(crown, leaf, bark).astype(np.int16)
        canvas.paint(y0, y1, x0, x1, shape, inv, NATURE, inst)


class SyntheticCity(SplitDataset):
    """Procedural street scenes (module docstring), rendered on the fly.

    Splits: the train pool is scene indices ``0..train_size-1`` (``val`` = a seeded
    ``val_fraction`` of it, ``train`` = the rest); ``test`` is ``TEST_OFFSET + 0..test_size-1``.
    Items: ``image (3,H,W)`` float32 in [0,1], ``seg_target (H,W)`` int64 (-1 ignore),
    ``depth_target (1,H,W)`` float32 inverse depth (0 invalid), ``depth_mask (1,H,W)`` bool,
    ``normal_target (3,H,W)`` float32 unit normals (x right, y up, z toward the camera; zero
    where invalid) and ``normal_mask (1,H,W)`` bool (surface known: also True on stereo holes).
    """

    name = "synthetic-city"
    tasks = ("seg", "depth", "normal")  # the tasks whose targets :meth:`read` provides
    batch_keys = ("image", "seg_target", "depth_target", "depth_mask", "normal_target",
                  "normal_mask")  # what an item holds (SplitDataset.keep selects from them)
    num_classes = 7
    class_names = CLASS_NAMES
    depth_units = "inverse depth"
    depth_range = (0.0, 1.0)  # nominal range of the unit (values reach 0.4922, as Cityscapes)
    ignore_index = -1

    def __init__(self, split: str, root: Optional[str] = None, *, height: int = 128,
                 width: int = 256, train_size: int = 1000, test_size: int = 200,
                 val_fraction: float = 0.1, augment: Optional[bool] = None, seed: int = 0,
                 split_seed: Optional[int] = None):
        check_split(split)
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise DatasetError(f"synthetic-city size {height}x{width}: set data.height and "
                               f"data.width to positive multiples of 32")
        if train_size <= 0 or test_size <= 0:
            raise DatasetError(f"synthetic-city train_size={train_size}, test_size={test_size} "
                               f"must be positive")
        self.split, self.height, self.width, self.seed, self.epoch = split, height, width, seed, 0
        self.split_seed = seed if split_seed is None else split_seed
        self.train_size, self.test_size, self.val_fraction = train_size, test_size, val_fraction
        self.augment = resolve_augment(split, augment)
        if split == "test":
            self.indices = TEST_OFFSET + np.arange(test_size)
        else:
            self.indices = split_indices(train_size, split, val_fraction, self.split_seed)

    def read(self, i: int) -> dict:
        """Scene ``i`` of the pool as an item (no augmentation)."""
        s = render_scene(self.seed, i, self.height, self.width)
        depth = torch.from_numpy(s["depth"])[None]
        return {"image": torch.from_numpy(np.ascontiguousarray(s["image"].transpose(2, 0, 1))),
                "seg_target": torch.from_numpy(s["label"]), "depth_target": depth,
                "depth_mask": depth > 0,
                "normal_target": torch.from_numpy(np.ascontiguousarray(
                    s["normal"].transpose(2, 0, 1))),
                "normal_mask": torch.from_numpy(s["normal_mask"])[None]}

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the generator version and every parameter that shapes the data."""
        key = (f"{GENERATOR_VERSION}:{self.split}:{self.seed}:{self.height}x{self.width}:"
               f"{self.train_size}:{self.test_size}:{self.val_fraction}")
        if self.split_seed != self.seed:  # one seed for both: the fingerprint of earlier runs
            key += f":split{self.split_seed}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"SyntheticCity(split={self.split!r}, n={len(self)}, size={self.height}x"
                f"{self.width}, seed={self.seed}, augment={self.augment})")
