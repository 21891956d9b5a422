"""Property-based tests (hypothesis) of the metrics and losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xtc.losses import consistency_loss, depth_loss, seg_loss
from xtc.losses.cross_task import depth2seg_loss, seg2depth_loss
from xtc.metrics import DepthMeter, SegmentationMeter, confusion_matrix

seeds = st.integers(0, 2**31 - 1)


def _batch(seed: int, k: int = 4, b: int = 2, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, k, (b, h, w), generator=g)
    depth = torch.rand(b, 1, h, w, generator=g) * (torch.rand(b, 1, h, w, generator=g) > 0.2)
    return g, target, depth


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_perfect_depth_gives_zero_error(seed):
    _, _, depth = _batch(seed)
    meter = DepthMeter()
    meter.update(depth, depth)
    res = meter.compute()
    if (depth > 0).any():
        assert res["abs_err"] == 0 and res["rmse"] == 0 and res["delta1"] == 1.0


@settings(max_examples=25, deadline=None)
@given(seeds, st.integers(2, 5))
def test_ignored_pixels_never_change_any_metric(seed, k):
    g, target, depth = _batch(seed, k)
    pred = torch.randint(0, k, target.shape, generator=g)
    depth_pred = torch.rand(depth.shape, generator=g)
    other_pred = torch.where(target < 0, torch.randint(0, k, target.shape, generator=g), pred)
    other_depth = torch.where(depth > 0, depth_pred, torch.rand(depth.shape, generator=g) * 9)
    for a, b in ((pred, other_pred),):
        m1, m2 = SegmentationMeter(k), SegmentationMeter(k)
        m1.update(a, target)
        m2.update(b, target)
        r1, r2 = m1.compute(), m2.compute()
        for key in ("miou", "pixel_acc", "miou_legacy"):
            assert r1[key] == pytest.approx(r2[key], nan_ok=True)
    d1, d2 = DepthMeter(), DepthMeter()
    d1.update(depth_pred, depth)
    d2.update(other_depth, depth)
    for key, value in d1.compute().items():
        assert value == pytest.approx(d2.compute()[key], nan_ok=True)


@settings(max_examples=25, deadline=None)
@given(seeds, st.integers(2, 5))
def test_adding_an_image_changes_metrics_as_the_confusion_matrix_says(seed, k):
    g, target, _ = _batch(seed, k, b=3)
    pred = torch.randint(0, k, target.shape, generator=g)
    meter = SegmentationMeter(k)
    meter.update(pred[:2], target[:2])
    before = meter.confusion.clone()
    meter.update(pred[2:], target[2:])
    added = confusion_matrix(pred[2:], target[2:], k)
    assert torch.equal(meter.confusion, before + added)
    conf = meter.confusion.double()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    iou = conf.diag()[union > 0] / union[union > 0]
    assert meter.compute()["miou"] == pytest.approx(iou.mean().item())


@settings(max_examples=25, deadline=None)
@given(seeds, st.integers(2, 6))
def test_consistency_loss_is_zero_when_transferred_equals_direct(seed, k):
    g, target, depth = _batch(seed, k)
    logits = torch.randn(2, k, 8, 8, generator=g)
    direct_depth = torch.rand(2, 1, 8, 8, generator=g)
    # A transferred seg whose argmax matches the direct one with near-one-hot confidence.
    transferred_seg = 60.0 * torch.nn.functional.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2)
    predictions = {"seg": logits, "depth": direct_depth, "seg2depth": direct_depth.clone(),
                   "depth2seg": transferred_seg.float()}
    batch = {"seg_target": target, "depth_target": depth, "depth_mask": depth > 0}
    terms = consistency_loss(predictions, batch)
    assert terms["seg2depth"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["depth2seg"].item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(seeds, st.sampled_from(["l1", "mse", "logl1", "smoothl1"]), st.booleans(), st.booleans())
def test_every_loss_is_finite_even_with_nothing_valid(seed, kind, no_labels, no_depth):
    g, target, depth = _batch(seed)
    if no_labels:
        target = torch.full_like(target, -1)
    if no_depth:
        depth = torch.zeros_like(depth)
    mask = depth > 0
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    pred = torch.randn(2, 1, 8, 8, generator=g, requires_grad=True)
    values = [seg_loss(logits, target), depth_loss(pred, depth, mask, kind=kind),
              seg2depth_loss(pred, depth, mask, kind="l1"),
              seg2depth_loss(pred.sigmoid(), depth, mask, kind="ssim"),
              depth2seg_loss(logits, target, kind="ce", label_smoothing=0.1),
              depth2seg_loss(logits, target, kind="kl", label_smoothing=0.1)]
    total = sum(values)
    assert all(math.isfinite(v.item()) for v in values)
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(pred.grad).all()
