"""xtc.viz.gradient_plots on a synthetic history (no training): the rows, the kinds of
objective pairs, the figure's panels and labels, the summary, the plotly figure and the
static fallback, and finding runs that logged gradient statistics."""

import json

import pytest

from xtc.viz import gradient_plots as gp

TERMS = ["seg", "depth", "seg2depth", "depth2seg"]


def _history(objectives, epochs=3, conflict=0.5):
    history = []
    for e in range(epochs):
        rec = {"epoch": e, "train_loss_seg": 1.0,
               "train_gstat_conflict_fraction": conflict - 0.1 * e,
               "train_gstat_gramian_cond": 10.0 ** (e + 1)}
        for i, a in enumerate(objectives):
            rec[f"train_gstat_norm_{a}"] = 1.0 + i
            rec[f"train_gstat_dircos_{a}"] = 0.5 - 0.2 * i
            for b in objectives[i + 1:]:
                rec[f"train_gstat_cos_{a}_vs_{b}"] = (-0.3 if gp.pair_kind(a, b) == gp.KINDS[2]
                                                      else 0.2)
        history.append(rec)
    return history


@pytest.fixture
def rows():
    return gp.gradient_rows({"upgrad, objectives=tasks": _history(["seg", "depth"]),
                             "upgrad, objectives=terms": _history(TERMS),
                             "none, objectives=terms": [{"epoch": 0, "train_loss_seg": 1.0}]})


def test_pair_kinds():
    assert gp.pair_kind("seg", "depth") == "direct vs direct"
    assert gp.pair_kind("seg2depth", "seg") == "direct vs its own cross-task term"
    assert gp.pair_kind("seg", "depth2seg") == "direct vs another task's cross-task term"
    assert gp.pair_kind("normal", "seg2depth") == "direct vs another task's cross-task term"
    assert gp.pair_kind("seg2depth", "depth2seg") == "cross-task vs cross-task"


def test_rows_strip_the_prefix_and_skip_epochs_without_statistics(rows):
    assert {r["run"] for r in rows} == {"upgrad, objectives=tasks", "upgrad, objectives=terms"}
    first = rows[0]
    assert first["epoch"] == 0 and first["conflict_fraction"] == 0.5
    assert "cos_seg_vs_depth" in first and "loss_seg" not in first and "train_loss_seg" not in first
    terms = [r for r in rows if r["run"].endswith("terms")]
    assert len(gp.pairs(terms)) == 6 and gp.objectives(terms) == TERMS


def test_the_figure_has_three_labelled_panels_per_run(rows, tmp_path):
    fig = gp.plot_gradient_conflict(rows, path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
    assert len(fig.axes) == 6
    for ax in fig.axes:
        assert ax.get_xlabel() == gp.X_LABEL and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None
    legend = [t.get_text() for t in fig.axes[4].get_legend().get_texts()]  # terms: pair kinds
    assert any(t.startswith("direct vs its own cross-task term (2 pairs)") for t in legend)
    assert ("seg2depth (cross-task term)"
            in [t.get_text() for t in fig.axes[5].get_legend().get_texts()])


def test_a_run_without_statistics_gets_a_row_that_says_so():
    fig = gp.plot_gradient_conflict([])
    assert len(fig.axes) == 3
    assert "no gradient statistics" in fig.axes[0].texts[0].get_text()


def test_summary_rows(rows):
    by_run = {r["run"]: r for r in gp.summary_rows(rows)}
    terms = by_run["upgrad, objectives=terms"]
    assert terms["epochs"] == 3 and terms["mean conflict fraction"] == pytest.approx(0.4)
    assert terms["mean cos, direct vs another task's cross-task term"] == pytest.approx(-0.3)
    assert terms["objective with it"] == "depth2seg" and terms["median Gramian condition"] == 100.0
    assert "mean cos, direct vs direct" in by_run["upgrad, objectives=tasks"]


def test_interactive_figure_and_static_fallback(rows, tmp_path, monkeypatch):
    fig = gp.plotly_figure(rows)
    assert len(fig.data) == (1 + 1 + 2) + (1 + 6 + 4)  # per run: conflict, each pair, each dircos
    shown = gp.show(rows, interactive=True, path=tmp_path / "g.png")
    assert type(shown).__name__ == "Offline" and (tmp_path / "g.png").exists()
    assert len(gp.show(rows, interactive=False).axes) == 6  # the matplotlib figure

    def no_plotly(rows):
        raise ImportError("no plotly")

    monkeypatch.setattr(gp, "plotly_figure", no_plotly)
    assert len(gp.show(rows, interactive=True).axes) == 6  # falls back to matplotlib


def test_find_runs_keeps_runs_with_statistics(tmp_path):
    for name, history, params in (
            ("a", _history(TERMS),
             {"loss.aggregator": "upgrad", "loss.objectives": "terms", "train.seed": 0}),
            ("b", [{"epoch": 0, "train_loss_seg": 1.0}], {"loss.aggregator": "none"}),
            (".attempts/c", _history(TERMS), {"loss.aggregator": "mgda"})):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "results.json").write_text(json.dumps({"params": params,
                                                                  "history": history}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    assert gp.find_runs(tmp_path) == {"upgrad, objectives=terms, seed 0": str(tmp_path / "a")}
