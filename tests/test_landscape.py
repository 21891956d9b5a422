"""xtc.analysis.landscape: filter-normalised directions, exact restore, surfaces, sharpness."""

import numpy as np
import pytest
import torch

from xtc import config
from xtc.analysis import landscape
from xtc.models import build_model_from_config
from tests import conftest

TINY = [*conftest.TINY, "data.train_size=24", "data.test_size=8", "train.epochs=1",
        "train.max_steps_per_epoch=2", "train.batch_size=2"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = config.load(None, TINY)
    model = build_model_from_config(cfg, num_classes=7).eval()
    criterion = landscape.landscape_criterion(cfg)
    batches = landscape.sample_batches(cfg, "test", n_batches=1, batch_size=2)
    return cfg, model, criterion, batches


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_direction_is_filter_normalised(setup):
    _, model, _, _ = setup
    d = landscape.filter_normalized_direction(model, seed=3)
    params = dict(model.named_parameters())
    assert set(d) == set(params)
    checked = 0
    for name, w in params.items():
        assert d[name].shape == w.shape
        if w.dim() <= 1:  # biases and BatchNorm weights/biases: ignored
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1),
                                       w.detach().flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked > 10
    again = landscape.filter_normalized_direction(model, seed=3)
    assert all(torch.equal(d[k], again[k]) for k in d)
    other = landscape.filter_normalized_direction(model, seed=4)
    assert not all(torch.equal(d[k], other[k]) for k in d)


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_surface_restores_weights_and_centre_is_unperturbed_loss(setup, bn):
    _, model, criterion, batches = setup
    before = _snapshot(model)
    model.train()  # the mode must come back as well
    dx = landscape.filter_normalized_direction(model, seed=0)
    dy = landscape.filter_normalized_direction(model, seed=1)
    surf = landscape.surface(model, dx, dy, batches, criterion, grid=3, span=0.5, bn=bn)
    assert model.training
    model.eval()
    assert _same(before, _snapshot(model))  # bit-exact
    assert set(surf.terms) == {"seg", "depth", "seg2depth", "depth2seg", "total"}
    assert surf["total"].shape == (3, 3) and np.isfinite(surf["total"]).all()
    if bn == "eval":
        with torch.no_grad():
            ref = criterion(model(batches[0]["image"]), batches[0])
        for term, value in ref.items():
            assert surf[term][1, 1] == pytest.approx(float(value), rel=1e-6, abs=1e-7)
        assert surf["total"].max() > surf["total"][1, 1]  # moving away changes the loss


def test_interpolation_endpoints_equal_each_models_loss(setup):
    cfg, model_a, criterion, batches = setup
    torch.manual_seed(1)
    model_b = build_model_from_config(cfg, num_classes=7).eval()
    before = _snapshot(model_a)
    curve = landscape.interpolate(model_a, model_b, batches, criterion, alphas=[0.0, 0.5, 1.0])
    assert _same(before, _snapshot(model_a))
    with torch.no_grad():
        loss_a = criterion(model_a(batches[0]["image"]), batches[0])
        loss_b = criterion(model_b(batches[0]["image"]), batches[0])
    for term in curve.terms:
        assert curve[term][0] == pytest.approx(float(loss_a[term]), rel=1e-6, abs=1e-7)
        assert curve[term][-1] == pytest.approx(float(loss_b[term]), rel=1e-6, abs=1e-7)
    default = landscape.interpolate(model_a, model_b, batches, criterion, alphas=5)
    assert 0.0 in default.alpha and 1.0 in default.alpha and default.alpha.min() == -0.5


def test_interpolate_refuses_different_architectures(setup):
    cfg, model_a, criterion, batches = setup
    mtl = build_model_from_config(config.load(None, TINY + ["model.method=mtl"]), num_classes=7)
    with pytest.raises(ValueError, match="same architecture"):
        landscape.interpolate(model_a, mtl, batches, criterion, alphas=[0.0])


def test_sharpness_of_a_quadratic_bowl():
    x = landscape.grid_coordinates(7, span=1.5)
    assert x[3] == 0.0
    xx, yy = np.meshgrid(x, x)  # z[i, j] at (x[j], y[i])
    bowl = landscape.Surface(x, x.copy(), {"total": 3.0 * xx ** 2 + 0.5 * yy ** 2 + 2.0})
    s = landscape.sharpness(bowl)["total"]
    assert s["centre"] == pytest.approx(2.0)
    assert s["curvature_x"] == pytest.approx(6.0)
    assert s["curvature_y"] == pytest.approx(1.0)
    assert s["mean_curvature"] == pytest.approx(3.5)
    assert s["max_increase"] == pytest.approx(3.5 * 1.5 ** 2)
    assert landscape.sharpness(bowl, radius=0.5)["total"]["max_increase"] == pytest.approx(0.75)
    curve = landscape.Curve(x + 1.0, {"seg": 2.0 * x ** 2})  # minimum at alpha = 1
    c = landscape.sharpness(curve, centre=1.0)["seg"]
    assert c["curvature"] == pytest.approx(4.0) and c["centre"] == pytest.approx(0.0)


def test_bad_bn_mode_names_the_choices(setup):
    _, model, criterion, batches = setup
    d = landscape.filter_normalized_direction(model)
    with pytest.raises(ValueError, match="recompute"):
        landscape.surface(model, d, d, batches, criterion, grid=3, bn="train")


def test_plots_draw_curves_contours_surfaces_and_tables(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    from xtc.viz import landscape_plots

    x = landscape.grid_coordinates(5, 1.0)
    xx, yy = np.meshgrid(x, x)
    surfaces = {"a": landscape.Surface(x, x, {"seg": xx ** 2 + yy ** 2 + 1,
                                              "total": np.exp(5 * xx)}),
                "b": landscape.Surface(x, x, {"seg": np.ones((5, 5))})}
    fig = landscape_plots.plot_contours(surfaces, path=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and len(fig.axes) >= 4
    curve = landscape.Curve(x, {"seg": x ** 2, "total": x ** 2 + 1})
    assert len(landscape_plots.plot_curves({"a": curve}).axes) == 2
    fig3d = landscape_plots.surface_figure(surfaces, terms=["seg"])
    assert sum(t.type == "surface" for t in fig3d.data) == 2
    rows = landscape_plots.sharpness_rows({"a": landscape.sharpness(surfaces["a"])})
    html = landscape_plots.table(rows).data
    assert "<table>" in html and "max_increase" in html and "nan" not in html
    with pytest.raises(ValueError, match="not computed"):
        landscape_plots.plot_curves(curve, terms=["depth"])
