"""xtc.viz: the explorer's pure render(), the headless gallery, plots and show_source."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("agg")

from xtc import config, train  # noqa: E402
from xtc.losses import consistency_loss  # noqa: E402
from xtc.viz import explorer, plots, source  # noqa: E402
from tests import conftest  # noqa: E402

TINY = [*conftest.TINY, "data.train_size=24", "data.test_size=8", "train.epochs=1",
        "train.max_steps_per_epoch=2"]


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    """One tiny trained run per method the explorer distinguishes (xtc, mtl, stl-seg)."""
    root = tmp_path_factory.mktemp("viz-runs")
    dirs = {}
    for method in ("xtc", "mtl", "stl-seg"):
        cfg = config.load(None, TINY, method=method)
        train.fit(cfg, out_dir=root / method, progress=False)
        dirs[method] = root / method
    return dirs


def test_import_is_lazy():
    code = ("import sys, xtc.viz; heavy = [m for m in ('plotly', 'ipywidgets', 'matplotlib', "
            "'IPython') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # shares a session fixture that trains three tiny runs (~30-60 s on 2 cores)
@pytest.mark.parametrize("method, n_panels", [("xtc", 11), ("mtl", 7), ("stl-seg", 4)])
def test_render_has_one_panel_per_map(run_dirs, method, n_panels):
    run = explorer.load_run(run_dirs[method])
    assert run.method == method
    fig = explorer.render(run, "test", 1)
    assert len(fig.data) == n_panels == len(explorer.panel_names(run))
    assert len(fig.layout.annotations) == n_panels  # one subplot title each
    titles = {a.text for a in fig.layout.annotations}
    assert ("transferred seg (depth2seg)" in titles) == (method == "xtc")
    assert "test #1" in fig.layout.title.text
    assert fig.data[0].z.shape == (64, 64, 3)


@pytest.mark.slow
def test_render_changes_with_the_sample(run_dirs):
    run = explorer.load_run(run_dirs["xtc"])
    a, b = explorer.render(run, "test", 0), explorer.render(run, "test", 1)
    assert a.layout.title.text != b.layout.title.text
    assert (a.data[0].z != b.data[0].z).any()


@pytest.mark.slow
def test_predict_maps_are_consistent(run_dirs):
    run = explorer.load_run(run_dirs["xtc"])
    maps = explorer.predict(run, "val", 0)
    seg_t, err = maps["seg_target"], maps["seg_err"]
    assert ((err == 1) == ((maps["seg"] != seg_t) & (seg_t >= 0))).all()
    assert (maps["depth_energy"] >= 0).all() and (maps["seg_energy"] >= -1e-5).all()
    with pytest.raises(IndexError, match="out of range"):
        explorer.predict(run, "test", 10_000)


@pytest.mark.slow
def test_static_gallery_headless(run_dirs, tmp_path):
    run = explorer.load_run(run_dirs["xtc"])
    fig = explorer.static_gallery(run, "test", [0, 1])
    assert len(fig.axes) == 2 * 11
    fig.savefig(tmp_path / "gallery.png")
    assert (tmp_path / "gallery.png").stat().st_size > 1000


@pytest.mark.slow
def test_explorer_widget_updates(run_dirs):
    ui = explorer.Explorer([run_dirs["xtc"], run_dirs["mtl"]], split="test", index=0)
    assert ui.index.max == 7
    ui.index.value = 3
    assert "test #3" in ui.figure().layout.title.text
    ui.run_select.value = str(run_dirs["mtl"].resolve())
    assert len(ui.figure().data) == 7


def test_load_run_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        explorer.load_run(tmp_path)


def test_show_source_returns_the_real_source():
    import inspect

    text = source.show_source(consistency_loss)
    assert text == inspect.getsource(consistency_loss)
    assert text.lstrip().startswith("def consistency_loss")


@pytest.mark.slow
def test_dataset_plots(run_dirs):
    run = explorer.load_run(run_dirs["xtc"])
    ds = run.dataset("val")
    shares = plots.class_balance(ds)
    assert list(shares) == list(ds.class_names) and abs(sum(shares.values()) - 1) < 1e-6
    for fig in (plots.show_samples(ds, 2), plots.plot_class_balance(ds),
                plots.plot_depth_histogram(ds), plots.plot_depth_per_class(ds),
                plots.show_predictions(run.model, ds, [0, 1])):
        assert fig.axes
    colours = plots.colorize_seg(ds[0]["seg_target"], ds.num_classes)
    assert colours.shape == (64, 64, 3)


@pytest.mark.slow
def test_plot_history(run_dirs):
    from xtc import results

    history = results.read(run_dirs["xtc"] / "results.json")["history"]
    fig = plots.plot_history(history)
    assert len(fig.axes) == 2 and fig.axes[0].lines


def test_runs_root_follows_the_environment(monkeypatch, tmp_path):
    import xtc.viz

    monkeypatch.setenv("XTC_RUNS_DIR", str(tmp_path))
    out = xtc.runtime.output_dir(None, "01_data")
    assert out.parent == tmp_path / "01_data" and out.is_dir()
    monkeypatch.delenv("XTC_RUNS_DIR")
    assert xtc.runtime.runs_root() == xtc.runtime.repo_path("runs")
