"""Loss values against hand-computed cases, and pure function vs module agreement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import xtc.config
from xtc.losses import (CrossTaskLoss, DepthLoss, SegLoss, alignment_loss, build_criterion,
                        consistency_loss, cross_task_loss, depth2seg_loss, depth_loss,
                        pseudo_targets, seg2depth_loss, seg_loss)


def test_seg_loss_ignores_pixels() -> None:
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0] = -1
    ref = F.cross_entropy(logits, target, ignore_index=-1)
    torch.testing.assert_close(seg_loss(logits, target), ref)
    uniform = seg_loss(torch.zeros(1, 4, 2, 2), torch.tensor([[[0, 1], [-1, -1]]]))
    assert math.isclose(float(uniform), math.log(4), rel_tol=1e-6)


def test_seg_loss_all_ignored_is_zero_with_gradient() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = seg_loss(logits, torch.full((1, 2, 2), -1))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("kind, expected", [("l1", 2.0), ("mse", 5.0),
                                            ("logl1", (math.log(2) + math.log(4)) / 2),
                                            ("smoothl1", (0.5 + 2.5) / 2)])
def test_depth_loss_kinds_with_mask(kind: str, expected: float) -> None:
    # image 0: errors 1 and 3 valid, one invalid pixel with a NaN target; image 1: no valid pixel
    pred = torch.tensor([[[[1.0, 3.0, 7.0]]], [[[5.0, 5.0, 5.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 0.0, float("nan")]]], [[[0.0, 0.0, 0.0]]]])
    mask = torch.tensor([[[[True, True, False]]], [[[False, False, False]]]])
    loss = depth_loss(pred, target, mask, kind)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1].abs().sum() == 0


def test_depth_loss_per_image_then_batch_mean() -> None:
    pred = torch.tensor([[[[1.0, 1.0]]], [[[4.0, 0.0]]]])
    mask = torch.tensor([[[[True, True]]], [[[True, False]]]])
    # image 0 mean 1, image 1 mean 4 (one valid pixel) -> 2.5, not the pixel mean 2
    assert float(depth_loss(pred, torch.zeros_like(pred), mask)) == pytest.approx(2.5)


def test_depth_loss_without_valid_pixels_is_zero() -> None:
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = depth_loss(pred, torch.zeros_like(pred), torch.zeros_like(pred, dtype=torch.bool))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def _smoothed(labels: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    one_hot = F.one_hot(labels.clamp_min(0), k).permute(0, 3, 1, 2).float()
    return one_hot * (1 - eps) + (1 - one_hot) * eps / (k - 1)


def test_label_smoothed_ce_by_hand() -> None:
    k, eps = 3, 0.1
    logits = torch.randn(2, k, 2, 3)
    labels = torch.randint(0, k, (2, 2, 3))
    labels[1, 1] = -1
    q = _smoothed(labels, k, eps)
    per_pixel = -(q * F.log_softmax(logits, 1)).sum(1)
    valid = labels != -1
    expected = per_pixel[valid].mean()  # ignored pixels are not in the denominator
    torch.testing.assert_close(depth2seg_loss(logits, labels, "ce", eps), expected)
    plain = depth2seg_loss(logits, labels, "ce", 0.0)
    torch.testing.assert_close(plain, F.cross_entropy(logits, labels, ignore_index=-1))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_kl_matches_manual_formula(eps: float) -> None:
    k = 4
    logits = torch.randn(2, k, 3, 3)
    labels = torch.randint(0, k, (2, 3, 3))
    labels[0, 0, 0] = -1
    q = _smoothed(labels, k, eps)
    log_p = F.log_softmax(logits, 1)
    manual = torch.zeros(2, 3, 3)
    for c in range(k):  # sum_c q_c (log q_c - log p_c), 0 log 0 = 0
        qc = q[:, c]
        manual += torch.where(qc > 0, qc * (torch.log(qc.clamp_min(1e-30)) - log_p[:, c]), 0.0)
    expected = manual[labels != -1].mean()
    got = depth2seg_loss(logits, labels, "kl", eps)
    torch.testing.assert_close(got, expected)
    ce = depth2seg_loss(logits, labels, "ce", eps)
    entropy = -(torch.xlogy(q, q).sum(1))[labels != -1].mean()
    torch.testing.assert_close(ce - got, entropy)  # KL = CE - H(q)
    assert float(got) >= 0


def test_ssim_zero_for_identical_maps_and_positive_otherwise() -> None:
    x = torch.rand(2, 1, 16, 16)
    mask = torch.rand(2, 1, 16, 16) > 0.3
    assert float(seg2depth_loss(x, x.clone(), mask, "ssim")) == pytest.approx(0.0, abs=1e-6)
    assert float(seg2depth_loss(x, torch.rand(2, 1, 16, 16), mask, "ssim")) > 0.05


def test_pseudo_targets_are_detached_argmax() -> None:
    seg = torch.randn(1, 3, 2, 2, requires_grad=True)
    depth = torch.randn(1, 1, 2, 2, requires_grad=True)
    pseudo = pseudo_targets({"seg": seg, "depth": depth})
    assert not pseudo["depth"].requires_grad and torch.equal(pseudo["depth"], depth)
    assert torch.equal(pseudo["seg"], seg.argmax(1))


def _case() -> tuple[dict, dict]:
    b, k, h, w = 2, 3, 8, 8
    seg = torch.randn(b, k, h, w)
    depth = torch.rand(b, 1, h, w)
    batch = {"seg_target": torch.randint(0, k, (b, h, w)), "depth_target": torch.rand(b, 1, h, w),
             "depth_mask": torch.rand(b, 1, h, w) > 0.3}
    batch["seg_target"][:, 0] = -1
    preds = {"seg": seg, "depth": depth, "seg2depth": depth.clone(),  # agrees with direct depth
             "depth2seg": 50.0 * F.one_hot(seg.argmax(1), k).permute(0, 3, 1, 2).float()}
    return preds, batch


def test_consistency_vs_alignment_targets() -> None:
    preds, batch = _case()
    cons = consistency_loss(preds, batch)
    align = alignment_loss(preds, batch)
    # transferred predictions equal the direct ones -> consistency ~ 0
    assert float(cons["seg2depth"]) == pytest.approx(0.0, abs=1e-6)
    assert float(cons["depth2seg"]) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(align["seg2depth"], depth_loss(
        preds["seg2depth"], batch["depth_target"], batch["depth_mask"]))
    torch.testing.assert_close(align["depth2seg"], seg_loss(preds["depth2seg"],
                                                            batch["seg_target"]))
    both = cross_task_loss(preds, batch, "both")
    for key in both:
        torch.testing.assert_close(both[key], 0.5 * (cons[key] + align[key]))


def test_consistency_uses_ground_truth_ignore_mask() -> None:
    preds, batch = _case()
    preds["depth2seg"] = torch.randn_like(preds["seg"])
    labels = preds["seg"].argmax(1)
    labels[batch["seg_target"] == -1] = -1
    torch.testing.assert_close(consistency_loss(preds, batch)["depth2seg"],
                               depth2seg_loss(preds["depth2seg"], labels))


def test_modules_agree_with_functions() -> None:
    preds, batch = _case()
    preds["depth2seg"] = torch.randn_like(preds["seg"])
    torch.testing.assert_close(SegLoss()(preds["seg"], batch["seg_target"]),
                               seg_loss(preds["seg"], batch["seg_target"]))
    torch.testing.assert_close(DepthLoss("mse")(preds["depth"], batch["depth_target"],
                                                batch["depth_mask"]),
                               depth_loss(preds["depth"], batch["depth_target"],
                                          batch["depth_mask"], "mse"))
    for mode in ("consistency", "alignment", "both"):
        module = CrossTaskLoss(mode, "ssim", "kl", 0.1)(preds, batch)
        function = cross_task_loss(preds, batch, mode, seg2depth="ssim", depth2seg="kl",
                                   label_smoothing=0.1)
        for key in function:
            torch.testing.assert_close(module[key], function[key])


def test_bad_kinds_name_the_choices() -> None:
    with pytest.raises(ValueError, match="smoothl1"):
        DepthLoss("l3")
    with pytest.raises(ValueError, match="consistency"):
        CrossTaskLoss("nope")


@pytest.mark.parametrize("method, keys", [
    ("stl-seg", {"seg"}), ("stl-depth", {"depth"}), ("mtl", {"seg", "depth"}),
    ("xtc", {"seg", "depth", "seg2depth", "depth2seg"})])
def test_criterion_terms_and_fixed_combination(method: str, keys: set) -> None:
    cfg = xtc.config.load(None, [f"model.method={method}", "loss.weighting=fixed",
                                 "loss.lambda1=0.2", "loss.lambda2=0.3"])
    criterion = build_criterion(cfg)
    preds, batch = _case()
    preds["depth2seg"] = torch.randn_like(preds["seg"])
    preds["seg2depth"] = torch.rand_like(preds["depth"])
    out = criterion(preds, batch)
    assert set(out) == keys | {"total"}
    if method == "xtc":
        expected = (0.8 * out["seg"] + 0.2 * out["seg2depth"]
                    + 0.7 * out["depth"] + 0.3 * out["depth2seg"])
    else:
        expected = sum(out[k] for k in keys)
    torch.testing.assert_close(out["total"], expected)


def test_criterion_direct_only_predictions() -> None:
    cfg = xtc.config.load(None, ["model.method=xtc", "loss.weighting=fixed"])
    preds, batch = _case()
    out = build_criterion(cfg)({"seg": preds["seg"], "depth": preds["depth"]}, batch)
    assert set(out) == {"seg", "depth", "total"}
    torch.testing.assert_close(out["total"], out["seg"] + out["depth"])


def test_criterion_defaults_follow_the_paper() -> None:
    criterion = build_criterion(xtc.config.load(None))
    assert criterion.tasks == ("seg", "depth") and criterion.edges == ["seg2depth", "depth2seg"]
    assert criterion.lambdas == {"seg": 0.01, "depth": 0.01}
    seg, depth = criterion.task_specs["seg"], criterion.task_specs["depth"]
    assert depth.options["kind"] == "l1" and criterion.cross_task.mode == "consistency"
    assert depth.options["transfer_kind"] == "l1"
    assert seg.options["kind"] == "ce" and seg.options["label_smoothing"] == 0.0


def test_gradnorm_without_model_is_a_clear_error() -> None:
    cfg = xtc.config.load(None, ["loss.weighting=gradnorm"])
    with pytest.raises(ValueError, match="needs the model"):
        build_criterion(cfg)
