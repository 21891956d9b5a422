"""The viz layer for any task set: a three-task (seg, depth, normal) xtc run renders every
panel, its curves have one column per task, alignment and landscape take its six edges, and
the normals derived from the synthetic city's depth agree with the ones it ships."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("agg")

from xtc import config, train  # noqa: E402
from xtc.analysis import alignment, landscape
from xtc.viz import alignment_plots, explorer, landscape_plots, plots  # noqa: E402

TASKS3 = ["seg", "depth", "normal"]
EDGES = ["seg2depth", "seg2normal", "depth2seg", "depth2normal", "normal2seg", "normal2depth"]
TINY3 = ["data.height=64", "data.width=64", "data.train_size=24", "data.test_size=8",
         "model.encoder=resnet18", "model.decoder_width=16", "model.transfer_width=8",
         "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=4",
         "train.device=cpu", "train.grad_cosine_every=1", "model.tasks=[seg,depth,normal]"]


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """One tiny three-task xtc run (~10-20 s on 2 cores), loaded as the explorer loads it."""
    out = tmp_path_factory.mktemp("viz-3task") / "xtc3"
    train.fit(config.load(None, TINY3, method="xtc"), out_dir=out, progress=False)
    return explorer.load_run(out)


def _panels() -> list[str]:
    return ["image", "seg_target", "seg", "depth2seg", "normal2seg", "depth_target", "depth",
            "seg2depth", "normal2depth", "normal_target", "normal", "seg2normal",
            "depth2normal", "abs_err", "seg_err", "normal_err", "seg_energy", "depth_energy",
            "normal_energy"]


@pytest.mark.slow
def test_panels_cover_every_task_and_all_six_transfers(run3):
    assert [name for name, _, _ in run3.model.edges] == EDGES
    assert explorer.panel_names(run3) == _panels()
    assert explorer.prediction_panels(run3) == _panels()[:13]
    specs = explorer.panel_specs(run3)
    assert specs["normal_err"].unit == "angle error (degrees)"
    assert specs["seg2normal"].kind == "normal" and specs["normal2depth"].kind == "depth"
    assert specs["depth_target"].unit == "inverse depth"
    assert "mean of 2 transfers" in specs["normal_energy"].title


@pytest.mark.slow
def test_predict_returns_a_map_for_every_panel(run3):
    maps = explorer.predict(run3, "test", 0)
    assert list(maps) == _panels()
    item = run3.dataset("test")[0]
    valid = item["normal_mask"][0].numpy()
    for name in ("normal_target", "normal", "seg2normal", "depth2normal"):
        assert maps[name].shape == (64, 64, 3)
    assert np.isnan(maps["normal_target"][~valid]).all()
    np.testing.assert_allclose(np.linalg.norm(maps["normal_target"][valid], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(maps["seg2normal"], axis=-1), 1, atol=1e-4)
    err = maps["normal_err"]
    assert np.isnan(err[~valid]).all() and (err[valid] >= 0).all() and (err[valid] <= 180).all()
    for name in ("seg_energy", "depth_energy", "normal_energy"):
        assert maps[name].shape == (64, 64) and (maps[name] >= -1e-5).all()
    assert maps["normal_energy"].max() <= 2 + 1e-5  # 1 - cos
    assert ((maps["seg_err"] == 1) == ((maps["seg"] != maps["seg_target"])
                                       & (maps["seg_target"] >= 0))).all()


@pytest.mark.slow
def test_render_draws_one_row_per_task(run3):
    fig = explorer.render(run3, "test", 1)
    assert len(fig.data) == len(_panels()) == len(fig.layout.annotations)
    titles = {a.text for a in fig.layout.annotations}
    assert {"transferred normal (seg2normal)", "transferred seg (normal2seg)",
            "normal angle error", "GT normal"} <= titles
    assert "normals as RGB" in fig.layout.title.text
    normal = next(t for t in fig.data if t.name == "normal_target")
    assert normal.type == "image" and np.asarray(normal.z).shape == (64, 64, 3)
    bars = {t.name: t.colorbar.title.text for t in fig.data if t.type == "heatmap"}
    assert bars["normal_err"] == "angle error (degrees)"
    assert bars["normal_energy"] == "1 - cos(transferred, direct)"
    assert bars["abs_err"] == "|error| (inverse depth)"


@pytest.mark.slow
def test_static_gallery_lists_normal_panels_and_the_prediction_subset(run3, tmp_path):
    fig = explorer.static_gallery(run3, "test", [0, 1])
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 2 * len(_panels())
    titles = " ".join(ax.get_title() for ax in drawn)
    assert "normal angle error\n[angle error (degrees)]" in titles
    assert all(f"({edge})" in titles for edge in EDGES)
    fig.savefig(tmp_path / "gallery.png")
    fig = explorer.static_gallery(run3, "test", [0], panels=explorer.PREDICTION_PANELS)
    assert len([ax for ax in fig.axes if ax.images]) == 13  # every task's predictions


@pytest.mark.slow
def test_sample_and_prediction_plots_show_normals(run3):
    ds = run3.dataset("val")
    assert plots.sample_tasks(ds) == TASKS3
    fig = plots.show_samples(ds, 2)
    assert len([ax for ax in fig.axes if ax.images]) == 2 * 4
    assert "normal_target (RGB = (n+1)/2)" in {ax.get_title() for ax in fig.axes}
    assert len([ax for ax in plots.show_samples(ds, 1, tasks=["seg", "depth"]).axes
                if ax.images]) == 3
    fig = plots.show_predictions(run3.model, ds, [0])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[1:] == _panels()[1:13]
    rgb = plots.normal_rgb(ds[0]["normal_target"], ds[0]["normal_mask"])
    assert rgb.dtype == np.uint8 and (rgb[~ds[0]["normal_mask"][0].numpy()] == 0).all()


@pytest.mark.slow
def test_task_curves_one_column_per_task(run3):
    history = run3.results["history"]
    columns = plots.task_curves(history)
    assert [c[0] for c in columns] == TASKS3
    assert columns[2][2] == ["normal", "seg2normal", "depth2normal"]  # terms into normals
    assert columns[2][3] == ["normal_mean", "normal_median", "normal_11", "normal_22",
                             "normal_30"]
    fig = plots.plot_task_curves(history, "inverse depth")
    titles = [ax.get_title() for ax in fig.axes if ax.axison and ax.get_title()]
    assert titles.count("surface normals: val metrics") == 1
    assert sum(t.endswith(": train loss terms") for t in titles) == 3
    labels = {t.get_text() for ax in fig.axes if ax.get_legend()
              for t in ax.get_legend().texts}
    assert {"normal_median ↓ (degrees)", "normal_11 ↑ (fraction)",
            "normal2depth (transferred → depth)", "normal (1 - cos)"} <= labels
    assert all(ax.get_ylabel() for ax in fig.axes if ax.axison)


@pytest.mark.slow
def test_alignment_takes_the_six_edges(run3, tmp_path):
    rows = alignment.alignment_curves({"xtc3": run3.results["history"]})
    assert {"grad_cos_normal", "normal_energy"} <= set(rows[0])
    assert alignment.curve_tasks(rows) == TASKS3
    assert math.isfinite(alignment.summarize_curves(rows)["xtc3"]["grad_cos_normal_mean"])
    fig = alignment_plots.plot_alignment_curves(rows, path=tmp_path / "curves.png")
    assert len(fig.axes) == 6 and all(ax.get_ylabel() for ax in fig.axes)
    batches = landscape.sample_batches(run3.config, "test", n_batches=2, batch_size=2)
    maps = alignment.energy_maps(run3.model, batches[0])
    assert maps["normal_pred"].shape == (2, 64, 64, 3) and maps["normal_error"].shape == (2, 64, 64)
    assert all(f"{edge}_energy" in maps for edge in EDGES)
    np.testing.assert_allclose(maps["normal_energy"],
                               (maps["seg2normal_energy"] + maps["depth2normal_energy"]) / 2,
                               rtol=1e-5, atol=1e-6)
    stats = alignment.energy_error_correlation(run3.model, batches, max_images=3)
    assert list(stats) == TASKS3 + EDGES
    for key, numbers in stats.items():
        assert numbers["n_images"] == 3, key
        assert math.isnan(numbers["auroc"]) or 0 <= numbers["auroc"] <= 1
    assert stats["normal2depth"]["positive_rate"] == pytest.approx(0.5, abs=0.05)
    assert [r["task"] for r in alignment.correlation_table({"a": stats})] == TASKS3 + EDGES
    fig = alignment_plots.plot_energy_maps({"xtc3": maps}, n=1)
    assert len([ax for ax in fig.axes if ax.images]) == 7  # image + (error, energy) x 3


def test_landscape_evaluates_every_term_of_three_tasks():
    from xtc.models import build_model_from_config

    cfg = config.load(None, [*TINY3, "train.batch_size=2"], method="xtc")
    terms = ["seg", "depth", "normal", *EDGES, "total"]
    assert landscape.loss_terms(cfg) == terms
    torch.manual_seed(0)
    model = build_model_from_config(cfg, num_classes=7).eval()
    criterion = landscape.landscape_criterion(cfg)
    batches = landscape.sample_batches(cfg, "test", n_batches=1, batch_size=2)
    assert "normal_target" in batches[0]
    dx = landscape.filter_normalized_direction(model, seed=0)
    dy = landscape.filter_normalized_direction(model, seed=1)
    surf = landscape.surface(model, dx, dy, batches, criterion, grid=3, span=0.5)
    assert set(surf.terms) == set(terms) and landscape_plots.term_order(surf.terms) == terms
    curve = landscape.interpolate(model, dx, batches, criterion, alphas=3)
    assert all(np.isfinite(curve[t]).all() for t in terms)
    fig = landscape_plots.plot_contours({"a": surf})
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        landscape_plots.term_label(t) for t in terms]
    assert len(landscape_plots.plot_curves({"a": curve}).axes) == len(terms)
    fig3d = landscape_plots.surface_figure({"a": surf}, terms=["total", *EDGES])
    assert sum(t.type == "surface" for t in fig3d.data) == 7
    assert set(landscape.sharpness(surf)) == set(terms)


@pytest.mark.parametrize("size", [(64, 128), (128, 256)])
def test_normals_derived_from_depth_agree_with_the_shipped_ones(size):
    from xtc.data import build_dataset

    data = build_dataset("synthetic-city", "train", height=size[0], width=size[1],
                         train_size=8, val_fraction=0.0, augment=False)
    for index in range(3):
        derived = plots.normals_from_depth(data, index)
        ok = derived["valid"]
        assert ok.mean() > 0.5  # most pixels are comparable (not sky, not a depth edge)
        assert derived["median_angle"] < 0.1  # degrees: exact geometry, not an estimate
        assert (derived["angle"][ok] < 1).mean() > 0.9
        np.testing.assert_allclose(np.linalg.norm(derived["derived"][ok], axis=-1), 1, atol=1e-6)
    fig = plots.plot_depth_to_normals(data, 0)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    bars = [ax.get_ylabel() for ax in fig.axes if not ax.images]
    assert "angle (degrees)" in bars and any("metres" in b for b in bars)
    with pytest.raises(ValueError, match="synthetic city"):
        plots.normals_from_depth(object(), 0)


def test_two_task_names_are_unchanged():
    assert explorer.units("depth_energy", "metres") == "|seg2depth - depth| (metres)"
    assert explorer.units("seg_err", "metres") == "wrong (1) / right (0)"
    assert (explorer.error_panel("depth") == "abs_err"
            and explorer.error_panel("normal") == "normal_err")
    assert landscape_plots.term_order(["total", "depth2seg", "seg2depth", "depth", "seg"]) == \
        list(landscape_plots.TERM_ORDER)
    rows = alignment.alignment_curves({"a": [{"epoch": 0, "train_grad_cos_seg": 0.1}]})
    assert list(rows[0]) == list(alignment.CURVE_COLUMNS)
    assert len(alignment_plots.curve_panels(rows)) == 4
