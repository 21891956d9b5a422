"""Reports, sweeps and the summary: failures are recorded not fatal, reruns skip finished runs,
and the aggregated numbers match hand-computed ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from xtc import cli, results
from xtc.errors import PlanError
from xtc.analysis import summary
from xtc import reports as report
from xtc.runtime import REPO_ROOT

FIXTURE = Path(__file__).parent / "fixtures" / "notebooks" / "train.ipynb"


def _sweep_file(tmp_path: Path, runs: list[dict], **extra) -> Path:
    path = tmp_path / "fx.yaml"
    path.write_text(yaml.safe_dump({"notebook": str(FIXTURE),
                                    "parameters": {"epochs": 1, "cross_task": "consistency"},
                                    "runs": runs, "analysis": [], **extra}))
    return path


def test_sweep_records_failure_then_rerun_skips_done_and_retries_failed(tmp_path, capsys):
    sweep = _sweep_file(tmp_path, [{"method": "xtc", "seed": 0}, {"method": "boom", "seed": 0}])
    reports = tmp_path / "reports"
    # --workers 2: both runs at once in a process pool; exit 1 because one failed
    assert cli.main(["sweep", str(sweep), "--workers", "2", "--reports-dir", str(reports)]) == 1
    good, bad = reports / "fx" / "xtc-consistency-s0", reports / "fx" / "boom-s0"
    assert results.read(good)["metrics"]["test"]["miou"] == pytest.approx(0.42)
    assert (good / "train.html").is_file() and (good / "train.ipynb").is_file()
    assert not (bad / "results.json").exists()
    assert (bad / "train.ipynb").is_file() and (bad / "train.html").is_file()  # partial copies
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "boom" in status["error"]
    assert json.loads((good / "status.json").read_text())["threads"] >= 1
    index = (reports / "index.html").read_text()
    assert "Failures" in index and "boom-s0" in index and 'href="fx/boom-s0/train.ipynb"' in index
    assert 'href="fx/xtc-consistency-s0/results.json"' in index
    assert "failed" in capsys.readouterr().out

    mtime, bad_mtime = ((good / "results.json").stat().st_mtime_ns,
                        (bad / "status.json").stat().st_mtime_ns)
    records = {r["name"]: r for r in report.run_sweep(sweep, reports_dir=reports, progress=False)}
    assert records["xtc-consistency-s0"]["status"] == "skipped"
    assert (good / "results.json").stat().st_mtime_ns == mtime  # not rerun
    assert records["boom-s0"]["status"] == "failed"
    assert (bad / "status.json").stat().st_mtime_ns != bad_mtime  # retried


def test_grid_names_ties_and_overrides(tmp_path):
    path = tmp_path / "lam.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"method": "xtc", "cross_task": "consistency"},
                                    "grid": {"lambda1+lambda2": [0.0, 0.01], "train.epochs": [2],
                                             "seed": [0, 1]}}))
    runs = report.expand_runs(report.load_plan(path))
    assert [n for n, _ in runs] == ["xtc-consistency-l0.0-s0", "xtc-consistency-l0.0-s1",
                                    "xtc-consistency-l0.01-s0", "xtc-consistency-l0.01-s1"]
    params = runs[2][1]
    assert params["lambda1"] == params["lambda2"] == 0.01
    assert params["overrides"] == {"train.epochs": 2} and params["seed"] == 0
    for preset in report.list_presets():  # every shipped preset and sweep parses
        report.expand_runs(report.load_plan(report.PRESETS_DIR / f"{preset}.yaml"))
    report.expand_runs(report.load_plan(REPO_ROOT / "configs" / "sweeps" / "lambda.yaml"))


def test_unknown_preset_and_bad_sweep_exit_2(tmp_path, capsys):
    assert cli.main(["report", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtc: error: unknown preset 'nope'") and "demo" in err and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {seed: 3}\n")
    assert cli.main(["sweep", str(bad), "--reports-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "grid.seed" in err and "\n" not in err


# --------------------------------------------------------------------------- summary
def _fake_runs(root: Path) -> None:
    runs = {  # name: (method, cross_task, seed, metrics)
        "stl-seg-s0": ("stl-seg", "consistency", 0, {"miou": 0.40, "pixel_acc": 0.80}),
        "stl-seg-s1": ("stl-seg", "consistency", 1, {"miou": 0.50, "pixel_acc": 0.90}),
        "stl-depth-s0": ("stl-depth", "consistency", 0, {"abs_err": 0.20, "rel_err": 0.40}),
        "stl-depth-s1": ("stl-depth", "consistency", 1, {"abs_err": 0.30, "rel_err": 0.60}),
        "xtc-s0": ("xtc", "consistency", 0,
                   {"miou": 0.50, "pixel_acc": 0.85, "abs_err": 0.25, "rel_err": 0.5}),
        "xtc-s1": ("xtc", "consistency", 1,
                   {"miou": 0.60, "pixel_acc": 0.95, "abs_err": 0.15, "rel_err": 0.3}),
        "mtl-s0": ("mtl", "consistency", 0,
                   {"miou": 0.53, "pixel_acc": 0.70, "abs_err": 0.9, "rel_err": 0.9}),
        "mtl-s1": ("mtl", "consistency", 1,
                   {"miou": 0.55, "pixel_acc": 0.70, "abs_err": 0.9, "rel_err": 0.9}),
    }
    for name, (method, kind, seed, metrics) in runs.items():
        units = "metres" if name == "mtl-s1" else "inverse depth"
        results.write(root / name, params={"model.method": method, "loss.cross_task": kind,
                                           "train.seed": seed},
                      metrics={"test": metrics, "val": {}},
                      protocol={"miou": "confusion matrix", "depth_units": units, "seed": seed})
    results.write(root / "90_summary", params={}, metrics={"groups": []})  # not a run


def test_summary_mean_std_delta_m_match_hand_computed(tmp_path):
    _fake_runs(tmp_path)
    rows = summary.collect(tmp_path)
    assert len(rows) == 8 and {r["cross_task"] for r in rows if r["method"] != "xtc"} == {"-"}
    groups = {g["method"]: g for g in summary.aggregate(rows)}
    assert [g["method"] for g in summary.aggregate(rows)] == ["stl-seg", "stl-depth", "mtl", "xtc"]
    x = groups["xtc"]
    assert x["n"] == 2 and x["seeds"] == [0, 1] and x["cross_task"] == "consistency"
    assert x["mean"]["miou"] == pytest.approx(0.55)
    assert x["std"]["miou"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # sample std, ddof=1
    # baselines: miou .45, pixel_acc .85 (stl-seg), abs_err .25, rel_err .5 (stl-depth)
    expected = 25 * (-(0.55 - 0.45) / 0.45 - (0.90 - 0.85) / 0.85
                     + (0.2 - 0.25) / 0.25 + (0.4 - 0.5) / 0.5)
    assert x["delta_m"] == pytest.approx(expected)  # about -17.03: an improvement
    assert groups["stl-seg"]["delta_m"] == pytest.approx(0.0)
    table = summary.comparison_table(summary.aggregate(rows))
    assert (table[3]["mIoU"] == "0.5500 ± 0.0707"
            and table[3][summary.DM_METRIC].startswith("-17.03"))
    assert "| method |" in summary.to_markdown(table) and "<td>xtc</td>" in summary.to_html(table)
    no_stl = summary.aggregate([r for r in rows if not r["method"].startswith("stl")])
    assert no_stl[0]["delta_m"] is None  # no baselines: no Δm, and the table still renders
    assert summary.comparison_table(no_stl)[0][summary.DM_METRIC] == ""
    text = summary.protocol_text(rows)
    assert "RUNS DISAGREE" in text and "mtl-s1" in text and "seeds: 0, 1" in text and "Δm" in text


def test_overlap_notes_only_when_spreads_overlap(tmp_path):
    _fake_runs(tmp_path)
    groups = summary.aggregate(summary.collect(tmp_path))
    notes = summary.overlap_notes(groups)
    # mtl 0.54 ± 0.014 vs xtc 0.55 ± 0.071 on mIoU: |Δ| = 0.01 < 0.085
    assert any(n.startswith("mIoU: mtl") and "xtc consistency" in n for n in notes)
    # pixel acc: mtl 0.70 ± 0 vs xtc 0.90 ± 0.07: resolved, no note
    assert not any(n.startswith("pixel acc: mtl") and "xtc" in n for n in notes)
    single = [{"method": "a", "cross_task": "-", "n": 1, "mean": {"miou": 0.5},
               "std": {"miou": 0.0}}]
    assert summary.overlap_notes(single) == ["a: one run only, its spread is unknown"]


@pytest.mark.slow
def test_summary_notebook_runs_over_a_folder_and_with_defaults(tmp_path):
    _fake_runs(tmp_path / "runs")
    nb = REPO_ROOT / "notebooks" / "90_summary.ipynb"
    report.execute(nb, tmp_path / "out", {"runs_dir": str(tmp_path / "runs"),
                                          "out_dir": str(tmp_path / "out")})
    doc = results.read(tmp_path / "out")
    assert {g["method"] for g in doc["metrics"]["groups"]} == {"stl-seg", "stl-depth", "mtl", "xtc"}
    assert (tmp_path / "out" / "90_summary.html").is_file()
    report.execute(nb, tmp_path / "empty", {"runs_dir": str(tmp_path / "nothing"),
                                            "out_dir": str(tmp_path / "empty")})
    assert results.read(tmp_path / "empty")["metrics"]["groups"] == []


@pytest.mark.slow
def test_smoke_preset_trains_every_method_and_summarises(tmp_path):
    """The real 02_train notebook through the smoke preset (tiny runs, ~1-2 min on 2 cores)."""
    records = {r["name"]: r
               for r in report.run_preset("smoke", reports_dir=tmp_path, progress=False)}
    for name in ("stl-seg-s0", "stl-depth-s0", "mtl-s0", "xtc-consistency-s0", "90_summary"):
        assert records[name]["status"] == "ok", records[name]["error"]
    groups = results.read(tmp_path / "smoke" / "90_summary")["metrics"]["groups"]
    assert {g["method"] for g in groups} == {"stl-seg", "stl-depth", "mtl", "xtc"}
    assert "smoke/mtl-s0/02_train.html" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("field, value", [("name", "../escape"), ("name", "/abs"),
                                          ("runs", ".."), ("analysis", "a/b")])
def test_plans_cannot_write_outside_the_reports_folder(field, value, tmp_path):
    import yaml

    from xtc import reports as report

    plan = {"name": "p", "parameters": {"method": "xtc", "seed": 0},
            "runs": [{"name": "ok"}], "analysis": []}
    if field == "name":
        plan["name"] = value
    elif field == "runs":
        plan["runs"] = [{"name": value}]
    else:
        plan["analysis"] = [{"notebook": "notebooks/90_summary.ipynb", "name": value}]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(ValueError, match="stays inside the reports folder|must be letters"):
        report.run_sweep(path, reports_dir=tmp_path / "reports", progress=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "reports").exists()
    assert report.run_name({"method": "../../x", "seed": 0}) == "_.._x-s0"


def test_collect_lists_every_unreadable_run_but_not_analysis_outputs(tmp_path):
    """A truncated results.json used to vanish from the summary silently (mtl's Δm moved
    from +14.40 to +62.34); now the caller gets it in ``problems``."""
    _fake_runs(tmp_path)
    problems: list = []
    # 90_summary: analysis
    assert len(summary.collect(tmp_path, problems=problems)) == 8 and problems == []
    # another split
    results.write(tmp_path / "x" / "eval-val", metrics={"val": {"miou": 0.1}}, split="val")
    # 03_loss_landscape
    results.write(tmp_path / "03", metrics={"surface": {}, "interpolation": {}})
    # moved aside
    results.write(tmp_path / ".attempts" / "mtl-s0-1", metrics={"test": {"miou": 0.9}})
    text = (tmp_path / "mtl-s1" / "results.json").read_text()
    (tmp_path / "mtl-s1" / "results.json").write_text(text[: len(text) // 2])
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "results.json").write_text('{"metrics": {"val": {"miou": 0.5}}}')
    rows = summary.collect(tmp_path, problems=problems)
    assert sorted(r["name"] for r in rows) == ["mtl-s0", "stl-depth-s0", "stl-depth-s1",
                                               "stl-seg-s0", "stl-seg-s1", "xtc-s0", "xtc-s1"]
    assert [(Path(p["path"]).parent.name, p["reason"].split(" (")[0]) for p in problems] == [
        ("mtl-s1", "is not valid JSON"), ("odd", "has no metrics.test")]
    assert summary.collect(tmp_path) == rows  # without a list: same rows, nothing raised


def test_a_named_run_with_seeds_gets_one_folder_per_seed(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"method": "xtc", "lambda1": 0.0, "seeds": [0, 1],
                                              "name": "xtc-lambda0"}]}))
    runs = report.expand_runs(report.load_plan(path))
    assert [(n, p["seed"]) for n, p in runs] == [("xtc-lambda0-s0", 0), ("xtc-lambda0-s1", 1)]


def test_an_analysis_reading_a_run_the_plan_does_not_train_fails_at_load(tmp_path):
    """A run renamed by a new varying key (xtc-consistency-gradcosineevery4-s0) must fail
    when the plan loads, not after every run has trained."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "runs": [{"method": "xtc", "cross_task": "consistency", "seed": 0,
                  "train.grad_cosine_every": 4}, {"method": "mtl", "seed": 0}],
        "analysis": [{"notebook": "notebooks/04_alignment.ipynb",
                      "parameters": {"runs": {"consistency": "$runs/xtc-consistency-s0"}}}]}))
    with pytest.raises(PlanError, match=r"analysis\[0\].parameters.runs' reads "
                       r"\$runs/xtc-consistency-s0, which is not a training run.*did you mean "
                       r"xtc-consistency-gradcosineevery4-s0"):
        report.load_plan(path)


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "configs").glob("**/*.yaml")))
def test_every_shipped_plan_s_analysis_reads_runs_it_trains(preset):
    text = preset.read_text()
    if "runs:" not in text and "grid:" not in text:
        pytest.skip("a training config, not a plan")
    report.load_plan(preset)  # _check_run_references: every $runs/<name> is a planned run


def test_an_explicit_grouping_still_tells_two_and_three_task_runs_apart():
    """The demo's 90_summary groups by [method, cross_task, ...]: its mtl rows over two and
    over three tasks must not both read "mtl"."""
    def row(method, tasks, i):
        return {"method": method, "tasks": tasks, "cross_task": "consistency", "seed": 0,
                "name": f"run{i}", "metrics": {"miou": 0.4}, "params": {}}

    rows = [row(m, t, 2 * i + j) for i, m in enumerate(("mtl", "xtc"))
            for j, t in enumerate(("seg+depth", "seg+depth+normal"))] + [
        row("stl-normal", "normal", 9)]
    group_by = summary.grouping(rows, base=["method", "cross_task"], optional=())
    assert group_by == ["method", "tasks", "cross_task"]
    labels = [summary.group_label(g, group_by) for g in summary.aggregate(rows, group_by=group_by)]
    assert len(set(labels)) == len(labels) == 5, labels
    assert "mtl, tasks=seg+depth+normal" in labels and "stl-normal" in labels
    one_set = [r for r in rows if r["tasks"] == "seg+depth"]
    assert summary.grouping(one_set, base=["method", "cross_task"], optional=()) == [
        "method", "cross_task"]


def test_single_task_rows_of_an_aggregator_sweep_are_labelled_by_their_method_alone():
    group_by = ["method", "cross_task", "loss.aggregator", "loss.objectives"]
    stl = {"method": "stl-seg", "loss.aggregator": "none", "loss.objectives": "tasks"}
    xtc = {"method": "xtc", "cross_task": "consistency", "loss.aggregator": "upgrad",
           "loss.objectives": "terms"}
    assert summary.group_label(stl, group_by) == "stl-seg"
    assert summary.group_label(xtc, group_by) == (
        "xtc consistency, aggregator=upgrad, objectives=terms")
