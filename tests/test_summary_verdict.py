"""The 90_summary verdict, the significance matrix and the group labels, on hand-made rows whose
p-values are known exactly (the permutation test enumerates every relabelling)."""

from __future__ import annotations

import math

import pytest

from xtc.analysis import summary

MTL = {"miou": 0.50, "pixel_acc": 0.80, "abs_err": 0.20, "rel_err": 0.40}
XTC = {"miou": 0.60, "pixel_acc": 0.85, "abs_err": 0.18, "rel_err": 0.38}  # better on every metric


def _row(name, method, seed, metrics, lam=0.01, detach=False, cross="consistency", protocol="xtc"):
    doc = {"params": {"model.method": method, "loss.cross_task": cross, "train.seed": seed,
                      "loss.lambda1": lam, "loss.lambda2": lam,
                      "model.transfer_detach_input": detach},
           "metrics": {"test": metrics}, "protocol": {"name": protocol, "depth_units": "metres"}}
    return summary.row_from_results(doc, f"/runs/{name}-s{seed}")


def _jitter(metrics, seed):  # small, so that groups 0.1 apart never overlap
    return {k: v * (1 + 0.002 * seed) for k, v in metrics.items()}


def _rows(n, controls=True):
    rows = []
    for s in range(n):
        rows += [_row("stl-seg", "stl-seg", s, _jitter({"miou": 0.5, "pixel_acc": 0.8}, s)),
                 _row("stl-depth", "stl-depth", s, _jitter({"abs_err": 0.2, "rel_err": 0.4}, s)),
                 _row("mtl", "mtl", s, _jitter(MTL, s)),
                 _row("xtc", "xtc", s, _jitter(XTC, s))]
        if controls:
            rows += [_row("xtc-lambda0", "xtc", s, _jitter(MTL, s + 1), lam=0.0),
                     _row("xtc-control", "xtc", s, _jitter(MTL, s + 2), detach=True)]
    return rows


def test_group_labels_are_words():
    by = ("method", "cross_task", "lambda1", "lambda2", "model.transfer_detach_input")
    label = lambda **g: summary.group_label(g, tuple(g))  # noqa: E731
    assert label(method="stl-seg", cross_task="-") == "stl-seg"
    assert label(method="mtl", cross_task="-", lambda1=0.01, lambda2=0.01) == "mtl"  # mtl ignores λ
    assert label(method="xtc", cross_task="consistency") == "xtc consistency"
    g = {"method": "xtc", "cross_task": "consistency", "lambda1": 0.0, "lambda2": 0.0,
         "model.transfer_detach_input": False}
    assert summary.group_label(g, by) == "xtc consistency, λ=0"
    g.update(lambda1=0.01, lambda2=0.01, **{"model.transfer_detach_input": True})
    assert summary.group_label(g, by) == "xtc consistency, λ=0.01, detached control"
    assert summary.group_label(g, ("method", "cross_task", "model.transfer_detach_input")) == \
        "xtc consistency, detached control"
    # λ2 unknown
    assert label(method="xtc", cross_task="alignment", lambda1=0.0) == "xtc alignment, λ1=0"
    assert label(method="xtc", cross_task="consistency", lambda1=0.01, lambda2=0.1) == \
        "xtc consistency, λ1=0.01, λ2=0.1"
    assert label(method="mtl", **{"loss.weighting": "dwa"}) == "mtl, weighting=dwa"
    assert summary.group_label({}, ()) == "all runs"
    assert summary.control_kind(g) == "detached"
    assert summary.control_kind({"method": "xtc", "lambda1": 0.0, "lambda2": 0.0}) == "λ=0"
    assert summary.control_kind({"method": "mtl", "lambda1": 0.0}) is None
    assert summary.control_kind({"method": "xtc", "lambda1": 0.01}) is None


def test_grouping_adds_only_the_settings_that_vary_among_xtc_runs():
    assert summary.grouping(_rows(2, controls=False)) == ["method", "cross_task"]
    assert summary.grouping(_rows(2)) == ["method", "cross_task", "lambda1", "lambda2",
                                          "model.transfer_detach_input"]
    groups = summary.aggregate(_rows(2), summary.grouping(_rows(2)))
    labels = [summary.group_label(g, summary.grouping(_rows(2))) for g in groups]
    assert labels == ["stl-seg", "stl-depth", "mtl", "xtc consistency, λ=0",
                      "xtc consistency, λ=0.01", "xtc consistency, λ=0.01, detached control"]


def test_plot_legend_and_axes_in_words_with_units():
    rows = _rows(2)
    by = summary.grouping(rows)
    fig = summary.plot_tradeoff(summary.aggregate(rows, by), group_by=by, depth_units="metres")
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1] == [
        "mtl (n=2)", "xtc consistency, λ=0 (n=2)", "xtc consistency, λ=0.01 (n=2)",
        "xtc consistency, λ=0.01, detached control (n=2)"]
    assert ax.get_xlabel() == "abs err, metres (lower is better)"
    assert ax.get_ylabel() == "mIoU, fraction (higher is better)"


def test_smallest_p():
    assert summary.smallest_p(5, 5) == pytest.approx(2 / 252)
    assert summary.smallest_p(2, 2) == pytest.approx(1 / 3)
    assert summary.smallest_p(4, 2) == pytest.approx(1 / 15)
    assert summary.smallest_p(1, 1) == 1.0


def test_five_vs_five_separated_runs_are_resolved():
    rows = _rows(5)
    by = summary.grouping(rows)
    pairs = {(summary.group_label(p["a"], by), summary.group_label(p["b"], by)): p
             for p in summary.significance(rows, by)}
    pair = pairs[("mtl", "xtc consistency, λ=0.01")]
    for q in ("delta_m", "delta_m_task", "miou", "pixel_acc", "abs_err", "rel_err"):
        assert pair["tests"][q]["p"] == pytest.approx(2 / 252) and pair["tests"][q]["resolved"], q
    # mtl: lower mIoU, higher Δm
    assert pair["tests"]["miou"]["d"] < 0 < pair["tests"]["delta_m"]["d"]
    assert ("stl-seg", "stl-depth") not in pairs  # nothing in common
    stl = pairs[("stl-seg", "mtl")]["tests"]
    assert set(stl) == {"miou", "pixel_acc"}  # no Δm test against an STL group
    table = {(r["A"], r["B"]): r
             for r in summary.significance_table(rows, by, depth_units="metres")}
    row = table[("mtl", "xtc consistency, λ=0.01")]
    assert row["n (A vs B)"] == "5 vs 5" and row["smallest possible p"] == "0.008"
    assert (row["Δm% metric-wt ↓"].startswith("p=0.008, d=+")
            and row["Δm% metric-wt ↓"].endswith(" ✓"))
    assert (row["abs err (metres) ↓"].startswith("p=0.008")
            and row["mIoU (fraction) ↑"].endswith("✓"))
    assert table[("stl-seg", "mtl")]["Δm% metric-wt ↓"] == ""
    assert len(table) == 14  # 6 groups: 15 pairs, less stl-seg vs stl-depth (no metric in common)
    text = summary.verdict(rows, by)
    assert text.startswith("Best metric-weighted Δm%: xtc consistency, λ=0.01 (")
    assert "it also has the best task-weighted Δm%" in text
    assert "Against mtl (n=5): resolved for Δm% metric-wt (p=0.008, d=-" in text
    assert "Against the λ=0 control (xtc consistency, λ=0, n=5): resolved" in text
    assert ("Against the detached control (xtc consistency, λ=0.01, detached control, n=5): "
            "resolved" in text)
    assert "not resolved" not in text


def test_two_vs_two_is_never_resolved_and_says_why():
    rows = _rows(2)
    by = summary.grouping(rows)
    pair = next(p for p in summary.significance(rows, by)
                if p["a"]["method"] == "mtl" and summary.control_kind(p["b"]) is None
                and p["b"]["method"] == "xtc")
    assert (pair["tests"]["delta_m"]["p"] == pytest.approx(1 / 3)
            and not pair["tests"]["delta_m"]["resolved"])
    text = summary.verdict(rows, by)
    assert ("Against mtl (n=2): not resolved by 2 vs 2 seeds for Δm% metric-wt (p=0.333)" in text)
    assert text.count("smallest possible p with 2 vs 2 is 0.333, so 2 vs 2 seeds can never "
                      "reach p < 0.05") == 3
    assert "resolved for" not in text
    row = next(r for r in summary.significance_table(rows, by)
               if r["A"] == "mtl" and r["B"] == "xtc consistency, λ=0.01")
    assert row["smallest possible p"] == "0.333" and "✓" not in "".join(row.values())


def test_verdict_per_protocol_and_without_baselines():
    rows = _rows(2, controls=False) + [_row("m", "mtl", s, _jitter(MTL, s), protocol="mtan")
                                       for s in (0, 1)]
    with pytest.raises(ValueError, match="different protocols"):
        summary.significance(rows)
    text = summary.verdict(rows)
    assert text.startswith("Protocol xtc: Best metric-weighted Δm%: xtc consistency (")
    assert "Protocol mtan: no Δm" in text  # mtan has no STL runs: no ranking stated
    assert summary.verdict([]) == "No runs: nothing to compare."
    one = summary.verdict([r for r in _rows(1, controls=False)])
    assert ("one run: its spread is unknown" in one
            and "smallest possible p with 1 vs 1 is 1.000" in one)
    assert math.isclose(summary.smallest_p(1, 1), 1.0)
