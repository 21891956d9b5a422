"""Joint augmentation keeps image, labels, depth, masks and normals aligned."""

import pytest
import torch

from xtc.data.transforms import (AugmentParams, augment_batch, augment_item, item_generator,
                                 sample_params)

K = 5


def _batch(b=6, h=32, w=64, normals=False):
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(-1, K, (b, h, w), generator=g)
    seg[:, :, : w // 2] = seg[:, :, :1]  # some large regions too
    depth = torch.where(seg >= 0, (seg + 1).float() * 0.05, 0.0)[:, None]  # depth = f(label)
    image = torch.stack([seg.float() / K, depth[:, 0], torch.rand(b, h, w, generator=g)], 1)
    batch = {"image": image, "seg_target": seg, "depth_target": depth, "depth_mask": depth > 0}
    if normals:
        n = torch.randn(b, 3, h, w, generator=g)
        batch["normal_target"] = n / n.norm(dim=1, keepdim=True)
    return batch


@pytest.mark.parametrize("units", ["inverse depth", "metres"])
def test_depth_stays_a_function_of_label_and_is_rescaled(units):
    batch = _batch()
    params = sample_params(6, 32, 64, torch.Generator().manual_seed(1))
    out = augment_batch(batch, None, units, params=params)
    for i, s in enumerate(params.scale.tolist()):
        seg, depth = out["seg_target"][i], out["depth_target"][i, 0]
        factor = s if units == "inverse depth" else 1 / s
        expected = torch.where(seg >= 0, (seg + 1).float() * 0.05 * factor, 0.0)
        torch.testing.assert_close(depth, expected)
        assert torch.equal(out["depth_mask"][i, 0], seg >= 0)
    assert out["seg_target"].dtype == torch.int64 and out["depth_mask"].dtype == torch.bool
    assert set(out["seg_target"].unique().tolist()) <= set(range(-1, K))


def test_crop_matches_manual_crop_and_flip():
    batch = _batch(b=1)
    seg = batch["seg_target"]
    # scale 2 on a 32x64 map: a 16x32 window, nearest-upsampled by exactly 2
    params = AugmentParams(torch.tensor([2.0]), torch.tensor([4]), torch.tensor([10]),
                           torch.tensor([16]), torch.tensor([32]), torch.tensor([False]))
    out = augment_batch(batch, None, "inverse depth", params=params)
    window = seg[0, 4:20, 10:42]
    expected = window.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert (out["seg_target"][0] == expected).float().mean() > 0.97  # half-pixel ties aside
    flipped = augment_batch(batch, None, "inverse depth", params=AugmentParams(
        torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([32]),
        torch.tensor([64]), torch.tensor([True])))
    assert torch.equal(flipped["seg_target"][0], seg[0].flip(-1))
    assert torch.equal(flipped["image"][0], batch["image"][0].flip(-1))


def test_flip_negates_normal_x():
    batch = _batch(b=2, normals=True)
    params = AugmentParams(torch.ones(2), torch.zeros(2).long(), torch.zeros(2).long(),
                           torch.full((2,), 32), torch.full((2,), 64), torch.tensor([True, False]))
    out = augment_batch(batch, None, "metres", params=params)
    n = batch["normal_target"]
    torch.testing.assert_close(out["normal_target"][0, 0], -n[0, 0].flip(-1))
    torch.testing.assert_close(out["normal_target"][0, 1:], n[0, 1:].flip(-1))
    torch.testing.assert_close(out["normal_target"][1], n[1])


def test_parameters_cover_scales_and_flips_and_are_reproducible():
    p1 = sample_params(400, 32, 64, torch.Generator().manual_seed(0))
    p2 = sample_params(400, 32, 64, torch.Generator().manual_seed(0))
    assert torch.equal(p1.scale, p2.scale) and torch.equal(p1.top, p2.top)
    assert {round(s, 4) for s in p1.scale.tolist()} == {1.0, 1.2, 1.5}
    assert 0.4 < p1.flip.float().mean() < 0.6
    assert (p1.top >= 0).all() and (p1.top + p1.crop_h <= 32).all()
    assert (p1.left >= 0).all() and (p1.left + p1.crop_w <= 64).all()


def test_item_generator_depends_on_seed_epoch_index():
    def draw(*k):
        return torch.rand(3, generator=item_generator(*k))

    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


def test_augment_item_unbatched_shapes():
    item = {k: v[0] for k, v in _batch(b=1).items()}
    out = augment_item(item, seed=0, epoch=0, index=3, depth_units="inverse depth")
    assert ({k: tuple(v.shape) for k, v in out.items()}
            == {k: tuple(v.shape) for k, v in item.items()})
    again = augment_item(item, seed=0, epoch=0, index=3, depth_units="inverse depth")
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_rejects_unbatched_and_bad_units():
    item = {k: v[0] for k, v in _batch(b=1).items()}
    with pytest.raises(ValueError, match="batch"):
        augment_batch(item, torch.Generator(), "metres")
    with pytest.raises(ValueError, match="depth_units"):
        augment_batch(_batch(b=1), torch.Generator(), "disparity")
