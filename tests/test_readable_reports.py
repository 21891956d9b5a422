"""What a reader of a report sees: the config as what differs from the defaults, curves one
column per task on labelled axes, galleries of chosen panels, plotly figures that survive an
offline HTML export, and the best run chosen on val metrics."""

from __future__ import annotations

import json

import matplotlib
import nbformat
import pytest

matplotlib.use("agg")

import xtc.viz  # noqa: E402
from xtc import config, train  # noqa: E402
from xtc import reports as report
from tests.conftest import TINY  # noqa: E402


def _history(split="val", xtc_terms=True):
    rows = []
    for epoch in range(3):
        row = {"epoch": epoch, "lr": 1e-3, "train_seg": 1.0 - epoch / 10,
               "train_depth": 0.2, "train_total": 0.6, f"{split}_miou": 0.3 + epoch / 10,
               f"{split}_pixel_acc": 0.8, f"{split}_abs_err": 0.1, f"{split}_rel_err": 1.0,
               "selection_score": -epoch * 1.0}
        if xtc_terms:
            row.update(train_seg2depth=0.2, train_depth2seg=1.4)
        rows.append(row)
    return rows


def test_task_curves_one_column_per_task_with_labelled_axes():
    fig = xtc.viz.plot_task_curves(_history(), "metres")
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(shown) == 6  # seg, depth, all tasks; losses above, metrics below
    titles = [ax.get_title() for ax in shown]
    assert "segmentation: val metrics" in titles and "depth: train loss terms" in titles
    assert all(ax.get_ylabel() for ax in shown)
    assert all(ax.get_xlabel() == "epoch" for ax in shown if "metrics" in ax.get_title())
    labels = {t.get_text() for ax in shown if ax.get_legend() for t in ax.get_legend().texts}
    assert "abs_err ↓ (metres)" in labels and "depth2seg (transferred → seg)" in labels
    assert not any("/" in label and "→" not in label for label in labels)


def test_task_curves_follow_the_protocol_and_the_tasks_a_run_has():
    history = [{k: v for k, v in row.items() if "abs_err" not in k and "rel_err" not in k
                and k != "train_depth"} for row in _history("test", xtc_terms=False)]
    fig = xtc.viz.plot_task_curves(history)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert "segmentation: test metrics" in titles and not any("depth" in t for t in titles)


def test_config_table_lists_only_the_changes_and_folds_the_rest():
    html = xtc.viz.config_table(config.load(None, {"train.epochs": 2, "loss.lambda1": 0.5})).data
    short, full = html.split("<details>")
    assert "2 settings differ" in short and "train.epochs" in short and "data.height" not in short
    assert "data.height" in full and full.count("<tr>") == len(config.flatten(config.Config())) + 1
    assert "Every setting is the default" in xtc.viz.config_table(config.load(None)).data


def test_plotly_figures_survive_an_offline_html_export():
    import plotly.graph_objects as go
    from nbconvert import HTMLExporter

    bundle = xtc.viz.offline(go.Figure(go.Surface(z=[[1, 2], [3, 4]])))._repr_mimebundle_()
    assert "application/vnd.plotly.v1+json" in bundle  # JupyterLab: interactive
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "fig", outputs=[nbformat.v4.new_output("display_data", data=bundle)])])
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert "Plotly.newPlot" in body
    assert len(body) > 3_000_000  # plotly.js itself is in the page, not fetched from a CDN


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = config.load(None, [*TINY, "train.epochs=1", "train.max_steps_per_epoch=1"])
    return train.fit(cfg, out_dir=tmp_path_factory.mktemp("run") / "xtc", progress=False).out_dir


def test_gallery_draws_only_the_panels_asked_for(tiny_run):
    run = xtc.viz.load_run(tiny_run)
    fig = xtc.viz.static_gallery(run, "test", indices=[0, 1], panels=xtc.viz.PREDICTION_PANELS)
    assert len(fig.axes) == 2 * len(xtc.viz.PREDICTION_PANELS)
    titles = [ax.get_title() for ax in fig.axes[:len(xtc.viz.PREDICTION_PANELS)]]
    assert titles[3] == "transferred seg (depth2seg)" and "[inverse depth]" in titles[-1]


def _fake(folder, val):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"metrics": {"val": val, "test": {}}}))
    return folder


def test_best_run_weighs_tasks_equally_on_val(tmp_path):
    a = _fake(tmp_path / "a", {"miou": 0.40, "pixel_acc": 0.8, "abs_err": 0.10, "rel_err": 1.0})
    b = _fake(tmp_path / "b", {"miou": 0.42, "pixel_acc": 0.8, "abs_err": 0.20, "rel_err": 2.0})
    c = _fake(tmp_path / "c", {"miou": 0.30, "pixel_acc": 0.7, "abs_err": 0.10, "rel_err": 1.0})
    assert xtc.viz.best_run([b, a, c]) == a  # b's better mIoU does not buy its doubled depth error
    assert xtc.viz.pick_run([b, a, c], "x") == a and xtc.viz.pick_run(str(b), "x") == b
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ValueError, match="unfinished/results.json has no val metrics"):
        xtc.viz.best_run([a, tmp_path / "unfinished"])


def test_plans_resolve_run_lists(tmp_path):
    assert report.plan.resolve_paths(["$runs/a", "$runs/b"], "run_dir", tmp_path) == [
        str(tmp_path / "a"), str(tmp_path / "b")]
