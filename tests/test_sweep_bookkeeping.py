"""Sweeps never lose or misreport a run: a sweep killed at any point and rerun gives the table
an uninterrupted sweep gives; edited, corrupted or concurrent sweeps are redone or refused,
and bad plans or bookkeeping files are reported in one line instead of run or crashed on.

Most tests run the fixture notebooks in-process (:func:`_inprocess_execute`, the same code
papermill would run, without a kernel start) so that each kill point costs milliseconds;
one slow test kills a real ``python -m xtc sweep`` process with SIGKILL.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xtc import cli, results
from xtc.analysis import summary
from xtc import files
from xtc import reports as report
from xtc.runtime import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
TRAIN, SUMMARY = FIXTURES / "train.ipynb", FIXTURES / "summary.ipynb"
RUNS = ["stl-seg-s0", "stl-depth-s0", "xtc-consistency-s0"]


class Killed(KeyboardInterrupt):
    """Stands for a kill: not an Exception, so no ``except Exception`` handler swallows it."""


def _plan(tmp_path: Path, epochs: int = 1, methods=("stl-seg", "stl-depth", "xtc"),
          **extra) -> Path:
    path = tmp_path / "fx.yaml"
    path.write_text(yaml.safe_dump({
        "notebook": str(TRAIN), "parameters": {"epochs": epochs, "cross_task": "consistency"},
        "runs": [{"method": m, "seed": 0} for m in methods],
        "analysis": [{"notebook": str(SUMMARY), "name": "summary",
                      "parameters": {"runs_dir": "$runs"}}], **extra}))
    return path


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def _inprocess_execute(notebook, out_dir, parameters=None, hook=None, **_):
    """papermill's semantics without a kernel: the parameters cell, then ``parameters``,
    then the other code cells; writes the executed .ipynb and .html copies."""
    notebook, out_dir = Path(notebook), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / notebook.name).write_text(notebook.read_text())  # a (partial) executed copy
    namespace: dict = {}
    for cell in _cells(notebook):
        if cell["cell_type"] != "code" or "os.kill" in "".join(cell["source"]):
            continue
        exec("".join(cell["source"]), namespace)  # noqa: S102 - our own fixture notebooks
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update(parameters or {})
    if hook:
        hook(out_dir)
    (out_dir / notebook.with_suffix(".html").name).write_text("<html></html>")
    return out_dir / notebook.name


def _sweep(plan: Path, reports: Path, monkeypatch, hook=None) -> list[dict]:
    def execute(nb, out, params=None, **kw):
        return _inprocess_execute(nb, out, params, hook)

    monkeypatch.setattr(report.runs, "execute", execute)
    return report.run_sweep(plan, reports_dir=reports, progress=False)


def _tables(reports: Path) -> dict:
    """What a reader sees: the summary rows, the analysis output, the index's table."""
    plan_dir = reports / "fx"
    problems: list = []
    rows = [(r["name"], r["method"], r["cross_task"], r["seed"], r["metrics"])
            for r in summary.collect(plan_dir, problems=problems)]
    index = (reports / "index.html").read_text()
    table = re.search(r"<h2>fx</h2><table>.*?</table>", index).group(0)
    analysis = results.read(plan_dir / "summary")
    return {"rows": rows, "problems": problems,
            "analysis": (analysis["metrics"], analysis["problems"]),
            "index": table, "unreadable": "<h2>Problems (" in index}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tables of one uninterrupted sweep."""
    tmp = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    try:
        records = _sweep(_plan(tmp), tmp / "reports", mp)
    finally:
        mp.undo()
    assert [r["status"] for r in records] == ["ok"] * 4
    tables = _tables(tmp / "reports")
    assert len(tables["rows"]) == 3 and not tables["problems"] and not tables["unreadable"]
    return tables


# --------------------------------------------------------------------------- kill points
def _kill_in_run(stage: str, victim: str = "stl-depth-s0"):
    """A hook inside the victim's notebook: killed before results (with a checkpoint on
    disk) or after results.json was written (e.g. during the HTML export)."""
    def hook(out_dir: Path) -> None:
        if out_dir.name != victim:
            return
        if stage == "before-results":
            (out_dir / "results.json").unlink()
            (out_dir / "checkpoints").mkdir()
            (out_dir / "checkpoints" / "last.pt").write_bytes(b"partial")
        raise Killed(f"killed in {victim} {stage}")
    return hook


def _kill_on_write(monkeypatch, name: str, victim: str | None = None, leave_tmp: bool = True):
    """Kill while ``name`` (status.json / plan.json / index.html) is being written atomically:
    the temporary file is left behind, as a SIGKILL would, and the target is not written."""
    real = files.atomic_write

    def atomic_write(path, write):
        path = Path(path)
        if path.name == name and (victim is None or path.parent.name == victim):
            if leave_tmp:
                (path.parent / f".{path.name}.x1y2.tmp").write_text('{"name": "half')
            raise Killed(f"killed writing {path}")
        return real(path, write)

    monkeypatch.setattr(files, "atomic_write", atomic_write)


KILL_POINTS = ["run-before-results", "run-after-results", "between-results-and-status",
               "during-status-write", "during-analysis", "during-plan-json", "during-index",
               "two-kills-in-a-row"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_sweep_rerun_gives_the_uninterrupted_table(point, tmp_path, monkeypatch, reference):
    plan, reports = _plan(tmp_path), tmp_path / "reports"
    hook = None
    if point == "run-before-results":
        hook = _kill_in_run("before-results")
    elif point in ("run-after-results", "two-kills-in-a-row"):
        hook = _kill_in_run("after-results")
    elif point == "between-results-and-status":
        real = report.runs.write_status

        def write_status(out, record):
            if Path(out).name == "stl-depth-s0":
                assert (Path(out) / "results.json").is_file()
                raise Killed("killed between results.json and status.json")
            return real(out, record)
        monkeypatch.setattr(report.runs, "write_status", write_status)
    elif point == "during-status-write":
        _kill_on_write(monkeypatch, "status.json", victim="stl-depth-s0")
    elif point == "during-analysis":
        hook = _kill_in_run("after-results", victim="summary")
    elif point == "during-plan-json":
        _kill_on_write(monkeypatch, "plan.json")
    elif point == "during-index":
        _kill_on_write(monkeypatch, "index.html")
    with pytest.raises(Killed):
        _sweep(plan, reports, monkeypatch, hook)
    if point == "two-kills-in-a-row":  # the rerun is killed too, in the next run
        with pytest.raises(Killed):
            _sweep(plan, reports, monkeypatch, _kill_in_run("after-results", "xtc-consistency-s0"))
    monkeypatch.undo()

    records = {r["name"]: r for r in _sweep(plan, reports, monkeypatch)}
    assert all(r["status"] in ("ok", "skipped") for r in records.values()), records
    assert records["stl-seg-s0"]["status"] == "skipped"  # finished before the kill: not redone
    assert _tables(reports) == reference
    attempts = reports / "fx" / report.ATTEMPTS
    if point in ("run-before-results", "run-after-results", "between-results-and-status",
                 "during-status-write"):
        assert records["stl-depth-s0"]["status"] == "ok" and records["stl-depth-s0"]["rerun_reason"]
        kept = list(attempts.iterdir())  # the interrupted attempt is moved aside, not deleted
        assert [p.name.startswith("stl-depth-s0-") for p in kept] == [True]
        moved = json.loads((kept[0] / "MOVED_ASIDE.json").read_text())
        assert "interrupted" in moved["reason"]
        assert (kept[0] / ("checkpoints" if point == "run-before-results"
                           else "results.json")).exists()
    if point == "two-kills-in-a-row":
        assert sorted(json.loads((p / "MOVED_ASIDE.json").read_text())["run"]
                      for p in attempts.iterdir()) == ["stl-depth-s0", "xtc-consistency-s0"]


# What each kill point interrupts: a bookkeeping file mid-write, or a notebook of a kind.
KILLED_WRITES = {"during-status-write": "status.json", "during-plan-json": "plan.json",
                 "during-index": "index.html"}
KILLED_NOTEBOOKS = {"run-before-results": "run", "run-after-results": "run",
                    "between-results-and-status": "run", "during-analysis": "analysis"}


def test_every_step_of_a_sweep_has_a_kill_point(tmp_path, monkeypatch):
    """"Killed at any point": every file an uninterrupted sweep writes atomically, and every
    kind of notebook it runs, is a kill point above; a sweep that grows a new bookkeeping
    file fails here until a kill point covers it. (The notebooks' own writes, results.json
    and the HTML export, happen inside a run: run-before-results / run-after-results.)"""
    assert set(KILLED_WRITES) | set(KILLED_NOTEBOOKS) <= set(KILL_POINTS)
    written, executed, real_write = set(), [], files.atomic_write

    def atomic_write(path, write):
        written.add(Path(path).name)
        return real_write(path, write)

    monkeypatch.setattr(files, "atomic_write", atomic_write)
    records = _sweep(_plan(tmp_path), tmp_path / "reports", monkeypatch,
                     hook=lambda out_dir: executed.append(out_dir.name))
    assert [r["status"] for r in records] == ["ok"] * 4
    assert written == set(KILLED_WRITES.values()), written
    kinds = {name: "run" for name in RUNS} | {"summary": "analysis"}
    assert sorted(executed) == sorted(kinds)
    assert {kinds[name] for name in executed} == set(KILLED_NOTEBOOKS.values())


@pytest.mark.slow
def test_a_real_sigkill_between_results_and_status_is_redone(tmp_path, reference):
    """``python -m xtc sweep`` killed with SIGKILL by the notebook right after results.json."""
    plan, reports = _plan(tmp_path), tmp_path / "reports"
    env = {**os.environ, "XTC_FIXTURE_KILL_AFTER_RESULTS": "stl-depth-s0"}
    cmd = [sys.executable, "-m", "xtc", "sweep", str(plan), "--reports-dir", str(reports)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stderr
    victim = reports / "fx" / "stl-depth-s0"
    assert (victim / "results.json").is_file() and not (victim / "status.json").exists()
    env.pop("XTC_FIXTURE_KILL_AFTER_RESULTS")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr  # not FileExistsError, and the lock is free
    assert "skipped  stl-seg-s0" in second.stdout and "ok       stl-depth-s0" in second.stdout
    tables = _tables(reports)
    assert tables["rows"] == reference["rows"] and tables["analysis"] == reference["analysis"]
    assert tables["index"] == reference["index"]
    assert len(list((reports / "fx" / report.ATTEMPTS).iterdir())) == 1


# --------------------------------------------------------------------------- done-rule
def test_edited_parameters_rerun_every_point_and_keep_the_old_runs(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    _sweep(_plan(tmp_path, epochs=3), reports, monkeypatch)
    old = {n: (reports / "fx" / n / "results.json").read_bytes() for n in RUNS}
    records = {r["name"]: r for r in _sweep(_plan(tmp_path, epochs=5), reports, monkeypatch)}
    for name in RUNS:
        assert records[name]["status"] == "ok"
        assert records[name]["rerun_reason"] == "parameters changed: epochs 3 -> 5"
        status = json.loads((reports / "fx" / name / "status.json").read_text())
        assert status["spec"]["epochs"] == 5
        kept = Path(records[name]["previous_attempt"])
        assert (kept.parent.name == report.ATTEMPTS
                and (kept / "results.json").read_bytes() == old[name])
    assert ([r["status"] for r in _sweep(_plan(tmp_path, epochs=5), reports, monkeypatch)]
            == ["skipped"] * 3 + ["ok"])
    # a point removed from the plan leaves the table (moved aside, not deleted)
    records = {r["name"]: r for r in _sweep(_plan(tmp_path, epochs=5, methods=("stl-seg", "xtc")),
                                            reports, monkeypatch)}
    assert records["stl-depth-s0"]["status"] == "moved"
    assert (Path(records["stl-depth-s0"]["previous_attempt"]) / "results.json").is_file()
    assert ([r["name"] for r in summary.collect(reports / "fx")]
            == ["stl-seg-s0", "xtc-consistency-s0"])
    assert "earlier attempt(s) moved aside" in (reports / "index.html").read_text()


@pytest.mark.parametrize("damage", ["truncated", "empty", "edited", "a-list", "deleted"])
def test_damaged_results_of_an_ok_run_are_redone_not_skipped(damage, tmp_path, monkeypatch,
                                                             reference):
    plan, reports = _plan(tmp_path), tmp_path / "reports"
    _sweep(plan, reports, monkeypatch)
    path = reports / "fx" / "xtc-consistency-s0" / "results.json"
    text = path.read_text()
    if damage == "deleted":
        path.unlink()
    else:
        path.write_text({"truncated": text[: len(text) // 2], "empty": "", "a-list": "[1, 2]",
                         "edited": text.replace("0.42", "0.99")}[damage])
    index = report.build_index(reports).read_text()
    assert "xtc-consistency-s0" in index and ("<h2>Problems (" in index)  # reported, not dropped
    records = {r["name"]: r for r in _sweep(plan, reports, monkeypatch)}
    assert records["xtc-consistency-s0"]["status"] == "ok", records["xtc-consistency-s0"]
    assert records["stl-seg-s0"]["status"] == "skipped"
    assert _tables(reports) == reference


# --------------------------------------------------------------------------- bad plans
def _snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_error(plan: Path, reports: Path, capsys) -> str:
    code = cli.main(["sweep", str(plan), "--reports-dir", str(reports)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert (err.startswith("xtc: error:") and len(err.splitlines()) == 1
            and "Traceback" not in err), err
    return err


CODE = 'exec("import pathlib; pathlib.Path(\'PWNED\').touch()")#'
PLAN_CASES = [  # (id, change to a valid plan, fragment of the one-line error)
    ("code-in-grid-name", {"grid": {CODE: [1]}}, "is not a parameter of train.ipynb"),
    ("code-in-runs-name", {"runs": [{"method": "xtc", CODE: 1}]},
     "is not a parameter of train.ipynb"),
    ("code-in-parameters-name", {"parameters": {CODE: 1}}, "is not a parameter of train.ipynb"),
    ("code-in-analysis-name", {"analysis": [{"notebook": str(SUMMARY), "parameters": {CODE: 1}}]},
     "is not a parameter of summary.ipynb"),
    ("code-in-override-key", {"parameters": {"overrides": {CODE: 1}}}, "is not a config key"),
    ("misspelt-grid-name", {"grid": {"lamda1": [0.1]}}, "did you mean 'lambda1'"),
    ("misspelt-tied-name", {"grid": {"lambda1+lamda2": [0.1]}}, "'lamda2' is not a parameter"),
    ("misspelt-config-key", {"grid": {"train.epoch": [2]}}, "unknown config key 'train.epoch'"),
    ("misspelt-override", {"parameters": {"overrides": {"data.trainsize": 8}}},
     "unknown config key 'data.trainsize'"),
    ("config-key-in-parameters", {"parameters": {"train.epochs": 2}},
     "go under 'parameters.overrides'"),
    ("config-value-type", {"runs": [{"method": "xtc", "train.epochs": "two"}]}, "expected int"),
    ("misspelt-analysis-name",
     {"analysis": [{"notebook": str(SUMMARY), "parameters": {"run_dir": "$runs"}}]},
     "did you mean 'runs_dir'"),
    ("analysis-unknown-key", {"analysis": [{"notebook": str(SUMMARY), "parameter": {}}]},
     "unknown key(s) ['parameter']"),
    ("missing-notebook", {"notebook": "nope/02_train.ipynb"}, "does not exist"),
    ("seeds-not-a-list", {"runs": [{"method": "xtc", "seeds": 3}]},
     "'runs[0].seeds' must be a non-empty list"),
]
YAML_CASES = [  # YAML that yields values JSON cannot hold
    ("date-value", "grid:\n  seed: [2024-01-01]\n", "holds a date", "quote it"),
    ("datetime-value", "runs:\n  - {method: xtc, data_root: 2024-01-01 10:00:00}\n",
     "holds a datetime", "quote it"),
    ("set-value", "runs:\n  - {method: xtc, lambda1: !!set {a, b}}\n", "holds a set", "list"),
    ("binary-value", "runs:\n  - {method: xtc, data_root: !!binary aGVsbG8=}\n",
     "holds a bytes", "quote it"),
    ("nan-value", "runs:\n  - {method: xtc, lambda1: .nan}\n", "is nan", "finite number"),
    ("int-key", "runs:\n  - {method: xtc, overrides: {1: 2}}\n", "has the key 1", "quote it"),
]


def _existing_reports(tmp_path: Path) -> Path:
    """A reports folder holding a finished run that no bad plan may touch."""
    reports = tmp_path / "reports"
    results.write(reports / "fx" / "old-run", params={"model.method": "mtl"},
                  metrics={"test": {"miou": 0.5}})
    (reports / "fx" / "old-run" / "status.json").write_text('{"status": "ok", "kind": "train"}')
    return reports


@pytest.mark.parametrize("case, change, fragment", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_bad_plan_is_refused_before_anything_runs(case, change, fragment, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = yaml.safe_load(_plan(tmp_path).read_text())
    if "grid" in change:
        plan.pop("runs")
    plan.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(plan))
    reports = _existing_reports(tmp_path)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(report.runs, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    assert fragment in _cli_error(path, reports, capsys)
    assert _snapshot(tmp_path) == before and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case, text, fragment, fix", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_non_json_yaml_values_are_refused_naming_field_and_fix(case, text, fragment, fix, tmp_path,
                                                               capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(f"notebook: {TRAIN}\nanalysis: []\n{text}")
    reports = _existing_reports(tmp_path)
    before = _snapshot(tmp_path)
    err = _cli_error(path, reports, capsys)
    assert fragment in err and fix in err and "field '" in err
    assert _snapshot(tmp_path) == before


def test_shipped_plans_pass_the_name_checks():
    for preset in report.list_presets():
        report.load_plan(report.PRESETS_DIR / f"{preset}.yaml")
    for sweep in (REPO_ROOT / "configs" / "sweeps").glob("*.yaml"):
        report.load_plan(sweep)
    assert ({"lambda1", "overrides", "out_dir"}
            <= report.notebook_parameters(REPO_ROOT / report.TRAIN_NOTEBOOK))


def test_a_second_writer_is_refused_naming_the_folder_and_holder(tmp_path, capsys, monkeypatch):
    plan = _plan(tmp_path)
    reports = _existing_reports(tmp_path)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(report.runs, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    with report.plan_lock((reports / "fx").resolve()):
        err = _cli_error(plan, reports, capsys)
        assert (str((reports / "fx").resolve()) in err and "another sweep" in err
                and f"pid {os.getpid()}" in err)
        # and from another process, through the real command line
        other = subprocess.run([sys.executable, "-m", "xtc", "sweep", str(plan),
                                "--reports-dir", str(reports)],
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and "another sweep" in other.stderr
        assert len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert {p: h for p, h in _snapshot(tmp_path).items() if p.name != ".lock"} == before


# --------------------------------------------------------------------------- bad bookkeeping files
BOOK_CASES = [  # (id, file, content, fragment the index shows)
    ("plan-json-invalid", "plan.json", "[{\"name\": ", "is not valid JSON"),
    ("plan-json-object", "plan.json", "{\"name\": \"x\"}", "holds a JSON object, not a list"),
    ("plan-json-strings", "plan.json", "[\"a\", [1]]", None),
    ("status-invalid", "bad/status.json", "{\"status\": \"ok\"", "is not valid JSON"),
    ("status-list", "bad/status.json", "[\"ok\"]", "holds a JSON array, not an object"),
    ("status-string", "bad/status.json", "\"ok\"", "holds a JSON string, not an object"),
    ("status-ok-no-results", "bad/status.json", "{\"status\": \"ok\", \"kind\": \"train\"}",
     "missing although status.json says ok"),
    ("status-odd-fields", "bad/status.json",
     "{\"status\": [1], \"notebook\": 3, \"error\": {}}", None),
    ("results-truncated", "bad/results.json", "{\"metrics\": {\"test\": {\"miou\": 0.",
     "is not valid JSON"),
    ("results-empty", "bad/results.json", "", "is empty"),
    ("results-list", "bad/results.json", "[1, 2]", "holds a JSON array"),
    ("results-string", "bad/results.json", "\"done\"", "holds a JSON string"),
    ("results-metrics-list", "bad/results.json", "{\"metrics\": [0.5]}",
     "'metrics' is a JSON array"),
    ("results-test-list", "bad/results.json", "{\"metrics\": {\"test\": [0.5]}}",
     "metrics.test is a JSON array"),
    ("results-no-test", "bad/results.json", "{\"metrics\": {\"val\": {\"miou\": 0.5}}}",
     "has no metrics.test"),
    ("results-params-list", "bad/results.json",
     "{\"params\": [1], \"metrics\": {\"test\": {\"miou\": \"x\"}}, "
     "\"protocol\": 3}", None),
]


@pytest.mark.parametrize("case, name, content, fragment", BOOK_CASES,
                         ids=[c[0] for c in BOOK_CASES])
def test_malformed_bookkeeping_is_reported_and_the_rest_rendered(case, name, content, fragment,
                                                                 tmp_path):
    reports = tmp_path / "reports"
    good = reports / "fx" / "good"
    results.write(good, params={"model.method": "mtl", "train.seed": 0},
                  metrics={"test": {"miou": 0.5}})
    sha = report.runs.sha256(good / "results.json")
    (good / "status.json").write_text(json.dumps({"status": "ok", "kind": "train",
                                                  "results_sha256": sha}))
    (reports / "fx" / "bad").mkdir()
    if name.startswith("bad/") and name != "bad/status.json":
        (reports / "fx" / "bad" / "status.json").write_text('{"status": "ok", "kind": "train"}')
    (reports / "fx" / name).write_text(content)
    page = report.build_index(reports).read_text()
    # the rest still rendered
    assert "<td>good</td><td>mtl</td><td>-</td><td>0</td><td>0.5000</td>" in page
    if fragment:
        assert "<h2>Problems (" in page and fragment in html.unescape(page), page
        assert "<td>bad</td>" in page or name == "plan.json"  # a run never silently disappears
    problems: list = []
    rows = summary.collect(reports / "fx", problems=problems)
    assert (sorted(r["name"] for r in rows)
            == (["bad"] if case == "results-params-list" else []) + ["good"])
    if name.startswith("bad/results"):
        assert fragment is None or [p["path"] for p in problems] == [str(reports / "fx" / name)]
