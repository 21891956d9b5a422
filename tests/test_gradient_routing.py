"""The headline property (docs/method.md §3.2): a cross-task term trains its transfer
net, its source decoder and the encoder, and never the decoder that produced its target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xtc.config
from xtc.losses import build_criterion, cross_task_loss
from xtc.models import build_model

K = 4


def _batch(b: int = 2, h: int = 64, w: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, K, (b, h, w), generator=g)
    seg[:, :4] = -1
    mask = torch.rand(b, 1, h, w, generator=g) > 0.2
    depth = torch.rand(b, 1, h, w, generator=g) * mask
    return {"image": torch.rand(b, 3, h, w, generator=g), "seg_target": seg,
            "depth_target": depth, "depth_mask": mask}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("xtc", K, "resnet18", decoder_width=16, transfer_width=8)


def _grad_mass(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


ROUTES = {  # term: (modules that must get gradient, modules that must not)
    "seg2depth": (("transfer.seg2depth", "decoders.seg", "encoder"),
                  ("decoders.depth", "transfer.depth2seg")),
    "depth2seg": (("transfer.depth2seg", "decoders.depth", "encoder"),
                  ("decoders.seg", "transfer.seg2depth")),
}


@pytest.mark.parametrize("mode", ["consistency", "alignment", "both"])
@pytest.mark.parametrize("term", sorted(ROUTES))
def test_cross_task_gradient_routing(model: nn.Module, mode: str, term: str) -> None:
    batch = _batch()
    model.zero_grad(set_to_none=True)
    terms = cross_task_loss(model(batch["image"]), batch, mode)
    terms[term].backward()
    reached, untouched = ROUTES[term]
    for name in reached:
        assert _grad_mass(model.get_submodule(name)) > 0, f"{term} must reach {name}"
    for name in untouched:
        assert _grad_mass(model.get_submodule(name)) == 0, f"{term} must not reach {name}"


@pytest.mark.parametrize("term", sorted(ROUTES))
def test_ssim_and_kl_variants_route_the_same(model: nn.Module, term: str) -> None:
    batch = _batch()
    model.zero_grad(set_to_none=True)
    terms = cross_task_loss(model(batch["image"]), batch, "consistency", seg2depth="ssim",
                            depth2seg="kl", label_smoothing=0.1)
    terms[term].backward()
    reached, untouched = ROUTES[term]
    assert all(_grad_mass(model.get_submodule(n)) > 0 for n in reached)
    assert all(_grad_mass(model.get_submodule(n)) == 0 for n in untouched)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "gradnorm", "dwa"])
def test_every_parameter_gets_a_gradient(model: nn.Module, weighting: str) -> None:
    cfg = xtc.config.load(None, ["model.method=xtc", f"loss.weighting={weighting}",
                                 "loss.cross_task=both"])
    criterion = build_criterion(cfg, model)
    batch = _batch()
    model.zero_grad(set_to_none=True)
    out = criterion(model(batch["image"]), batch)
    out["total"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    for name, p in criterion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------- the three-task graph
def _batch3(b: int = 2, h: int = 64, w: int = 64) -> dict:
    batch = _batch(b, h, w)
    g = torch.Generator().manual_seed(1)
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    mask = torch.rand(b, 1, h, w, generator=g) > 0.2
    return {**batch, "normal_target": normal * mask, "normal_mask": mask}


THREE = ("seg", "depth", "normal")
EDGES3 = [f"{a}2{b}" for a in THREE for b in THREE if a != b]


@pytest.fixture(scope="module")
def model3() -> nn.Module:
    torch.manual_seed(0)
    return build_model("xtc", K, "resnet18", tasks=THREE, decoder_width=16, transfer_width=8)


def test_three_tasks_build_all_six_transfer_nets(model3: nn.Module) -> None:
    assert sorted(model3.transfer) == sorted(EDGES3)
    out = model3(_batch3()["image"])
    assert out["normal"].shape[1] == 3 and out["seg2normal"].shape[1] == 3
    assert out["normal2seg"].shape[1] == K and out["normal2depth"].shape[1] == 1


@pytest.mark.parametrize("mode", ["consistency", "alignment", "both"])
@pytest.mark.parametrize("term", EDGES3)
def test_every_edge_of_the_three_task_graph_routes(model3: nn.Module, mode: str,
                                                    term: str) -> None:
    """a2b reaches transfer a2b, decoder a and the encoder; never decoder b, the third
    decoder or another transfer net."""
    cfg = xtc.config.load(None, ["model.tasks=[seg,depth,normal]", f"loss.cross_task={mode}",
                                 "loss.weighting=fixed"])
    criterion = build_criterion(cfg, model3)
    batch = _batch3()
    model3.zero_grad(set_to_none=True)
    terms = criterion(model3(batch["image"]), batch)
    terms[term].backward()
    source, target = term.split("2")
    third = next(t for t in THREE if t not in (source, target))
    for name in (f"transfer.{term}", f"decoders.{source}", "encoder"):
        assert _grad_mass(model3.get_submodule(name)) > 0, f"{term} must reach {name}"
    untouched = [f"decoders.{target}", f"decoders.{third}"] + [
        f"transfer.{e}" for e in EDGES3 if e != term]
    for name in untouched:
        assert _grad_mass(model3.get_submodule(name)) == 0, f"{term} must not reach {name}"


def test_group_is_the_mean_of_outgoing_edges(model3: nn.Module) -> None:
    """L_a = (1 - lambda_a) L_a + lambda_a mean_b L_a2b, with one lambda per source task."""
    cfg = xtc.config.load(None, ["model.tasks=[seg,depth,normal]", "loss.weighting=fixed",
                                 "loss.lambdas={seg: 0.1, depth: 0.2, normal: 0.3}"])
    criterion = build_criterion(cfg, model3)
    batch = _batch3()
    with torch.no_grad():
        terms = criterion(model3(batch["image"]), batch)
    lam = {"seg": 0.1, "depth": 0.2, "normal": 0.3}
    expected = sum((1 - lam[a]) * terms[a] + lam[a] * (sum(terms[f"{a}2{b}"] for b in THREE
                                                           if b != a) / 2) for a in THREE)
    assert torch.allclose(terms["total"], expected, rtol=1e-6)
