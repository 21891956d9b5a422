"""configs/sweeps/aggregators.yaml is a valid plan (checked by xtc.reports.load_plan, as
``xtc sweep`` does before anything runs) with the runs it promises: none and four aggregators
x objectives {tasks, terms} x seeds {0, 1}, the STL runs for Δm, and 07 + 90 analyses grouped
by aggregator and objectives. Nothing is trained."""

from pathlib import Path

from xtc import config
from xtc.analysis import summary
from xtc import reports as report

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "configs" / "sweeps" / "aggregators.yaml"
AGGREGATORS = ("upgrad", "mgda", "pcgrad", "cagrad")
GROUP_BY = ["method", "cross_task", "loss.aggregator", "loss.objectives"]


def _runs():
    return dict(report.expand_runs(report.load_plan(SWEEP)))


def _weighting(params: dict) -> dict:
    return {"weighting": params["weighting"]} if "weighting" in params else {}


def test_the_plan_loads_and_expands_to_the_promised_runs():
    runs = _runs()
    expected = {f"stl-{t}-s{s}" for t in ("seg", "depth") for s in (0, 1)}
    expected |= {f"xtc-none-tasks-s{s}" for s in (0, 1)}
    expected |= {f"xtc-{a}-{m}-s{s}"
                 for a in AGGREGATORS for m in ("tasks", "terms") for s in (0, 1)}
    assert set(runs) == expected


def test_every_run_builds_a_valid_config_with_its_aggregator_and_objectives():
    for name, params in _runs().items():
        overrides = dict(params.get("overrides") or {})
        cfg = config.load(ROOT / params["config"], overrides, method=params["method"],
                          epochs=params["epochs"], seed=params["seed"], **_weighting(params))
        assert cfg.train.seed == int(name.rsplit("-s", 1)[1])
        assert cfg.data.train_size == 240 and cfg.train.epochs == 3  # the lambda sweep's budget
        if name.startswith("stl-"):
            assert cfg.loss.aggregator == "none"
            continue
        _, aggregator, objectives, _ = name.split("-")
        assert (cfg.loss.aggregator, cfg.loss.objectives) == (aggregator, objectives), name
        assert params["cross_task"] == "consistency" and cfg.train.grad_stats_every > 0
        if aggregator == "cagrad":
            assert cfg.loss.aggregator_args == {"c": 0.4}
        if aggregator != "none":
            assert params["weighting"] == "fixed"  # what validation records under an aggregator


def test_the_analyses_are_07_and_90_grouped_by_aggregator_and_objectives():
    plan = report.load_plan(SWEEP)
    notebooks = {Path(a["notebook"]).name: a["parameters"] for a in plan["analysis"]}
    assert notebooks["07_gradients.ipynb"] == {"runs_dir": "$runs"}
    assert notebooks["90_summary.ipynb"]["group_by"] == GROUP_BY


def test_the_summary_groups_runs_by_aggregator_and_objectives_with_delta_m():
    """90_summary's grouping on rows shaped like the sweep's results.json files."""
    rows = []
    for name, params in _runs().items():
        cfg = config.load(ROOT / params["config"], dict(params.get("overrides") or {}),
                          method=params["method"], seed=params["seed"], **_weighting(params))
        flat = config.flatten(cfg)
        m = {"miou": 0.4 + 0.01 * params["seed"], "pixel_acc": 0.7, "abs_err": 0.05, "rel_err": 0.2}
        doc = {"params": flat, "metrics": {"test": m}}
        rows.append(summary.row_from_results(doc, f"/tmp/{name}"))
    groups = summary.aggregate(rows, group_by=GROUP_BY)
    keyed = {(g["method"], g["loss.aggregator"], g["loss.objectives"]): g for g in groups}
    assert len(groups) == 2 + 1 + 2 * len(AGGREGATORS)
    for a in AGGREGATORS:
        for mode in ("tasks", "terms"):
            g = keyed[("xtc", a, mode)]
            assert g["n"] == 2 and g["seeds"] == [0, 1] and g["delta_m"] is not None
            assert "std" in g and g["std"]["miou"] > 0
    labels = {summary.group_label(g, GROUP_BY) for g in groups}
    assert "xtc consistency, aggregator=upgrad, objectives=terms" in labels
