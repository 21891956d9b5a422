"""Sweeps through a real Slurm: a one-node cluster on this machine (tools/slurm-local.sh,
Debian's slurm-wlm + munge, as root). A failed task does not stop the others and a rerun
resubmits only it; a task preempted (``scontrol requeue``: SIGTERM) or warned of its time
limit (submitit's USR2) checkpoints, is requeued, resumes from ``last.pt`` and ends with the
weights of an uninterrupted run, bit for bit. Without Slurm (or root) those tests skip and
say why; ``.ci/run`` installs Slurm. The executor's option and error handling, and
``--resume auto``, are tested without Slurm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY
from xtc import cli
from xtc import reports as report
from xtc.reports import executors
from xtc.errors import SetupError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "slurm-local.sh"
# 02_train with a tiny model and data: each task is one CPU and ~30 s
TINY_RUN = {"config": "configs/synthetic-quick.yaml", "device": "cpu", "epochs": 1,
            "max_steps_per_epoch": 2, "n_gallery": 1,
            "overrides": {"data.height": 64, "data.width": 64, "data.train_size": 24,
                          "data.test_size": 8, "model.encoder": "resnet18",
                          "model.decoder_width": 16, "model.transfer_width": 8}}
SLURM = {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 2, "time_min": 20, "poll_s": 1}


# --------------------------------------------------------------------------- the cluster
def _why_no_slurm() -> str | None:
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(c) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): apt-get install -y "
                f"slurm-wlm munge (.ci/run does)")
    if os.geteuid() != 0:
        return "the one-node Slurm cluster (tools/slurm-local.sh) must be started as root"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return f"submitit is not installed: pip install {executors.SUBMITIT_PIN}"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster (started here, stopped afterwards; one already running
    from ``tools/slurm-local.sh start`` is used and left running)."""
    why = _why_no_slurm()
    if why:
        pytest.skip(why)
    env = {**os.environ}
    up = subprocess.run(["bash", str(SCRIPT), "status"], env=env,
                        capture_output=True).returncode == 0
    if not up:
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True,
                          check=True).stdout.strip().split("=", 1)[1]
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", conf)
    mp.setenv("PYTHONPATH", str(ROOT))
    try:
        yield conf
    finally:
        mp.undo()
        if not up:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _plan(tmp_path: Path, runs: list[dict], parameters: dict | None = None, **extra) -> Path:
    path = tmp_path / "sl.yaml"
    path.write_text(yaml.safe_dump({"parameters": {**TINY_RUN, **(parameters or {})},
                                    "runs": runs, "analysis": [], **extra}))
    return path


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _assert_same_weights(a: Path, b: Path) -> None:
    x, y = _weights(a), _weights(b)
    assert x["model"].keys() == y["model"].keys()
    for key in x["model"]:
        assert torch.equal(x["model"][key], y["model"][key]), f"{a.name}: {key} differs"
    for key in x.get("criterion", {}):
        if torch.is_tensor(x["criterion"][key]):
            assert torch.equal(x["criterion"][key], y["criterion"][key]), key
    assert x["history"] == y["history"]


# --------------------------------------------------------------------------- with Slurm
@pytest.mark.slow
def test_failed_task_does_not_stop_the_others_and_a_rerun_resubmits_only_it(slurm, tmp_path,
                                                                             capsys):
    plan = _plan(tmp_path, [
        {"method": "stl-seg", "seed": 0},
        {"method": "mtl", "seed": 0},
        # 24 images, batches of 64: fit refuses before training
        {"method": "stl-depth", "seed": 0, "name": "broken", "train.batch_size": 64},
    ])
    reports = tmp_path / "reports"
    argv = ["sweep", str(plan), "--reports-dir", str(reports), "--executor", "slurm",
            "--cpus-per-task", "1", "--mem-gb", "2", "--max-parallel", "2"]
    assert cli.main(argv) == 1  # exit 1: one run failed
    plan_dir = reports / "sl"
    first = {name: _status(plan_dir / name) for name in ("stl-seg-s0", "mtl-s0", "broken")}
    assert [first[n]["status"] for n in first] == ["ok", "ok", "failed"], first
    assert "train.batch_size=64" in first["broken"]["error"]
    jobs = {n: first[n]["job_id"] for n in first}
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # one job array ...
    assert len(set(jobs.values())) == 3  # ... one task per run
    for name in first:
        assert first[name]["executor"] == "slurm" and first[name]["threads"] == 1
        log = plan_dir / name / executors.LOG_LINK  # the task's log, linked from its folder
        assert log.is_symlink() and "submitit" in log.read_text().lower()
        assert (plan_dir / name / "02_train.html").is_file()
    assert (plan_dir / "stl-seg-s0" / "results.json").is_file()
    index = (reports / "index.html").read_text()
    assert "slurm job" in index and all(j in index for j in jobs.values())
    assert 'class="failed"' in index and "broken" in index
    assert "sacct" not in capsys.readouterr().err  # no accounting daemon, no warnings about it

    records = {r["name"]: r for r in report.run_sweep(plan, reports_dir=reports, progress=False,
                                                      executor=SLURM)}
    assert records["stl-seg-s0"]["status"] == records["mtl-s0"]["status"] == "skipped"
    assert records["broken"]["status"] == "failed"
    again = {name: _status(plan_dir / name) for name in first}
    assert again["stl-seg-s0"]["job_id"] == jobs["stl-seg-s0"]  # not resubmitted
    assert again["mtl-s0"]["job_id"] == jobs["mtl-s0"]
    assert again["broken"]["job_id"] != jobs["broken"]  # resubmitted: a new job
    assert again["broken"]["rerun_reason"] == "the previous attempt failed"
    assert again["broken"]["job_id"] in (reports / "index.html").read_text()


def _wait(predicate, what: str, timeout: float = 240.0, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _epochs_saved(run: Path) -> int:
    try:
        return int(_weights(run / "checkpoints" / "last.pt")["epoch"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


@pytest.mark.slow
def test_preempted_and_time_limited_tasks_resume_to_the_uninterrupted_weights(slurm, tmp_path):
    same = {"method": "xtc", "seed": 0}
    plan = _plan(tmp_path, [{**same, "name": "reference"}, {**same, "name": "preempted"},
                            {**same, "name": "timelimit"}],
                 parameters={"epochs": 3, "max_steps_per_epoch": 4,
                             "overrides": {**TINY_RUN["overrides"], "data.train_size": 48,
                                           "train.checkpoint_every": 1,
                                           "train.keep_checkpoints": "resumable"}})
    reports = tmp_path / "reports"
    plan_dir = reports / "sl"
    done: dict = {}

    def sweep():
        try:
            done["records"] = report.run_sweep(plan, reports_dir=reports, progress=False,
                                               executor=SLURM)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            done["error"] = exc

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    signals = {"preempted": ["scontrol", "requeue"],  # SIGTERM to every process of the task
               "timelimit": ["scancel", "--signal=USR2"]}  # the time-limit warning
    interrupted_at = {}
    for name, command in signals.items():
        run = plan_dir / name
        # after a whole epoch, so that the resumed attempt visibly starts at epoch 2
        _wait(lambda: _status(run).get("status") == "running" and _epochs_saved(run) >= 1,
              f"{name} to finish an epoch")
        job = _status(run)["job_id"]
        subprocess.run([*command, job], check=True, capture_output=True)
        expected = "interrupted" if name == "preempted" else "requeued"
        _wait(lambda: _status(run).get("status") == expected, f"{name} to stop at a checkpoint")
        interrupted_at[name] = _epochs_saved(run)
        assert 1 <= interrupted_at[name] < 3
    thread.join(600)
    assert not thread.is_alive() and "error" not in done, done.get("error")
    records = {r["name"]: r for r in done["records"]}
    assert all(r["status"] == "ok" for r in records.values()), records
    ref = plan_dir / "reference"
    assert _status(ref)["slurm_restarts"] == 0
    for name in signals:
        run = plan_dir / name
        status = _status(run)
        assert status["slurm_restarts"] >= 1 and status["job_id"] == records[name]["job_id"]
        for ckpt in ("last.pt", "best.pt"):
            _assert_same_weights(ref / "checkpoints" / ckpt, run / "checkpoints" / ckpt)
        # the requeued attempt resumed: it trained only the epochs after the checkpoint
        printed = json.dumps(json.loads((run / "02_train.ipynb").read_text())["cells"])
        assert "epoch 3:" in printed and "epoch 1:" not in printed
        assert json.loads((run / "results.json").read_text())["metrics"]["test"] == \
            json.loads((ref / "results.json").read_text())["metrics"]["test"]
    log = (plan_dir / "timelimit" / executors.LOG_LINK).read_text()
    assert "SIGUSR2" in log  # submitit caught it, checkpointed and requeued
    assert "SIGTERM" in (plan_dir / "preempted" / executors.LOG_LINK).read_text()
    index = (reports / "index.html").read_text()
    assert "requeue(s)" in index


# --------------------------------------------------------------------------- without Slurm
def test_slurm_executor_without_sbatch_says_what_to_do(tmp_path, capsys, monkeypatch):
    plan = _plan(tmp_path, [{"method": "mtl", "seed": 0}])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli.main(["sweep", str(plan), "--executor", "slurm",
                     "--reports-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtc: error: --executor slurm") and "sbatch" in err
    assert "tools/slurm-local.sh start" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "sl").exists()  # nothing ran


def test_slurm_executor_without_submitit_names_the_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name.split(".")[0] == "submitit":
            raise ImportError("No module named 'submitit'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(SetupError, match=r"pip install submitit==\d"):
        executors.check_slurm()


@pytest.mark.parametrize("argv, fragment", [
    (["--partition", "gpu"], "--partition only applies to Slurm runs; add --executor slurm"),
    (["--executor", "slurm", "--cpus-per-task", "0"], "--cpus-per-task is 0; it must be positive"),
])
def test_executor_options_are_checked(argv, fragment, tmp_path, capsys):
    plan = _plan(tmp_path, [{"method": "mtl", "seed": 0}])
    assert cli.main(["sweep", str(plan), "--reports-dir", str(tmp_path / "r"), *argv]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("value, fragment", [
    ("pbs", "field 'executor.kind' is 'pbs'"),
    ({"kind": "slurm", "partitoin": "gpu"}, "field 'executor.partitoin' is not an executor option"),
    ({"kind": "slurm", "gpus_per_task": "one"}, "field 'executor.gpus_per_task' is 'one'"),
    (["slurm"], "field 'executor' must be 'local', 'slurm' or a mapping"),
])
def test_plan_executor_key_is_checked_before_anything_runs(value, fragment, tmp_path):
    plan = _plan(tmp_path, [{"method": "mtl", "seed": 0}], executor=value)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        report.load_plan(plan)


def test_plan_executor_key_and_command_line_combine():
    plan = {"kind": "slurm", "partition": "gpu", "gpus_per_task": 1}
    options = executors.resolve(plan, {"partition": "debug", "max_parallel": 4}, "x.yaml")
    assert options["kind"] == "slurm" and options["partition"] == "debug"
    assert options["gpus_per_task"] == 1 and options["max_parallel"] == 4
    assert options["cpus_per_task"] == executors.SLURM_DEFAULTS["cpus_per_task"]
    assert executors.resolve("slurm", {"kind": "local"}, "x.yaml") == {"kind": "local"}
    assert executors.resolve(None, None, "x.yaml") == {"kind": "local"}
    # the shipped sweep names no executor: local unless --executor slurm
    lam = report.load_plan(ROOT / "configs" / "sweeps" / "lambda.yaml")
    assert executors.resolve(lam.get("executor"), None, "lambda.yaml")["kind"] == "local"


def test_sweeps_train_with_resume_auto(tmp_path, monkeypatch):
    """02_train takes ``resume`` and sweeps pass "auto" (outside the recorded spec)."""
    seen = []
    monkeypatch.setattr(report.sweep, "run_task", lambda task, threads: seen.append(task) or
                        {"name": task["name"], "kind": task["kind"], "status": "failed",
                         "error": "x", "notebook": ""})
    report.run_sweep(_plan(tmp_path, [{"method": "mtl", "seed": 0}]),
                     reports_dir=tmp_path / "r", progress=False)
    assert seen[0]["parameters"]["resume"] == "auto" and "resume" not in seen[0]["spec"]


def _train(out: Path, *settings: str, resume: list[str] = ()) -> int:
    argv = ["train", "--out", str(out), "--quiet", *resume]
    for item in [*TINY, "train.max_steps_per_epoch=2", *settings]:
        argv += ["--set", item]
    return cli.main(argv)


@pytest.mark.slow
def test_resume_auto_starts_fresh_without_last_pt_and_continues_with_it(tmp_path, capsys):
    # died before its first checkpoint: an empty checkpoints/ folder (or a lone best.pt)
    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    assert _train(early, "train.epochs=1", resume=["--resume"]) == 2  # strict: no last.pt
    assert "last.pt does not exist" in capsys.readouterr().err
    assert _train(early, "train.epochs=1", resume=["--resume", "auto"]) == 0
    assert (early / "results.json").is_file()
    # an interrupted run (results.json not yet written) continues from its last.pt exactly
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, "train.epochs=2") == 0
    assert _train(part, "train.epochs=1", "train.keep_checkpoints=resumable") == 0
    (part / "results.json").unlink()
    assert _train(part, "train.epochs=2", resume=["--resume", "auto"]) == 0
    _assert_same_weights(full / "checkpoints" / "last.pt", part / "checkpoints" / "last.pt")
    # a finished run: nothing to resume, said in one line
    capsys.readouterr()
    assert _train(part, "train.epochs=2", resume=["--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume auto" in err and "finished run" in err and len(err.splitlines()) == 1
