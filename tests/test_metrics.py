"""Hand-computed checks of xtc.metrics (segmentation, depth, consistency, delta_m, meter state)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xtc.metrics import (DELTA_M_CONVENTION, ConsistencyMeter, DepthMeter, SegmentationMeter,
                         confusion_matrix, consistency_energy_maps, delta_m, depth_metrics,
                         higher_is_better, iou_from_confusion, legacy_miou_per_image,
                         miou_from_confusion, pixel_acc_from_confusion)

# 2x3 image, 3 classes, one ignored pixel (bottom right; predicted 2 there, must not count).
TARGET = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
PRED = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
CONF = torch.tensor([[1, 1, 0],   # gt 0: one right, one predicted 1
                     [0, 2, 0],   # gt 1: both right
                     [1, 0, 0]])  # gt 2: predicted 0


def one_hot_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(labels.shape[0], k, *labels.shape[1:], generator=g)
    return noise + 5.0 * torch.nn.functional.one_hot(labels.clamp_min(0), k).permute(0, 3, 1, 2)


def test_confusion_iou_miou_pixel_acc_by_hand():
    conf = confusion_matrix(PRED, TARGET, 3)
    assert conf.dtype == torch.int64 and torch.equal(conf, CONF)
    # IoU0 = 1/(2+2-1), IoU1 = 2/(2+3-2), IoU2 = 0/(1+0-0)
    assert iou_from_confusion(conf).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert miou_from_confusion(conf) == pytest.approx(1 / 3)
    assert pixel_acc_from_confusion(conf) == pytest.approx(3 / 5)


def test_meter_logits_and_labels_agree_and_ignore_is_never_counted():
    a, b = SegmentationMeter(3), SegmentationMeter(3)
    a.update(PRED, TARGET)
    b.update(one_hot_logits(PRED, 3), TARGET)
    assert torch.equal(a.confusion, CONF) and torch.equal(b.confusion, CONF)
    assert a.compute() == b.compute()
    assert int(a.confusion.sum()) == 5  # 6 pixels, 1 ignored
    res = a.compute()
    assert res["miou"] == pytest.approx(1 / 3) and res["pixel_acc"] == pytest.approx(0.6)


def test_class_absent_from_both_is_nan_and_excluded():
    m = SegmentationMeter(4)
    m.update(PRED, TARGET)
    res = m.compute()
    assert math.isnan(res["iou_per_class"][3])
    assert res["iou_per_class"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert res["miou"] == pytest.approx(1 / 3)


def test_dataset_level_differs_from_legacy_per_image():
    target = torch.tensor([[[0, 0]], [[0, 1]]])
    pred = torch.tensor([[[0, 0]], [[1, 1]]])
    # legacy: image A class 0 IoU 1 (class 1 skipped) -> 1; image B IoU0 = 0/1, IoU1 = 1/2 -> 0.25
    assert legacy_miou_per_image(pred, target, 2).tolist() == pytest.approx([1.0, 0.25])
    m = SegmentationMeter(2)
    m.update(pred, target)
    res = m.compute()
    assert res["miou_legacy"] == pytest.approx(0.625)
    # dataset: conf [[2,1],[0,1]] -> IoU0 = 2/3, IoU1 = 1/2
    assert res["miou"] == pytest.approx(7 / 12)


def test_segmentation_bad_inputs_raise():
    m = SegmentationMeter(3)
    with pytest.raises(ValueError, match="target labels"):
        m.update(PRED, torch.tensor([[[0, 0, 1], [1, 3, -1]]]))
    with pytest.raises(ValueError, match="logits"):
        m.update(torch.zeros(1, 2, 2, 3), TARGET)


def depth_example():
    pred = torch.tensor([1.5, 2.0, 4.0, 1.7, 0.5]).view(1, 1, 1, 5)
    target = torch.tensor([2.0, 2.0, 0.0, 1.0, 1.0]).view(1, 1, 1, 5)  # third pixel invalid
    return pred, target


def test_depth_metrics_by_hand():
    pred, target = depth_example()
    res = depth_metrics(pred, target)
    # valid pairs (1.5,2) (2,2) (1.7,1) (0.5,1); ratios 4/3, 1, 1.7, 2
    assert res["abs_err"] == pytest.approx((0.5 + 0 + 0.7 + 0.5) / 4)
    assert res["rel_err"] == pytest.approx((0.25 + 0 + 0.7 + 0.5) / 4)
    assert res["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0.49 + 0.25) / 4))
    logs = [math.log(0.75), 0.0, math.log(1.7), math.log(0.5)]
    assert res["log_rmse"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4))
    assert (res["delta1"], res["delta2"], res["delta3"]) == pytest.approx((0.25, 0.5, 0.75))
    m = DepthMeter()
    m.update(pred, target)
    assert m.compute() == pytest.approx(res)


def test_depth_mask_and_negative_prediction():
    pred, target = depth_example()
    mask = torch.tensor([True, True, True, False, False]).view(1, 1, 1, 5)  # also drops 1.7 and 0.5
    assert depth_metrics(pred, target, mask)["abs_err"] == pytest.approx(0.25)
    res = depth_metrics(torch.tensor([-1.0]).view(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert math.isfinite(res["log_rmse"]) and res["delta3"] == 0.0 and res["abs_err"] == 2.0


def test_depth_is_split_level_not_batch_mean():
    pred, target = depth_example()  # 4 valid pixels
    pred2, target2 = torch.full((1, 1, 1, 5), 3.0), torch.tensor([1.0, 0, 0, 0, 0]).view(1, 1, 1, 5)
    m = DepthMeter()
    m.update(pred, target)
    m.update(pred2, target2)  # 1 valid pixel
    both = depth_metrics(torch.cat([pred, pred2]), torch.cat([target, target2]))
    assert m.compute() == pytest.approx(both)
    assert both["abs_err"] == pytest.approx((1.7 + 2.0) / 5)


def predictions_1px():
    return {"seg": torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1),  # p = (1/4, 3/4)
            "depth2seg": torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1),  # q = (3/4, 1/4)
            "depth": torch.full((1, 1, 1, 1), 2.0), "seg2depth": torch.full((1, 1, 1, 1), 1.5)}


def test_consistency_kl_by_hand():
    maps = consistency_energy_maps(predictions_1px())
    kl = 0.25 * math.log(0.25 / 0.75) + 0.75 * math.log(0.75 / 0.25)  # = 0.5 ln 3
    assert maps["seg"].shape == (1, 1, 1) and maps["seg"].item() == pytest.approx(kl, rel=1e-5)
    m = ConsistencyMeter(2)
    m.update(predictions_1px())
    res = m.compute()
    assert res["seg_energy"] == pytest.approx(kl, rel=1e-5)
    assert res["depth_energy"] == pytest.approx(0.5)
    assert res["energy"] == pytest.approx(0.5 * kl + 0.25, rel=1e-5)
    assert res["seg_agreement"] == 0.0


def test_consistency_zero_when_transfer_equals_direct_and_masks():
    seg, depth = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    preds = {"seg": seg, "depth2seg": seg.clone(), "depth": depth, "seg2depth": depth.clone()}
    m = ConsistencyMeter(3)
    m.update(preds)
    res = m.compute()
    assert res["energy"] == pytest.approx(0.0, abs=1e-6) and res["seg_agreement"] == 1.0
    preds["seg2depth"] = depth + torch.arange(5.0)  # error 0..4 along W
    mask = torch.zeros(2, 1, 4, 5, dtype=torch.bool)
    mask[..., 2] = True
    m.reset()
    m.update(preds, depth_mask=mask)
    assert m.compute()["depth_energy"] == pytest.approx(2.0)


def test_delta_m_by_hand_sign_and_errors():
    base = {"miou": 0.5, "abs_err": 1.0}
    # miou +10% (better) and abs_err -10% (better) -> -10
    assert delta_m({"miou": 0.55, "abs_err": 0.9, "extra": 1.0}, base) == pytest.approx(-10.0)
    assert delta_m({"miou": 0.45, "abs_err": 1.2}, base) == pytest.approx(15.0)  # worse: positive
    assert delta_m({"foo": 2.0}, {"foo": 1.0}, {"foo": True}) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="no metric in common"):
        delta_m({"miou": 0.5}, {"abs_err": 1.0})
    with pytest.raises(ValueError, match="unknown direction"):
        delta_m({"foo": 1.0}, {"foo": 1.0})
    assert "negative = improvement" in DELTA_M_CONVENTION


def test_delta_m_task_weights_tasks_not_metrics():
    from xtc.metrics import METRIC_TASK, delta_m_task

    base = {"miou": 0.5, "pixel_acc": 0.8, "abs_err": 1.0}
    res = {"miou": 0.55, "pixel_acc": 0.8, "abs_err": 0.8}  # seg: -10% and 0%; depth: -20%
    # -10: one vote per metric
    assert delta_m(res, base) == pytest.approx(100 * (-0.1 + 0 - 0.2) / 3)
    # -12.5: per task
    assert delta_m_task(res, base) == pytest.approx(100 * ((-0.1 + 0) / 2 - 0.2) / 2)
    # two metrics per task: both weightings agree
    full = {**base, "rel_err": 0.5}
    assert (delta_m_task({**res, "rel_err": 0.6}, full)
            == pytest.approx(delta_m({**res, "rel_err": 0.6}, full)))
    # the override moves abs_err into seg: one task, the mean of the three changes
    assert delta_m_task(res, base, metric_task={"abs_err": "seg"}) == pytest.approx(-10.0)
    assert METRIC_TASK["normal_30"] == "normal" and METRIC_TASK["rel_err"] == "depth"
    with pytest.raises(ValueError, match="no task known for \\['foo'\\]"):
        delta_m_task({"foo": 2.0}, {"foo": 1.0}, {"foo": True})
    assert (delta_m_task({"foo": 2.0}, {"foo": 1.0}, {"foo": True}, {"foo": "x"})
            == pytest.approx(-100.0))


def test_normal_metrics_directions():
    # NYUv2 normals: angle errors lower is better, within-angle shares higher is better
    base = {"normal_mean": 20.0, "normal_median": 10.0,
            "normal_11": 0.4, "normal_22": 0.5, "normal_30": 0.6}
    better = {"normal_mean": 18.0, "normal_median": 9.0,
              "normal_11": 0.44, "normal_22": 0.55, "normal_30": 0.66}
    assert delta_m(better, base) == pytest.approx(-10.0)
    assert not higher_is_better("test_normal_mean") and higher_is_better("normal_11")


def test_delta_m_convention_credits_the_sign_correctly():
    # Maninis et al. 2019 define Δm higher-is-better; the lower-is-better sign is CAGrad's /
    # Nash-MTL's
    maninis = next(s for s in DELTA_M_CONVENTION.split(";") if "Maninis" in s)
    assert "opposite sign" in maninis and "higher is" in maninis
    assert "Nash-MTL" in DELTA_M_CONVENTION and "CAGrad" in DELTA_M_CONVENTION
    assert "Task-weighted" in DELTA_M_CONVENTION and "Senushkin" in DELTA_M_CONVENTION


def test_higher_is_better_for_model_selection():
    assert (higher_is_better("miou") and higher_is_better("val_delta1")
            and higher_is_better("seg_agreement"))
    assert not higher_is_better("val_loss") and not higher_is_better("abs_err")
    assert not higher_is_better("loss_seg") and not higher_is_better("energy")
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("accuracy")


def test_merge_and_state_round_trip_equal_single_meter():
    g = torch.Generator().manual_seed(1)
    tgt = torch.randint(-1, 4, (4, 6, 7), generator=g)
    logits = torch.randn(4, 4, 6, 7, generator=g)
    dp, dt = (torch.rand(4, 1, 6, 7, generator=g),
              torch.rand(4, 1, 6, 7, generator=g) * (tgt[:, None] >= 0))
    preds = {"seg": logits, "depth2seg": torch.randn(4, 4, 6, 7, generator=g), "depth": dp,
             "seg2depth": dt}
    for make, feed in [(lambda: SegmentationMeter(4), lambda m, s: m.update(logits[s], tgt[s])),
                       (DepthMeter, lambda m, s: m.update(dp[s], dt[s])),
                       (lambda: ConsistencyMeter(4),
                        lambda m, s: m.update({k: v[s] for k, v in preds.items()},
                                              seg_valid=tgt[s] >= 0))]:
        single, a, b = make(), make(), make()
        feed(single, slice(None))
        feed(a, slice(0, 1))
        feed(b, slice(1, None))
        a.merge(b)
        c = make()
        c.load_state(a.state())
        for n, t in single.state().items():
            assert torch.allclose(t.double(), c.state()[n].double()), n
        got, want = c.compute(), single.compute()
        for n, v in want.items():
            assert got[n] == pytest.approx(v, nan_ok=True), n


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_perfect_prediction_gives_one(k, size, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, k, (2, size, size), generator=g)
    target[0, 0, 0] = 0  # at least one valid pixel
    pred = torch.where(target >= 0, target, torch.randint(0, k, target.shape, generator=g))
    m = SegmentationMeter(k)
    m.update(pred, target)
    res = m.compute()
    assert res["miou"] == 1.0 and res["pixel_acc"] == 1.0 and res["miou_legacy"] == 1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_miou_invariant_under_class_permutation(k, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, k, (2, 4, 5), generator=g)
    pred = torch.randint(0, k, (2, 4, 5), generator=g)
    perm = torch.randperm(k, generator=g)
    permuted_target = torch.where(target >= 0, perm[target.clamp_min(0)], target)
    a = confusion_matrix(pred, target, k)
    b = confusion_matrix(perm[pred], permuted_target, k)
    assert miou_from_confusion(a) == pytest.approx(miou_from_confusion(b))
    iou_a, iou_b = iou_from_confusion(a), iou_from_confusion(b)
    assert torch.allclose(iou_b[perm], iou_a, equal_nan=True)


def test_logits_give_the_argmax_labels_first_maximum_on_ties():
    logits = torch.randn(2, 5, 6, 7)
    logits[:, 3] = logits[:, 1]  # exact ties: the first class must win, as with argmax
    meter, by_labels = SegmentationMeter(5), SegmentationMeter(5)
    target = torch.randint(-1, 5, (2, 6, 7))
    meter.update(logits, target)
    by_labels.update(logits.argmax(1), target)
    assert torch.equal(meter.confusion, by_labels.confusion)
