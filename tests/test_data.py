"""MTAN-layout loaders (Cityscapes, NYUv2), the registry and clear errors for broken folders."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xtc.config import DataConfig
from xtc.data import (DatasetError, build_dataset, build_dataset_from_config, list_datasets)
from xtc.registry import UnknownNameError


def _write(root, split, n, h=16, w=32, label="label_7", k=7, normal=False, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        lab = rng.integers(-1, k, (h, w)).astype(np.float64)
        depth = np.where(lab >= 0, (lab + 1) * 0.05, 0.0)[..., None]
        arrays = {"image": rng.random((h, w, 3)), label: lab, "depth": depth}
        if normal:
            arrays["normal"] = np.dstack([np.full((h, w), 0.6), np.zeros((h, w)),
                                          np.full((h, w), 0.8)])
        for key, arr in arrays.items():
            (root / split / key).mkdir(parents=True, exist_ok=True)
            np.save(root / split / key / f"{i}.npy", arr)


@pytest.fixture
def city(tmp_path):
    _write(tmp_path, "train", 10)
    _write(tmp_path, "val", 3, seed=1)
    return tmp_path


def test_registry_names_and_unknown():
    assert list_datasets() == ["cityscapes", "nyuv2", "synthetic-city"]
    with pytest.raises(UnknownNameError, match="synthetic-city"):
        build_dataset("kitti", "train")


def test_cityscapes_reads_fixture(city):
    ds = build_dataset("cityscapes", "test", root=str(city))
    assert len(ds) == 3 and ds.num_classes == 7 and ds.depth_units == "inverse depth"
    item = ds[1]
    raw_label = np.load(city / "val" / "label_7" / "1.npy")
    assert torch.equal(item["seg_target"], torch.from_numpy(raw_label.astype(np.int64)))
    np.testing.assert_allclose(item["image"].numpy(),
                               np.load(city / "val" / "image" / "1.npy").transpose(2, 0, 1),
                               rtol=1e-6)
    assert item["image"].dtype == torch.float32 and item["depth_target"].shape == (1, 16, 32)
    assert torch.equal(item["depth_mask"], item["seg_target"][None] >= 0)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["depth_mask"].shape == (2, 1, 16, 32)


def test_val_carved_from_train_deterministically(city):
    train = build_dataset("cityscapes", "train", root=city, val_fraction=0.3)
    val = build_dataset("cityscapes", "val", root=city, val_fraction=0.3)
    assert len(train) == 7 and len(val) == 3
    assert not set(train.indices) & set(val.indices)
    np.testing.assert_array_equal(val.indices, build_dataset("cityscapes", "val", root=city,
                                                             val_fraction=0.3).indices)
    assert train.augment and not val.augment
    assert not build_dataset("cityscapes", "test", root=city, augment=True).augment
    assert train.fingerprint() == build_dataset("cityscapes", "train", root=city,
                                                val_fraction=0.3).fingerprint()
    assert train.fingerprint() != val.fingerprint()


def test_augmented_train_items_stay_consistent(city):
    ds = build_dataset("cityscapes", "train", root=city)
    for i in range(len(ds)):
        item = ds[i]
        seg, depth = item["seg_target"], item["depth_target"][0]
        ratio = depth[seg >= 0] / ((seg[seg >= 0] + 1) * 0.05)
        assert ratio.min() > 0.99 and ratio.max() < 1.51  # scaled by s in {1, 1.2, 1.5}
        assert torch.allclose(ratio, ratio[0])
        assert torch.equal(item["depth_mask"][0], seg >= 0)


def test_ignore_250_and_bad_labels(city):
    lab = np.load(city / "val" / "label_7" / "0.npy")
    lab[0, 0] = 250
    np.save(city / "val" / "label_7" / "0.npy", lab)
    ds = build_dataset("cityscapes", "test", root=city)
    assert ds[0]["seg_target"][0, 0] == -1
    lab[0, 0] = 7
    np.save(city / "val" / "label_7" / "0.npy", lab)
    with pytest.raises(DatasetError, match=r"0\.npy.*\[7\.0\]"):
        ds[0]


def test_cityscapes_19_needs_label_19(city):
    with pytest.raises(DatasetError, match="label_19"):
        build_dataset("cityscapes", "train", root=city, classes=19)
    with pytest.raises(DatasetError, match="7 .*19"):
        build_dataset("cityscapes", "train", root=city, classes=5)


def test_nyuv2_with_normals_and_metric_depth(tmp_path):
    _write(tmp_path, "train", 4, h=8, w=16, label="label", k=13, normal=True)
    ds = build_dataset("nyuv2", "train", root=tmp_path, val_fraction=0.0, augment=False)
    assert ds.num_classes == 13 and ds.depth_units == "metres" and len(ds.class_names) == 13
    item = ds[0]
    assert item["normal_target"].shape == (3, 8, 16)
    aug = build_dataset("nyuv2", "train", root=tmp_path, val_fraction=0.0)
    for i in range(4):
        a = aug[i]
        seg, depth = a["seg_target"], a["depth_target"][0]
        ratio = depth[seg >= 0] / ((seg[seg >= 0] + 1) * 0.05)
        assert ratio.max() < 1.001 and ratio.min() > 1 / 1.5 - 1e-3  # metres divided by s
        assert torch.allclose(a["normal_target"][0].abs(), torch.tensor(0.6))


@pytest.mark.parametrize("breakage,message", [
    ("no_root", "data.root"),
    ("missing_root", "does not exist"),
    ("missing_split", "split folder"),
    ("missing_depth", "depth"),
    ("empty", "no <i>.npy"),
    ("mismatch", "mismatched"),
])
def test_clear_errors(tmp_path, breakage, message):
    _write(tmp_path, "train", 3)
    root = tmp_path
    if breakage == "no_root":
        root = None
    elif breakage == "missing_root":
        root = tmp_path / "nope"
    elif breakage == "missing_split":
        pass  # no val folder: the test split fails
    elif breakage == "missing_depth":
        for p in (tmp_path / "train" / "depth").iterdir():
            p.unlink()
        (tmp_path / "train" / "depth").rmdir()
    elif breakage == "empty":
        for p in (tmp_path / "train" / "image").iterdir():
            p.unlink()
    elif breakage == "mismatch":
        (tmp_path / "train" / "depth" / "2.npy").unlink()
    split = "test" if breakage == "missing_split" else "train"
    with pytest.raises(DatasetError, match=message):
        build_dataset("cityscapes", split, root=root)


def test_bad_split_and_option():
    with pytest.raises(DatasetError, match="train"):
        build_dataset("synthetic-city", "dev")
    with pytest.raises(DatasetError, match="classes"):
        build_dataset("synthetic-city", "train", classes=7)


def test_build_from_config(city):
    cfg = DataConfig(name="synthetic-city", height=32, width=64, train_size=10, test_size=2)
    ds = build_dataset_from_config(cfg, "val")
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 32, 64)
    ds = build_dataset_from_config(DataConfig(name="cityscapes", root=str(city)), "test")
    assert len(ds) == 3
    with pytest.raises(UnknownNameError):
        build_dataset_from_config(SimpleNamespace(name="kitti", root=None), "train")
