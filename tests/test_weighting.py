"""Weighting strategies: fixed, uncertainty, GradNorm (done correctly), DWA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xtc.losses.weighting import (WEIGHTINGS, DWAWeighting, FixedWeighting, GradNormWeighting,
                                  UncertaintyWeighting, build_weighting)
from xtc.registry import UnknownNameError

NAMES = ("seg", "depth")


def test_registry_names() -> None:
    assert WEIGHTINGS.names() == ["dwa", "famo", "fixed", "gradnorm", "uncertainty"]
    with pytest.raises(UnknownNameError, match="uncertainty"):
        build_weighting("nope", NAMES)


def test_fixed_is_sum() -> None:
    total = FixedWeighting(NAMES)({"seg": torch.tensor(2.0), "depth": torch.tensor(3.0)})
    assert float(total) == 5.0


def test_wrong_groups_are_an_error() -> None:
    with pytest.raises(ValueError, match="expects loss groups"):
        FixedWeighting(NAMES)({"seg": torch.tensor(1.0)})


@pytest.mark.parametrize("form, reg", [("kendall", 0.5), ("authors", 1.0)])
def test_uncertainty_value_and_gradient(form: str, reg: float) -> None:
    weighting = UncertaintyWeighting(NAMES, form=form)
    losses = {"seg": torch.tensor(2.0), "depth": torch.tensor(0.5)}
    total = weighting(losses)
    assert float(total) == pytest.approx(0.5 * 2.0 + 0.5 * 0.5)  # s = 0: 1/2 L, no regulariser
    total.backward()
    # d/ds [1/2 e^-s L + reg s] = -1/2 e^-s L + reg, at s = 0
    expected = torch.tensor([-0.5 * 2.0 + reg, -0.5 * 0.5 + reg])
    torch.testing.assert_close(weighting.log_vars.grad, expected)
    with torch.no_grad():
        weighting.log_vars.fill_(1.0)
    total = weighting(losses)
    assert float(total) == pytest.approx(0.5 * math.exp(-1) * 2.5 + 2 * reg)
    assert weighting.weights()["seg"] == pytest.approx(0.5 * math.exp(-1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 8)
        self.a, self.b = nn.Linear(8, 1), nn.Linear(8, 1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return {"seg": self.a(h).pow(2).mean(), "depth": 3 * self.b(h).abs().mean()}


def _net_grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_gradnorm_gradients() -> None:
    net, x = TwoHeads(), torch.randn(16, 4)
    weighting = GradNormWeighting(NAMES, net.shared.weight, alpha=0.16)
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([0.7, 1.3]))
    weighting(net.losses(x))  # the first applied step records L(0) at these losses
    weighting.after_step()  # (sum w = 2 already: the renormalisation leaves w as set)
    x2 = torch.randn(16, 4)
    losses = net.losses(x2)
    net.zero_grad()
    total = weighting(losses)
    total.backward()
    got_net, got_w = _net_grads(net), weighting.task_weights.grad.clone()

    # Network gradients: exactly those of sum_i w_i L_i (nothing leaks from the GradNorm loss).
    net.zero_grad()
    w = weighting.task_weights.detach()
    ref = net.losses(x2)
    (w[0] * ref["seg"] + w[1] * ref["depth"]).backward()
    for name, grad in _net_grads(net).items():
        torch.testing.assert_close(got_net[name], grad, msg=name)

    # w gradients: only from L_grad = sum |G_i - C_i|, with G_i = w_i ||grad_W L_i||.
    ref = net.losses(x2)
    norms = torch.stack([torch.autograd.grad(ref[n], net.shared.weight, retain_graph=True)[0].norm()
                         for n in NAMES])
    g = w * norms
    l0 = weighting.initial_losses
    ratio = torch.stack([ref[n].detach() for n in NAMES]) / l0
    c = g.mean() * (ratio / ratio.mean()).pow(0.16)
    torch.testing.assert_close(got_w, torch.sign(g - c) * norms)


def test_gradnorm_records_initial_losses_once_and_renormalises_in_place() -> None:
    net = TwoHeads()
    weighting = GradNormWeighting(NAMES, net.shared.weight)
    optimizer = torch.optim.Adam(list(net.parameters()) + list(weighting.parameters()), lr=0.1)
    param = weighting.task_weights
    first = None
    for step in range(3):
        losses = net.losses(torch.randn(8, 4))
        if first is None:
            first = torch.stack([losses[n].detach() for n in NAMES])
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
        weighting.after_step()
        torch.testing.assert_close(weighting.initial_losses, first)
        assert float(param.sum()) == pytest.approx(2.0)
        assert weighting.task_weights is param
        assert optimizer.param_groups[0]["params"][-1] is param
    assert not torch.allclose(param.detach(), torch.ones(2))  # the weights did move


def test_gradnorm_eval_mode_is_weighted_sum() -> None:
    net = TwoHeads()
    weighting = GradNormWeighting(NAMES, net.shared.weight).eval()
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([0.5, 1.5]))
    losses = net.losses(torch.randn(8, 4))
    total = weighting(losses)
    torch.testing.assert_close(total, 0.5 * losses["seg"] + 1.5 * losses["depth"])
    assert not bool(weighting.initialised)


def test_gradnorm_needs_shared_parameter() -> None:
    with pytest.raises(ValueError, match="shared"):
        build_weighting("gradnorm", NAMES)


def test_dwa_weights_follow_the_formula() -> None:
    t = 2.0
    weighting = DWAWeighting(NAMES, temperature=t)
    epochs = [[(2.0, 4.0), (2.0, 4.0)], [(1.0, 3.0), (1.0, 3.0)], [(0.5, 2.7), (0.5, 2.7)]]
    means = []
    for epoch, batches in enumerate(epochs):
        for seg, depth in batches:
            total = weighting({"seg": torch.tensor(seg), "depth": torch.tensor(depth)})
            weighting.after_step()
        weights = weighting.weights()
        if epoch < 2:  # weights are 1 during the first two epochs
            assert weights == {"seg": 1.0, "depth": 1.0}
            assert float(total) == pytest.approx(seg + depth)
        means.append(batches[0])
        weighting.end_epoch()

    def expected(prev, prev2):
        r = [prev[i] / prev2[i] for i in range(2)]
        z = sum(math.exp(v / t) for v in r)
        return [2 * math.exp(v / t) / z for v in r]

    # after 3 epochs the weights for epoch 4 use r = Lbar(3rd) / Lbar(2nd)
    w = weighting.weights()
    assert [w["seg"], w["depth"]] == pytest.approx(expected(means[2], means[1]))
    # eval-mode calls do not count towards the epoch means
    weighting.eval()
    weighting({"seg": torch.tensor(100.0), "depth": torch.tensor(100.0)})
    assert int(weighting.running_count) == 0


def _dwa_run(epochs, skip_nan: bool) -> DWAWeighting:
    """DWA fed ``epochs`` (lists of (seg, depth) losses) as a trainer would: forward, then
    after_step on applied steps. With ``skip_nan`` each epoch starts with a NaN step that is
    forwarded and then skipped (no after_step), as ``train.nonfinite=skip`` does."""
    weighting = DWAWeighting(NAMES)
    for batches in epochs:
        if skip_nan:
            weighting({"seg": torch.tensor(float("nan")), "depth": torch.tensor(1.0)})
        for seg, depth in batches:
            weighting({"seg": torch.tensor(seg), "depth": torch.tensor(depth)})
            weighting.after_step()
        weighting.end_epoch()
    return weighting


def test_dwa_forward_alone_does_not_accumulate() -> None:
    """The trainer may skip a step after forward: only after_step may touch the sums."""
    weighting = DWAWeighting(NAMES)
    weighting({"seg": torch.tensor(2.0), "depth": torch.tensor(3.0)})
    assert int(weighting.running_count) == 0
    torch.testing.assert_close(weighting.running_sum, torch.zeros(2))
    weighting({"seg": torch.tensor(1.0), "depth": torch.tensor(5.0)})  # replaces the stash
    weighting.after_step()
    assert int(weighting.running_count) == 1
    torch.testing.assert_close(weighting.running_sum, torch.tensor([1.0, 5.0]))
    assert "_pending" not in weighting.state_dict()
    assert set(weighting.state_dict()) == set(DWAWeighting(NAMES).state_dict())


def test_dwa_skipped_nan_step_leaves_no_trace() -> None:
    epochs = [[(2.0, 4.0), (2.2, 4.1)], [(1.0, 3.0), (1.1, 3.2)], [(0.5, 2.7), (0.6, 2.5)]]
    clean, skipped = _dwa_run(epochs, skip_nan=False), _dwa_run(epochs, skip_nan=True)
    w = skipped.weights()
    assert all(math.isfinite(v) for v in w.values())
    assert w != {"seg": 1.0, "depth": 1.0}  # the third epoch did change the weights
    assert w == clean.weights()
    for name, buffer in clean.state_dict().items():
        torch.testing.assert_close(skipped.state_dict()[name], buffer, rtol=0, atol=0, msg=name)


def test_dwa_end_epoch_reduces_the_sums_over_ranks() -> None:
    """Two "ranks" with different losses: after the reduce both roll the global mean."""
    ranks = [DWAWeighting(NAMES), DWAWeighting(NAMES)]
    per_rank = [[(2.0, 4.0), (1.0, 1.0)], [(4.0, 2.0), (3.0, 5.0)]]
    for epoch in range(3):
        for weighting, losses in zip(ranks, per_rank):
            for seg, depth in losses:
                weighting({"seg": torch.tensor(seg / (epoch + 1)),
                           "depth": torch.tensor(depth / (epoch + 1) ** (0.5 + seg))})
                weighting.after_step()
        sums = [torch.cat([w.running_sum.double(), w.running_count.double().reshape(1)])
                for w in ranks]
        for weighting in ranks:
            weighting.end_epoch(reduce=lambda t: sum(sums))
    one = DWAWeighting(NAMES)
    for epoch in range(3):
        for losses in per_rank:
            for seg, depth in losses:
                one({"seg": torch.tensor(seg / (epoch + 1)),
                     "depth": torch.tensor(depth / (epoch + 1) ** (0.5 + seg))})
                one.after_step()
        one.end_epoch()
    assert ranks[0].weights() == pytest.approx(one.weights(), abs=1e-6)
    assert ranks[1].weights() == pytest.approx(one.weights(), abs=1e-6)
    assert one.weights() != pytest.approx({"seg": 1.0, "depth": 1.0})


def test_gradnorm_skipped_inf_first_step_does_not_record_initial_losses() -> None:
    net = TwoHeads()
    weighting = GradNormWeighting(NAMES, net.shared.weight)
    bad = net.losses(torch.randn(8, 4))
    bad["depth"] = bad["depth"] * float("inf")
    weighting(bad)  # skipped by the trainer: no after_step
    assert not bool(weighting.initialised)
    torch.testing.assert_close(weighting.initial_losses, torch.zeros(2))
    good = net.losses(torch.randn(8, 4))
    expected = torch.stack([good[n].detach() for n in NAMES])
    weighting(good).backward()
    weighting.after_step()
    assert bool(weighting.initialised)
    torch.testing.assert_close(weighting.initial_losses, expected)
    assert set(weighting.state_dict()) == {"task_weights", "initial_losses", "initialised"}
