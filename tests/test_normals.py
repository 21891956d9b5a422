"""Surface normals: loss, angle metrics (the streamed median against the exact one),
augmentation rules, the MTAN reader, and a three-task NYUv2 run through the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xtc.data import build_dataset
from xtc.data.transforms import AugmentParams, apply_params
from xtc.tasks.normal import MEDIAN_ERROR_DEG, NormalMeter, angle_error, normal_loss

ROOT = Path(__file__).resolve().parents[1]


def _at_angles(degrees: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,3,1,N) predictions at the given angles from the target (0, 0, 1), in the x-z plane;
    predictions have length 2 (the loss and metrics normalise them)."""
    a = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    pred = torch.stack([torch.sin(a), torch.zeros_like(a), torch.cos(a)]) * 2.0
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)[:, None].expand(3, len(degrees))
    return pred[None, :, None].float(), target[None, :, None].float()


def test_cosine_loss_is_one_minus_cos_over_valid_pixels() -> None:
    pred, target = _at_angles([0.0, 60.0, 90.0, 180.0])
    mask = torch.tensor([True, True, True, False]).view(1, 1, 1, 4)
    expected = ((1 - 1) + (1 - 0.5) + (1 - 0)) / 3  # the 180-degree pixel is masked out
    assert normal_loss(pred, target, mask).item() == pytest.approx(expected, abs=1e-6)
    l1 = normal_loss(pred, target, mask, kind="l1").item()
    by_hand = (0 + (math.sin(math.pi / 3) + 0.5) + 2.0) / 3  # sum_c |unit(p) - t|
    assert l1 == pytest.approx(by_hand, abs=1e-6)


def test_invalid_targets_reach_neither_value_nor_gradient() -> None:
    pred, target = _at_angles([10.0, 20.0])
    pred.requires_grad_(True)
    target = target.clone()
    target[..., 1] = float("nan")
    mask = torch.tensor([True, False]).view(1, 1, 1, 2)
    loss = normal_loss(pred, target, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert pred.grad[..., 1].abs().sum() == 0


def test_metrics_by_hand() -> None:
    angles = [0.0, 10.0, 20.0, 25.0, 40.0]
    pred, target = _at_angles(angles)
    meter = NormalMeter()
    meter.update(pred, target)
    m = meter.compute()
    assert m["normal_mean"] == pytest.approx(sum(angles) / 5, abs=1e-3)
    assert m["normal_median"] == pytest.approx(20.0, abs=MEDIAN_ERROR_DEG + 1e-3)
    assert (m["normal_11"], m["normal_22"], m["normal_30"]) == pytest.approx((0.4, 0.6, 0.8))


def test_streamed_median_is_within_its_bound_of_the_exact_median() -> None:
    g = torch.Generator().manual_seed(0)
    meter, angles = NormalMeter(), []
    for _ in range(5):  # five batches: a mean of per-batch medians would not equal this
        pred = torch.randn(2, 3, 16, 16, generator=g)
        target = torch.nn.functional.normalize(torch.randn(2, 3, 16, 16, generator=g), dim=1)
        mask = torch.rand(2, 1, 16, 16, generator=g) > 0.3
        meter.update(pred, target, mask)
        angles.append(angle_error(pred, target)[mask[:, 0]])
    exact = torch.cat(angles).double()
    m = meter.compute()
    assert abs(m["normal_median"] - float(exact.median())) <= MEDIAN_ERROR_DEG + 1e-9
    assert m["normal_mean"] == pytest.approx(float(exact.mean()), rel=1e-6)
    assert m["normal_30"] == pytest.approx(float((exact < 30).double().mean()))


def test_meters_merge_like_one_stream() -> None:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 3, 8, 8, generator=g),
                torch.nn.functional.normalize(torch.randn(1, 3, 8, 8, generator=g), dim=1))
               for _ in range(2)]
    one, a, b = NormalMeter(), NormalMeter(), NormalMeter()
    for p, t in batches:
        one.update(p, t)
    a.update(*batches[0])
    b.update(*batches[1])
    a.merge(b)
    assert a.compute() == one.compute()


def test_angle_error_is_accurate_near_zero() -> None:
    pred, target = _at_angles([0.01, 179.99])
    assert angle_error(pred, target).flatten().tolist() == pytest.approx([0.01, 179.99], abs=1e-3)


def _normal_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(2, 3, 32, 64, generator=g), dim=1)
    return {"image": torch.rand(2, 3, 32, 64, generator=g),
            "seg_target": torch.zeros(2, 32, 64, dtype=torch.long),
            "depth_target": torch.rand(2, 1, 32, 64, generator=g) + 0.1,
            "depth_mask": torch.ones(2, 1, 32, 64, dtype=torch.bool),
            "normal_target": n, "normal_mask": torch.ones(2, 1, 32, 64, dtype=torch.bool)}


def _params(scale: float, flip: bool) -> AugmentParams:
    h, w = round(32 / scale), round(64 / scale)
    t = lambda v, dt=torch.long: torch.tensor([v, v], dtype=dt)  # noqa: E731
    return AugmentParams(t(scale, torch.float32), t(0), t(0), t(h), t(w), t(flip, torch.bool))


def test_flip_negates_the_x_component_only() -> None:
    batch = _normal_batch()
    out = apply_params(batch, _params(1.0, True), "inverse depth")
    mirrored = batch["normal_target"].flip(-1)
    assert torch.equal(out["normal_target"][:, 0], -mirrored[:, 0])
    assert torch.equal(out["normal_target"][:, 1:], mirrored[:, 1:])


def test_scale_crop_leaves_normals_as_they_are() -> None:
    """Zooming in does not scale normals (unlike depth): every output vector is one of the
    input's, unchanged, and depth is rescaled alongside."""
    batch = _normal_batch()
    out = apply_params(batch, _params(1.5, False), "inverse depth")
    crop = batch["normal_target"][:, :, :21, :43]  # the 1.5x crop window at the origin
    values = {tuple(v) for v in crop.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    produced = out["normal_target"].permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    assert all(tuple(v) in values for v in produced)
    assert torch.allclose(torch.linalg.vector_norm(out["normal_target"], dim=1), torch.tensor(1.0))
    assert out["normal_mask"].dtype == torch.bool and out["normal_mask"].all()


def write_nyu(root: Path, n_train: int = 8, n_test: int = 4, h: int = 64, w: int = 64) -> Path:
    """A generated NYUv2 MTAN-layout folder with normal/: zero vectors mark invalid pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_test)):
        for sub in ("image", "label", "depth", "normal"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = rng.integers(0, 13, (h, w))
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)))
            np.save(root / split / "label" / f"{i}.npy", label.astype(np.float64))
            np.save(root / split / "depth" / f"{i}.npy", (label[..., None] + 1) * 0.3)
            normal = rng.normal(size=(h, w, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[:4] = 0.0  # invalid rows
            np.save(root / split / "normal" / f"{i}.npy", normal * 0.999)  # float rounding
    return root


def test_mtan_normals_are_unit_vectors_with_a_mask(tmp_path: Path) -> None:
    root = write_nyu(tmp_path)
    item = build_dataset("nyuv2", "test", root=root)[0]
    n, mask = item["normal_target"], item["normal_mask"]
    assert n.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and mask.dtype == torch.bool
    assert not mask[:, :4].any() and mask[:, 4:].all()
    assert torch.allclose(torch.linalg.vector_norm(n[:, 4:], dim=0), torch.tensor(1.0))
    assert n[:, :4].abs().sum() == 0


def test_nyuv2_without_normals_says_so(tmp_path: Path) -> None:
    import shutil

    from xtc.data import DatasetError

    root = write_nyu(tmp_path)
    shutil.rmtree(root / "train" / "normal")
    ds = build_dataset("nyuv2", "train", root=root, val_fraction=0.0)
    with pytest.raises(DatasetError, match="normal_mask.*normal/ folder"):
        ds.keep(["normal_target", "normal_mask"])


@pytest.mark.slow  # a subprocess run of xtc train (~20 s)
def test_three_task_nyuv2_fixture_trains_through_the_cli(tmp_path: Path) -> None:
    root = write_nyu(tmp_path / "nyu")
    out = tmp_path / "run"
    sets = ["data.name=nyuv2", f"data.root={root}", "data.val_fraction=0.25",
            "model.tasks=[seg,depth,normal]", "model.encoder=resnet18",
            "model.decoder_width=8", "model.transfer_width=4", "train.epochs=1",
            "train.batch_size=2", "train.max_steps_per_epoch=2", "train.device=cpu"]
    args = [sys.executable, "-m", "xtc", "train", "--out", str(out), "--quiet"]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    test = doc["metrics"]["test"]
    for name in ("miou", "abs_err", "normal_mean", "normal_median", "normal_11", "normal_22",
                 "normal_30", "normal_energy"):
        assert name in test and math.isfinite(test[name]), name
    assert doc["params"]["model.tasks"] == ["seg", "depth", "normal"]
    assert "train_normal2depth" in doc["history"][0]
