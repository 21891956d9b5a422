"""prepare_cityscapes on a tiny fake raw tree (hand-checked values), prepare_synthetic round
trip."""

import numpy as np
import pytest
from PIL import Image

from xtc.data import DatasetError, build_dataset
from xtc.data.prepare import (disparity_to_target, label_lut, prepare_cityscapes,
                              prepare_synthetic)

H, W = 64, 128


def _blocks(small: np.ndarray) -> np.ndarray:
    """(32,64) -> (64,128): every value repeated over a 2x2 block, so nearest is unambiguous."""
    return small.repeat(2, 0).repeat(2, 1)


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            stem, city = f"aachen_{i:06d}_000019", "aachen"
            for sub in ("leftImg8bit", "gtFine", "disparity"):
                (root / sub / split / city).mkdir(parents=True, exist_ok=True)
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            ids = np.zeros((32, 64), np.uint8)
            ids[:, :8] = 7      # road -> flat (0) / trainId 0
            ids[:, 8:16] = 23   # sky -> 4 / 10
            ids[:, 16:24] = 26  # car -> 6 / 13
            ids[:, 24:32] = 3   # void -> -1 / -1
            ids[:, 32:40] = 9   # parking: flat (0) / void in 19 classes
            ids[:, 40:] = 24    # person -> 5 / 11
            Image.fromarray(_blocks(ids)).save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            disp = np.zeros((32, 64), np.uint16)
            disp[:, 16:24] = 1 + 256 * 20        # 20 px disparity -> 20/256
            disp[:, :8] = 1 + 257 * 128          # large -> clipped to 0.4922
            disp[:, 40:] = 1                     # zero disparity -> invalid
            Image.fromarray(_blocks(disp)).save(
                root / "disparity" / split / city / f"{stem}_disparity.png")
    return root


def test_luts():
    seven, nineteen = label_lut(7), label_lut(19)
    assert (seven[[0, 6, 7, 10, 11, 17, 21, 23, 24, 26, 33]].tolist()
            == [-1, -1, 0, 0, 1, 2, 3, 4, 5, 6, 6])
    assert nineteen[[7, 8, 9, 11, 23, 24, 26, 33]].tolist() == [0, 1, -1, 2, 10, 11, 13, 18]
    assert (nineteen >= 0).sum() == 19
    np.testing.assert_allclose(disparity_to_target(np.array([0, 1, 257, 1 + 256 * 100, 65535])),
                               [0, 0, 1 / 256, 100 / 256, 0.4922], rtol=1e-6)


@pytest.mark.parametrize("classes", [7, 19])
def test_prepare_cityscapes(raw, tmp_path, classes):
    out = prepare_cityscapes(raw, tmp_path / "city", classes=classes, size=(32, 64))
    assert (sorted(p.name for p in (out / "train").iterdir())
            == ["depth", "image", f"label_{classes}"])
    label = np.load(out / "train" / f"label_{classes}" / "0.npy")
    depth = np.load(out / "train" / "depth" / "0.npy")
    image = np.load(out / "train" / "image" / "0.npy")
    assert label.shape == (32, 64) and depth.shape == (32, 64, 1) and image.shape == (32, 64, 3)
    expected = [0, 4, 6, -1, 0, 5] if classes == 7 else [0, 10, 13, -1, -1, 11]
    assert [label[5, c] for c in (0, 8, 16, 24, 32, 40)] == expected
    np.testing.assert_allclose(depth[:, 16:24], 20 / 256, rtol=1e-6)
    np.testing.assert_allclose(depth[:, :8], 0.4922)
    assert (depth[:, 8:16] == 0).all() and (depth[:, 40:] == 0).all()
    # image: exact 2x2 area mean of the raw RGB (not nearest)
    rgb = np.asarray(Image.open(next((raw / "leftImg8bit" / "train").glob("*/*000000_000019*"))),
                     np.float64) / 255
    area = rgb.reshape(32, 2, 64, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(image, area, atol=1e-5)
    ds = build_dataset("cityscapes", "test", root=out, classes=classes)
    item = ds[0]
    assert len(ds) == 1 and item["depth_mask"][0, 5].tolist()[40] is False
    assert item["depth_mask"][0, :, 16:24].all() and not item["depth_mask"][0, :, 8:16].any()


def test_prepare_refuses_nonempty_and_cleans_up(raw, tmp_path):
    out = tmp_path / "city"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        prepare_cityscapes(raw, out, size=(32, 64))
    (next((raw / "disparity" / "val").glob("*/*.png"))).unlink()
    with pytest.raises(DatasetError, match="matching"):
        prepare_cityscapes(raw, tmp_path / "city2", size=(32, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city", "raw"]  # no half-written tree
    with pytest.raises(DatasetError, match="leftImg8bit"):
        prepare_cityscapes(tmp_path / "nothing", tmp_path / "city3")


def test_prepare_synthetic_round_trip(tmp_path):
    from xtc.data.synthetic import TEST_OFFSET, render_scene

    out = prepare_synthetic(tmp_path / "syn", n=4, height=32, width=64, test_n=2)
    city = build_dataset("cityscapes", "test", root=out)
    syn = build_dataset("synthetic-city", "test", height=32, width=64, test_size=2)
    assert len(city) == 2
    for key in ("image", "seg_target", "depth_target", "depth_mask"):
        assert (city[1][key] == syn[1][key]).all()
    np.testing.assert_array_equal(np.load(out / "train" / "label_7" / "3.npy"),
                                  render_scene(0, 3, 32, 64)["label"])
    assert TEST_OFFSET > 4
