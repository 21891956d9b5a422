"""Protocols in the summary: runs of different protocols never share a group, a ranking or
a Δm baseline; side-by-side blocks per protocol; published rows only beside runs of their
protocol and dataset."""

from __future__ import annotations

import pytest

from xtc import results
from xtc.analysis import published, summary
from xtc import reports as report
from xtc.runtime import REPO_ROOT

SEG, DEPTH = ("miou", "pixel_acc"), ("abs_err", "rel_err")


def _row(name, method, protocol, metrics, seed=0, data=("cityscapes", 7)):
    proto = {"model_selection": f"{protocol} rule", "reported_metrics": f"{protocol} metrics",
             "depth_units": "inverse depth", "seed": seed}
    if protocol is not None:
        proto["name"] = protocol
    doc = {"params": {"model.method": method, "loss.cross_task": "consistency", "train.seed": seed,
                      "data.name": data[0], "data.classes": data[1]},
           "metrics": {"test": metrics}, "protocol": proto}
    return summary.row_from_results(doc, f"/runs/{name}")


def _two_protocols():
    """xtc: mtl is 10% better on seg, 10% worse on depth (Δm 0). mtan: better everywhere."""
    return [
        # older run: no name = xtc
        _row("x-stl-seg", "stl-seg", None, {"miou": 0.5, "pixel_acc": 0.8}),
        _row("x-stl-depth", "stl-depth", "xtc", {"abs_err": 0.2, "rel_err": 0.4}),
        _row("x-mtl", "mtl", "xtc",
             {"miou": 0.55, "pixel_acc": 0.88, "abs_err": 0.22, "rel_err": 0.44}),
        _row("m-stl-seg", "stl-seg", "mtan", {"miou": 0.4, "pixel_acc": 0.8}),
        _row("m-stl-depth", "stl-depth", "mtan", {"abs_err": 0.1, "rel_err": 0.5}),
        _row("m-mtl", "mtl", "mtan",
             {"miou": 0.44, "pixel_acc": 0.84, "abs_err": 0.09, "rel_err": 0.45}),
    ]


def test_aggregate_groups_and_baselines_per_protocol():
    rows = _two_protocols()
    assert [summary.protocol_name(r) for r in rows[:2]] == ["xtc", "xtc"]
    groups = summary.aggregate(rows)
    assert [(g["protocol"], g["method"]) for g in groups] == [
        ("mtan", "stl-seg"), ("mtan", "stl-depth"), ("mtan", "mtl"),
        ("xtc", "stl-seg"), ("xtc", "stl-depth"), ("xtc", "mtl")]
    mtl = {g["protocol"]: g for g in groups if g["method"] == "mtl"}
    assert mtl["xtc"]["n"] == mtl["mtan"]["n"] == 1  # not one group of two
    assert mtl["xtc"]["delta_m"] == pytest.approx(25 * (-0.1 - 0.1 + 0.1 + 0.1))  # 0 vs xtc's STL
    # -8.75 vs mtan's STL
    assert mtl["mtan"]["delta_m"] == pytest.approx(25 * (-0.1 - 0.05 - 0.1 - 0.1))
    # 2 metrics per task
    assert mtl["mtan"]["delta_m_task"] == pytest.approx(mtl["mtan"]["delta_m"])


def test_task_weighted_delta_m_column_differs_when_tasks_have_unequal_metrics():
    rows = [r for r in _two_protocols() if summary.protocol_name(r) == "mtan"]
    groups = summary.aggregate(rows, metrics=("miou", "pixel_acc", "abs_err"))
    mtl = next(g for g in groups if g["method"] == "mtl")
    assert mtl["delta_m"] == pytest.approx(100 * (-0.1 - 0.05 - 0.1) / 3)  # -8.33
    assert mtl["delta_m_task"] == pytest.approx(100 * ((-0.1 - 0.05) / 2 - 0.1) / 2)  # -8.75
    table = summary.comparison_table(groups)
    assert table[2][summary.DM_METRIC] == "-8.33" and table[2][summary.DM_TASK] == "-8.75"
    assert summary.DM_METRIC == "Δm% metric-wt (lower better)"
    assert summary.DM_TASK == "Δm% task-wt (lower better)"


def test_rankings_refuse_mixed_protocols():
    rows = _two_protocols()
    groups = summary.aggregate(rows)
    for call in (lambda: summary.comparison_table(groups), lambda: summary.overlap_notes(groups),
                 lambda: summary.baselines(rows), lambda: summary.plot_tradeoff(groups)):
        with pytest.raises(ValueError, match=r"different protocols \(mtan, xtc\).*side_by_side"):
            call()
    for name, part in summary.by_protocol(groups).items():  # the fix the message names works
        assert len(summary.comparison_table(part)) == 3


def test_side_by_side_blocks_have_their_own_delta_m():
    rows = _two_protocols() + [_row("x-xtc", "xtc", "xtc", {"miou": 0.5, "pixel_acc": 0.8,
                                                              "abs_err": 0.2, "rel_err": 0.4})]
    table = summary.side_by_side(rows)
    assert [r["method"] for r in table] == ["stl-seg", "stl-depth", "mtl", "xtc"]
    mtl, xtc = table[2], table[3]
    assert (mtl[f"mtan: {summary.DM_METRIC}"] == "-8.75"
            and mtl[f"xtc: {summary.DM_METRIC}"] == "+0.00")
    assert mtl["mtan: mIoU"] == "0.4400" and mtl["xtc: mIoU"] == "0.5500"
    assert xtc["mtan: n"] == "0" and xtc["mtan: mIoU"] == "" and xtc["xtc: n"] == "1"
    assert not any("rank" in c.lower() for c in table[0])


def test_protocol_text_puts_name_selection_and_reported_first():
    text = summary.protocol_text(_two_protocols())
    lines = text.splitlines()
    assert lines[1].startswith(
        "- protocol name: RUNS DISAGREE: xtc (x-stl-seg, x-stl-depth, x-mtl); mtan")
    assert (lines[2].startswith("- model_selection: RUNS DISAGREE")
            and lines[3].startswith("- reported_metrics:"))
    assert ("several protocols" in text and "task-weighted" in text
            and "metric-weighted" in text.lower())
    old = summary.row_from_results({"metrics": {"test": {"miou": 0.5}}, "protocol": {"seed": 0}},
                                   "/r/old")
    assert summary.protocol_text([old]).splitlines()[1] == "- protocol name: xtc"


def _mtan_cityscapes(data=("cityscapes", 7)):
    stl = published.baseline("cityscapes-7")
    return [_row("stl-seg", "stl-seg", "mtan", {m: stl[m] for m in SEG}, data=data),
            _row("stl-depth", "stl-depth", "mtan", {m: stl[m] for m in DEPTH}, data=data),
            _row("xtc", "xtc", "mtan",
                 {"miou": 0.75, "pixel_acc": 0.94, "abs_err": 0.0120, "rel_err": 27.0},
                 data=data)]


def test_published_refusal_names_protocol_or_dataset():
    assert published and summary.published_refusal(_mtan_cityscapes(), "cityscapes-7") is None
    reason = summary.published_refusal(_two_protocols(), "cityscapes-7")
    assert reason.startswith("protocol differs") and "xtc (3 runs)" in reason and "mtan" in reason
    reason = summary.published_refusal(_mtan_cityscapes(("cityscapes", 19)), "cityscapes-7")
    assert reason.startswith("dataset differs") and "cityscapes (19 classes)" in reason
    reason = summary.published_refusal(_mtan_cityscapes(("synthetic-city", 7)), "nyuv2-3task")
    assert reason.startswith("dataset differs") and "synthetic-city" in reason
    assert summary.published_refusal([], "cityscapes-7").startswith("no runs")
    with pytest.raises(ValueError, match="beside_published refuses: protocol differs"):
        summary.beside_published(_two_protocols(), "cityscapes-7")


def test_beside_published_cityscapes_rows():
    table = summary.beside_published(_mtan_cityscapes(), "cityscapes-7")
    labels = [r["row"] for r in table]
    assert (labels[:3] == ["ours: stl-seg", "ours: stl-depth", "ours: xtc consistency"]
            and "STL" in labels)
    assert "MTAN paper" not in labels  # legacy per-image mIoU: another protocol
    ours = table[2]
    by_hand = 25 * (-(0.75 - 0.7401) / 0.7401 - (0.94 - 0.9316) / 0.9316
                    + (0.0120 - 0.0125) / 0.0125 + (27.0 - 27.77) / 27.77)
    assert ours[summary.DM_METRIC] == f"{by_hand:+.2f}" and ours["mIoU"] == "0.7500"
    nash = next(r for r in table if r["row"] == "Nash-MTL")
    assert nash[summary.DM_METRIC] == "+6.72" and nash["Δm% printed (source's metrics)"] == "+6.82"
    assert nash["mIoU"] == "0.7541" and nash["source"] == "Nash-MTL Table 3"
    cons = next(r for r in table if r["row"] == "ConsMTL")
    assert "third-party" in cons["notes"] and "missing rel err" in cons["notes"]


def test_beside_published_nyuv2_uses_only_our_metrics():
    stl = published.baseline("nyuv2-3task")
    data = ("nyuv2", 7)  # data.classes is unused for nyuv2 (always 13): not a mismatch
    rows = [_row("s", "stl-seg", "mtan", {m: stl[m] for m in SEG}, data=data),
            _row("d", "stl-depth", "mtan", {m: stl[m] for m in DEPTH}, data=data)]
    table = summary.beside_published(rows, "nyuv2-3task")
    nash = next(r for r in table if r["row"] == "Nash-MTL")
    seg_depth = 25 * (-(40.13 - 38.30) / 38.30 - (65.93 - 63.76) / 63.76
                      + (0.5261 - 0.6754) / 0.6754 + (0.2171 - 0.2780) / 0.2780)
    assert (nash[summary.DM_METRIC] == f"{seg_depth:+.2f}"
            and nash["Δm% printed (source's metrics)"] == "-4.04")


@pytest.mark.slow
def test_summary_notebook_with_two_protocols_and_a_refused_published_table(tmp_path):
    for r in _two_protocols():
        results.write(tmp_path / "runs" / r["name"], params=r["params"],
                      metrics={"test": r["metrics"]}, protocol=r["protocol"])
    nb = REPO_ROOT / "notebooks" / "90_summary.ipynb"
    report.execute(nb, tmp_path / "out", {"runs_dir": str(tmp_path / "runs"),
                                          "out_dir": str(tmp_path / "out"),
                                          "published": "cityscapes-7"})
    doc = results.read(tmp_path / "out")
    assert sorted(doc["tables"]) == ["mtan", "xtc"] and doc["protocols"] == ["mtan", "xtc"]
    assert ({(g["protocol"], g["method"]) for g in doc["metrics"]["groups"]}
            >= {("mtan", "mtl"), ("xtc", "mtl")})
    mtl = next(g for g in doc["metrics"]["groups"]
               if g["method"] == "mtl" and g["protocol"] == "mtan")
    assert mtl["delta_m_task"] == pytest.approx(-8.75)
    assert doc["side_by_side"][2]["mtan: Δm% task-wt (lower better)"] == "-8.75"
    assert (doc["published"]["table"] == []
            and doc["published"]["refusal"].startswith("protocol differs"))
    html_out = (tmp_path / "out" / "90_summary.html").read_text()
    assert "protocol differs" in html_out and "Protocol <code>mtan</code>" in html_out
