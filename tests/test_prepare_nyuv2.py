"""prepare_nyuv2 on a tiny fake labelled release in the real file's HDF5 layout (5 images)."""

import h5py
import numpy as np
import pytest

from tests.fixtures import nyuv2_mat as fake
from xtc.data import DatasetError, build_dataset
from xtc.data.nyuv2 import CLASSES_13
from xtc.data.prepare_nyuv2 import (CROP, NORMAL_STEP, NYU40_TO_13, RAW_TO_40, derive_normals,
                                    label_lut, prepare_nyuv2, read_splits)

OUT_H, OUT_W = 288, 384
TRAIN, TEST = (1, 3, 5), (2, 4)  # 1-based, as in splits.mat


def source_pixels(n_out: int, start: int, stop: int) -> np.ndarray:
    """Hand formula of the nearest resize: output i samples start + floor((i + .5) * len / n)."""
    return start + np.floor((np.arange(n_out) + 0.5) * (stop - start) / n_out).astype(int)


ROWS = source_pixels(OUT_H, 45, 471)
COLS = source_pixels(OUT_W, 41, 601)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return fake.write_fake_nyuv2(tmp_path_factory.mktemp("raw"), train=TRAIN, test=TEST)


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    mat, splits, _ = release
    return prepare_nyuv2(mat, tmp_path_factory.mktemp("prep") / "nyuv2", splits)


def load(out, split, sub, i):
    return np.load(out / split / sub / f"{i}.npy")


def no_leftovers(parent, name):
    return not any(p.name.startswith(f".{name}.tmp-") for p in parent.iterdir())


# ---------------------------------------------------------------------- mapping tables


def test_class_tables():
    assert RAW_TO_40.shape == (894,) and set(RAW_TO_40.tolist()) == set(range(1, 41))
    assert NYU40_TO_13.shape == (41,) and set(NYU40_TO_13[1:].tolist()) == set(range(1, 14))
    lut = label_lut()
    assert lut.shape == (895,) and lut[0] == -1 and lut[1:].min() == 0 and lut[1:].max() == 12
    # raw NYU names -> 40-class name -> 13-class name, by hand (CLASSES_13 order)
    by_hand = {1: "objects",      # book -> otherprop
               3: "furniture",    # cabinet
               4: "ceiling", 5: "chair", 7: "furniture",  # counter
               11: "floor", 15: "objects",  # paper
               17: "furniture",   # refridgerator
               19: "table", 21: "wall", 24: "objects",  # sink
               26: "objects",     # box
               28: "wall",        # door
               59: "window", 64: "picture", 83: "sofa", 85: "books", 157: "bed",
               172: "tv"}         # television
    assert {k: CLASSES_13[lut[k]] for k in by_hand} == by_hand


# ---------------------------------------------------------------------- output


def test_layout_counts_and_dtypes(prepared):
    for split, n in (("train", len(TRAIN)), ("val", len(TEST))):
        assert sorted(p.name for p in (prepared / split).iterdir()) == [
            "depth", "image", "label", "normal"]
        for sub in ("depth", "image", "label", "normal"):
            assert sorted(p.name for p in (prepared / split / sub).iterdir()) == [
                f"{i}.npy" for i in range(n)]
    shapes = {"image": (OUT_H, OUT_W, 3), "label": (OUT_H, OUT_W), "depth": (OUT_H, OUT_W, 1),
              "normal": (OUT_H, OUT_W, 3)}
    for sub, shape in shapes.items():
        a = load(prepared, "val", sub, 1)
        assert a.shape == shape and a.dtype == np.float32, sub
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["nyuv2"]  # no temp folder left


def test_follows_split_file_order(prepared, release):
    """train/i is the i-th trainNdxs image: compare the depths (nearest-sampled) directly."""
    _, _, data = release
    for split, indices in (("train", TRAIN), ("val", TEST)):
        for i, k in enumerate(indices):
            expected = data["depths"][k - 1][ROWS][:, COLS]
            np.testing.assert_array_equal(load(prepared, split, "depth", i)[..., 0], expected)


def test_labels_through_mapping_and_crop(prepared, release):
    label = load(prepared, "train", "label", 1)  # trainNdxs[1] = 3 -> scene 2
    assert label[100, 200] == CLASSES_13.index("table")  # the single raw-19 source pixel
    assert label[100, 201] == CLASSES_13.index("floor")
    # quadrant blocks of the crop: wall | floor over void | ceiling (void -> -1)
    top, left = ROWS < 258, COLS < 321
    expected = np.where(top[:, None],
                        np.where(left, CLASSES_13.index("wall"), CLASSES_13.index("floor")),
                        np.where(left, -1, CLASSES_13.index("ceiling")))
    expected[100, 200] = CLASSES_13.index("table")
    np.testing.assert_array_equal(label, expected.astype(np.float32))
    assert CLASSES_13.index("chair") not in label  # the border label is cropped away
    # random labels: every output pixel is the 13-class id of its nearest source pixel
    _, _, data = release
    raw = data["labels"][3][ROWS][:, COLS].astype(int)
    np.testing.assert_array_equal(load(prepared, "val", "label", 1), label_lut()[raw])
    assert (label_lut()[raw] == -1).sum() == (raw == 0).sum()


def test_image_and_depth_values(prepared):
    image = load(prepared, "train", "image", 1)
    np.testing.assert_allclose(image, np.broadcast_to(np.array(fake.CONSTANT_RGB) / 255.0,
                                                      image.shape), atol=1e-6)
    depth = load(prepared, "train", "depth", 1)
    assert (depth == np.float32(fake.CONSTANT_DEPTH)).all()  # metres kept, border cropped
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            a = load(prepared, split, "image", i)
            assert a.min() >= 0.0 and a.max() <= 1.0


def test_tilted_plane_normals(prepared):
    normal = load(prepared, "train", "normal", 0)  # scene 0
    assert (np.linalg.norm(normal, axis=-1) > 0).all()  # the crop never reaches the border
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-5)
    errors = angle_deg(normal, fake.PLANE_NORMAL)
    assert errors.max() < 1.0, errors.max()


def test_floor_normals_and_invalid_depth(prepared):
    normal = load(prepared, "val", "normal", 0)  # testNdxs[0] = 2 -> scene 1, the floor
    depth = load(prepared, "val", "depth", 0)[..., 0]
    assert (depth == 0).any() and (depth > 0).any()
    assert (normal[depth == 0] == 0).all()
    valid = np.linalg.norm(normal, axis=-1) > 0
    assert valid.sum() > 0.9 * (depth > 0).sum()
    errors = angle_deg(normal[valid], np.array([0.0, 1.0, 0.0]))
    assert errors.max() < 1.0, errors.max()  # also next to the cut: smoothing keeps planes
    assert (normal[..., 2] > -1e-3).all() and np.abs(normal).max() <= 1.0  # n_z = 0 up to noise


def test_derive_normals_zero_depth_and_unit_length():
    depth = fake.plane_depth()
    depth[200:220, 300:330] = 0.0
    normal = derive_normals(depth)
    assert normal.shape == (480, 640, 3) and normal.dtype == np.float32
    assert (normal[200:220, 300:330] == 0).all()
    valid = np.linalg.norm(normal, axis=-1) > 0
    s = NORMAL_STEP  # no tangents within s px of the border; the hole spoils a cross around it
    assert not valid[:s].any() and not valid[:, -s:].any()
    assert valid.sum() == (480 - 2 * s) * (640 - 2 * s) - (20 * 30 + 2 * s * 30 + 2 * s * 20)
    np.testing.assert_allclose(np.linalg.norm(normal[valid], axis=-1), 1.0, atol=1e-5)
    # a fronto-parallel wall at 3 m faces the camera: (0, 0, 1)
    wall = derive_normals(np.full((60, 80), 3.0))
    np.testing.assert_allclose(wall[10:-10, 10:-10], np.broadcast_to([0, 0, 1], (40, 60, 3)),
                               atol=1e-6)


def test_derive_normals_smooths_kinect_quantisation():
    """Depth quantised like the Kinect's disparity (1/8 px, f = 580 px, baseline 7.5 cm) makes
    cm-high terraces; the smoothing keeps the normals of a plane close to the truth."""
    k = 580 * 0.075 * 8
    depth = fake.plane_depth()
    terraced = k / np.round(k / depth)
    assert np.abs(terraced - depth).max() > 0.01
    normal = derive_normals(terraced)
    errors = angle_deg(normal[10:-10, 10:-10], fake.PLANE_NORMAL)
    assert np.median(errors) < 2.0 and np.percentile(errors, 95) < 3.0


def test_loads_as_nyuv2(prepared):
    train = build_dataset("nyuv2", "train", root=prepared, val_fraction=0.0, augment=False)
    test = build_dataset("nyuv2", "test", root=prepared)
    assert (len(train), len(test)) == (3, 2)
    item = test[0]
    assert item["image"].shape == (3, OUT_H, OUT_W)
    assert item["normal_target"].shape == (3, OUT_H, OUT_W)
    assert item["depth_target"].shape == (1, OUT_H, OUT_W)
    seg = train[1]["seg_target"]
    assert seg.min() == -1 and seg.max() <= 12


def test_normals_none(release, tmp_path):
    mat, splits, _ = release
    out = prepare_nyuv2(mat, tmp_path / "plain", splits, normals="none", size=(48, 64))
    assert sorted(p.name for p in (out / "train").iterdir()) == ["depth", "image", "label"]
    assert np.load(out / "val" / "label" / "0.npy").shape == (48, 64)
    ds = build_dataset("nyuv2", "test", root=out)
    assert "normal_target" not in ds[0]


def test_splits_default_next_to_mat(release, tmp_path):
    mat, _, _ = release  # splits.mat lies next to it
    out = prepare_nyuv2(mat, tmp_path / "default", normals="none", size=(24, 32))
    assert len(list((out / "train" / "image").iterdir())) == 3


# ---------------------------------------------------------------------- bad input


def test_missing_files(release, tmp_path):
    mat, splits, _ = release
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="not found.*nyu_depth_v2_labeled.mat"):
        prepare_nyuv2(tmp_path / "nope.mat", out, splits)
    with pytest.raises(DatasetError, match="split file .* not found.*splits.mat"):
        prepare_nyuv2(mat, out, tmp_path / "nosplits.mat")
    (tmp_path / "alone").mkdir()
    lone = tmp_path / "alone" / "nyu_depth_v2_labeled.mat"
    lone.write_bytes(mat.read_bytes())
    with pytest.raises(DatasetError, match="split file .*alone/splits.mat not found"):
        prepare_nyuv2(lone, out)
    assert not out.exists() and no_leftovers(tmp_path, "out")


def test_mat_without_images(release, tmp_path):
    _, splits, data = release
    bad = fake.write_mat(tmp_path / "bad.mat", data, keys=("depths", "labels"))
    with pytest.raises(DatasetError, match="no 'images' array"):
        prepare_nyuv2(bad, tmp_path / "out", splits)
    v5 = tmp_path / "v5.mat"
    fake.write_splits(v5, [1], [2])  # a MATLAB v5 file is not the HDF5 release
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        prepare_nyuv2(v5, tmp_path / "out", splits)
    untransposed = tmp_path / "untransposed.mat"
    with h5py.File(untransposed, "w") as f:  # (N,H,W,3) as a Python writer might save it
        f["images"] = data["images"]
        f["depths"], f["labels"] = data["depths"], data["labels"]
    with pytest.raises(DatasetError, match=r"shape \(5, 480, 640, 3\).*\(N, 3, 640, 480\)"):
        prepare_nyuv2(untransposed, tmp_path / "out", splits)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("train, test, message", [
    ((1, 3, 6), (2, 4), r"trainNdxs holds indices \[6\] outside 1..5"),
    ((1, 3), (0, 2), r"testNdxs holds indices \[0\] outside 1..5"),
    ((1, 3), (3, 4), r"images \[3\] are in both"),
    ((1, 1), (2,), "more than once"),
])
def test_bad_split_indices(release, tmp_path, train, test, message):
    mat, _, _ = release
    splits = fake.write_splits(tmp_path / "splits.mat", train, test)
    with pytest.raises(DatasetError, match=message):
        prepare_nyuv2(mat, tmp_path / "out", splits)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")


def test_split_file_without_keys(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "s.mat", {"trainNdxs": np.arange(1, 4).reshape(-1, 1)})
    with pytest.raises(DatasetError, match="no 'testNdxs'"):
        read_splits(tmp_path / "s.mat", 5)
    (tmp_path / "junk.mat").write_text("not a mat file")
    with pytest.raises(DatasetError, match="cannot read split file"):
        read_splits(tmp_path / "junk.mat", 5)


def test_non_empty_out_untouched(release, tmp_path):
    mat, splits, _ = release
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        prepare_nyuv2(mat, out, splits)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert no_leftovers(tmp_path, "out")


def test_failure_mid_write_leaves_nothing(release, tmp_path):
    """A bad label id in the last (val) image fails after train/ is written: no trace left."""
    _, splits, data = release
    broken = {k: v.copy() for k, v in data.items()}
    broken["labels"][3][240, 320] = 900
    mat = fake.write_mat(tmp_path / "broken.mat", broken)
    with pytest.raises(DatasetError, match="image 4: label ids .*outside 0..894"):
        prepare_nyuv2(mat, tmp_path / "out", splits, normals="none", size=(24, 32))
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")


def test_bad_options(release, tmp_path):
    mat, splits, _ = release
    with pytest.raises(DatasetError, match="normals='kornia'.*'derive'.*'none'"):
        prepare_nyuv2(mat, tmp_path / "out", splits, normals="kornia")
    with pytest.raises(DatasetError, match="size="):
        prepare_nyuv2(mat, tmp_path / "out", splits, size=(0, 384))
    assert CROP == (slice(45, 471), slice(41, 601))
