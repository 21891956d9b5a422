"""Where a plan's training runs execute: ``local`` (processes on this machine, the default)
or ``slurm`` (one task of a Slurm job array per run, submitted through submitit).

The executor is chosen by ``--executor`` on ``xtc sweep`` / ``xtc report`` or by the plan's
``executor:`` key, either a name or a mapping of options::

    executor: {kind: slurm, partition: gpu, account: myproject, gpus_per_task: 1,
               cpus_per_task: 8, mem_gb: 32, time_min: 240, max_parallel: 10}

Slurm runs keep the bookkeeping of :mod:`xtc.reports`: every run's status.json says where it
stands (``queued``, ``running``, ``requeued``, ``interrupted``, then ``ok`` or ``failed``) and
records its Slurm job id; a failed task never stops the others; a rerun skips finished
runs and resubmits the others. Each task's Slurm log is linked from its run folder
(``slurm.log``); submitit's own files live in ``<plan>/.slurm/``.

Preemption: the notebook trains with ``resume="auto"``. On SIGTERM (preemption, ``scontrol
requeue``, ``scancel``) the training kernel saves ``last.pt`` after the current step and
stops; the scheduler requeues the job when it preempted it, and the requeued task continues
from ``last.pt``. On the time-limit warning signal (submitit's ``USR2``, sent
``signal_delay_s`` before the limit) the task stops the kernel the same way, then submitit
checkpoints the task and requeues it (:meth:`SlurmRun.checkpoint`). Either way the resumed
run ends with the weights an uninterrupted one has.

submitit and the Slurm commands are needed only for ``slurm``; they are imported when used.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from xtc import files
from xtc.errors import ConfigError, PlanError, SetupError
from xtc.reports.index import build_index
from xtc.reports.runs import STATUS, move_aside, run_task, write_status

KINDS = ("local", "slurm")
# option: (type(s), help) -- also the keys of a plan's ``executor:`` mapping
SLURM_OPTIONS: dict[str, tuple] = {
    "partition": (str, "partition to submit to"),
    "account": (str, "account to charge"),
    "qos": (str, "quality of service"),
    "constraint": (str, "node features the tasks need"),
    "gpus_per_task": (int, "GPUs per run"),
    "cpus_per_task": (int, "CPU cores per run (also its torch threads)"),
    "mem_gb": ((int, float), "memory per run, GB"),
    "time_min": (int, "time limit per run, minutes"),
    "max_parallel": (int, "runs of the array running at once"),
    "signal_delay_s": (int, "seconds before the time limit that the warning signal comes"),
    "max_requeues": (int, "time-limit requeues allowed per run"),
    "setup": (list, "shell lines run before each task (module load ..., source venv)"),
    "poll_s": ((int, float), "seconds between two looks at the queue"),
}
SLURM_DEFAULTS = {"gpus_per_task": 0, "cpus_per_task": 1, "mem_gb": 4, "time_min": 60,
                  "signal_delay_s": 60, "max_requeues": 10, "poll_s": 5.0}
SUBMITIT_PIN = "submitit==1.5.4"
SLURM_FOLDER = ".slurm"  # <plan>/.slurm/: submitit's pickles and the tasks' logs
LOG_LINK = "slurm.log"  # <run>/slurm.log -> the task's log in <plan>/.slurm/
# states after which a job never runs again (PREEMPTED is left out: a requeue follows)
FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
LIVE_STATUSES = ("queued", "running", "requeued", "interrupted")  # status.json of a job not done


# --------------------------------------------------------------------------- options
def parse(value: Any, where: str) -> dict:
    """A plan's ``executor:`` value -> ``{"kind": ..., **options}``; errors name the field."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise PlanError(f"{where}: field 'executor' must be 'local', 'slurm' or a mapping "
                         f"such as {{kind: slurm, partition: gpu}}")
    out = dict(value)
    kind = out.get("kind", "local")
    if kind not in KINDS:
        raise PlanError(f"{where}: field 'executor.kind' is {kind!r}; choose one of {list(KINDS)}")
    _check_options(out, lambda key: f"{where}: field 'executor.{key}'")
    return out


def resolve(plan_value: Any, given: dict | None, where: str) -> dict:
    """The executor a run uses: the plan's ``executor:`` updated with the command line's
    options (``given``, as :func:`xtc.cli._executor_options` builds it); Slurm defaults
    filled in."""
    options = {**parse(plan_value, where), **(given or {})}
    options.setdefault("kind", "local")
    if options["kind"] not in KINDS:
        raise ConfigError(f"--executor {options['kind']!r}: choose one of {list(KINDS)}")
    _check_options(options, lambda key: f"--{key.replace('_', '-')}")
    slurm_only = sorted(k for k in options if k != "kind")
    if options["kind"] == "local" and slurm_only:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in slurm_only)
        verb = "applies" if len(slurm_only) == 1 else "apply"
        raise ConfigError(f"{flags} only {verb} to Slurm runs; add --executor slurm (or "
                         f"'executor: slurm' in {where}), or drop them")
    if options["kind"] == "slurm":
        options = {**SLURM_DEFAULTS, **options}
    return options


def _check_options(options: dict, name) -> None:
    for key, value in options.items():
        if key == "kind":
            continue
        if key not in SLURM_OPTIONS:
            valid = ", ".join(["kind", *SLURM_OPTIONS])
            raise ConfigError(f"{name(key)} is not an executor option; valid: {valid}")
        kind = SLURM_OPTIONS[key][0]
        if isinstance(value, bool) or not isinstance(value, kind):
            want = {list: "a list of shell lines", str: "a string", int: "a whole number"}.get(
                kind, "a number")
            raise ConfigError(f"{name(key)} is {value!r}; it must be {want}")
        if key in ("gpus_per_task",) and value < 0 or key in (
                "cpus_per_task", "mem_gb", "time_min", "max_parallel", "poll_s") and value <= 0:
            raise ConfigError(f"{name(key)} is {value!r}; it must be positive")


def check_slurm() -> None:
    """Fail with the fix when submitit or the Slurm commands are missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SetupError(f"--executor slurm needs submitit, which is not installed in this "
                         f"environment; install it with: pip install {SUBMITIT_PIN} (make setup "
                         f"installs it), or use --executor local") from None
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise SetupError(f"--executor slurm: {', '.join(missing)} not found on PATH; run the "
                         f"sweep on a Slurm login node (or start the local one-node cluster: "
                         f"tools/slurm-local.sh start), or use --executor local")


# --------------------------------------------------------------------------- the queue
def queue_states(job_ids) -> dict[str, str] | None:
    """``{"123_0": "RUNNING", ...}`` for the jobs Slurm still lists; None when squeue fails.
    A job it no longer lists has ended."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state.strip()
    return states


def is_live(state: str | None) -> bool:
    return state is not None and state.split()[0].rstrip("+") not in FINAL_STATES


def live_runs(tasks: list[dict]) -> dict[str, str]:
    """``{run name: job id}`` for runs whose status.json names a Slurm job that is still
    queued or running (an earlier sweep's): a rerun waits for them instead of resubmitting."""

    jobs = {}
    for task in tasks:
        status, _ = files.read_json(Path(task["out_dir"]) / STATUS)
        if status and status.get("status") in LIVE_STATUSES and status.get("job_id"):
            jobs[task["name"]] = str(status["job_id"])
    if not jobs:
        return {}
    states = queue_states(jobs.values()) or {}
    return {name: job for name, job in jobs.items() if is_live(states.get(job))}


# --------------------------------------------------------------------------- submitting
def run_slurm(todo: list[dict], plan_dir: Path, options: dict, adopted: dict[str, str],
              plan_name: str, on_done=None) -> list[dict]:
    """Submit ``todo`` as one job array, wait for it and for ``adopted`` (runs already in the
    queue), and return each run's final status record."""
    import submitit


    folder = plan_dir / SLURM_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, str] = dict(adopted)
    by_name = {t["name"]: t for t in todo}
    if todo:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options["max_requeues"])
        params = {"job_name": f"xtc-{plan_name}", "time": options["time_min"],
                  "cpus_per_task": options["cpus_per_task"],
                  "mem": f"{round(options['mem_gb'] * 1024)}M",
                  "signal_delay_s": options["signal_delay_s"], "stderr_to_stdout": True,
                  "array_parallelism": options.get("max_parallel") or len(todo),
                  "additional_parameters": {"requeue": True}}
        if options["gpus_per_task"]:
            params["gpus_per_task"] = options["gpus_per_task"]
        for key in ("partition", "account", "qos", "constraint", "setup"):
            if options.get(key):
                params[key] = options[key]
        executor.update_parameters(**params)
        threads = options["cpus_per_task"]
        submitted = []
        for task in todo:  # recorded before submission: a task never finds no status.json
            write_status(Path(task["out_dir"]), _record(task, "queued", job_id=None))
        try:
            with executor.batch():
                for task in todo:
                    submitted.append(executor.submit(SlurmRun(task, threads)))
        except Exception as exc:  # noqa: BLE001 - sbatch refused: say why, record it
            detail = " ".join(str(exc).split())[-600:]
            message = (f"sbatch refused the job array ({detail}); check the partition, "
                       f"account, GPUs, memory and time limit against the cluster (sinfo, "
                       f"sacctmgr show assoc), then rerun the sweep")
            for task in todo:
                write_status(Path(task["out_dir"]), {**_record(task, "failed", job_id=None),
                                                      "error": message})
            raise PlanError(message) from None
        for task, job in zip(todo, submitted):
            jobs[task["name"]] = str(job.job_id)
            status, _ = files.read_json(Path(task["out_dir"]) / STATUS)
            if not status or status.get("status") == "queued":  # the task may have started
                write_status(Path(task["out_dir"]), _record(task, "queued", job_id=str(job.job_id)))
    records, outstanding = [], dict(jobs)
    failures = 0
    build_index(plan_dir.parent)  # the index shows the queued runs and their job ids now
    while outstanding:
        states = queue_states(outstanding.values())
        failures = failures + 1 if states is None else 0
        for name, job in list(outstanding.items()):
            out = plan_dir / name
            status, _ = files.read_json(out / STATUS)
            final = bool(status) and status.get("status") in ("ok", "failed")
            if states is not None and is_live(states.get(job)):
                continue  # still queued, running or requeued (its status may say failed: a
                #           requeued attempt's, superseded once the requeued task runs)
            if states is None and not final:
                continue  # squeue did not answer: wait for it
            if not final:  # the job left the queue without a result
                task = by_name.get(name) or {"name": name, "kind": "train", "out_dir": str(out),
                                             "notebook": (status or {}).get("notebook", "")}
                state = states.get(job, "no longer in the queue") if states is not None else "?"
                last = (status or {}).get("status", "no status")
                status = {**(status or {}), **_record(task, "failed", job_id=job),
                          "error": f"Slurm job {job} ended ({state}) while its run was {last}: "
                                   f"see {out / LOG_LINK}"}
                write_status(out, status)
            records.append(status)
            del outstanding[name]
            if on_done is not None:
                on_done(status)
            if outstanding:
                build_index(plan_dir.parent)
        if failures >= 60:
            raise RuntimeError(f"squeue has not answered for {failures} tries; the jobs "
                               f"{sorted(outstanding.values())} may still run: rerun the sweep "
                               f"to wait for them again")
        if outstanding:
            time.sleep(options["poll_s"])
    return records


def _record(task: dict, status: str, **extra) -> dict:
    record = {"name": task["name"], "kind": task["kind"], "status": status, "error": None,
              "executor": "slurm",
              "notebook": str(Path(task["out_dir"]) / Path(task["notebook"]).name),
              "parameters": task.get("parameters"), **extra}
    for key in ("spec", "rerun_reason", "previous_attempt"):
        if key in task:
            record[key] = task[key]
    return record


# --------------------------------------------------------------------------- one task
_RUNTIME: dict = {}  # the running task's thread and interruption (never pickled)


class SlurmRun:
    """One run of a plan as one task of a Slurm job array (pickled by submitit).

    ``__call__`` runs in the task: it executes the notebook in a thread (the main thread
    keeps handling signals) whose kernel inherits a blocked time-limit signal, so only this
    process reacts to it. :meth:`checkpoint` is what submitit calls on that signal.
    """

    def __init__(self, task: dict, threads: int):
        self.task, self.threads = task, threads

    def __call__(self) -> dict:
        import submitit


        env = submitit.JobEnvironment()
        job_id = str(env.job_id)
        out = Path(self.task["out_dir"])
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        status, _ = files.read_json(out / STATUS)
        if restarts and (status or {}).get("status") == "ok" and status.get("job_id") == job_id:
            return status  # requeued after this very task had finished: nothing to redo
        task = dict(self.task)
        if restarts and (out / "results.json").exists() and (status or {}).get("status") != "ok":
            # requeued after training had finished (during the report's export): resume
            # has nothing left to do, so the run starts again in a fresh folder
            task["previous_attempt"] = str(move_aside(out, "requeued after training finished"))
        out.mkdir(parents=True, exist_ok=True)
        log = Path(env.paths.stdout)
        link = out / LOG_LINK
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(log.resolve())
        task.update(job_id=job_id, executor="slurm", slurm_restarts=restarts, log=str(log))
        write_status(out, _record(task, "running", job_id=job_id, slurm_restarts=restarts,
                                   log=str(log), host=env.hostname))
        _RUNTIME.clear()
        _RUNTIME.update(interrupted=None, record=None, job_id=job_id)
        signal.signal(signal.SIGTERM, self._on_term)  # instead of submitit's log-and-ignore

        def target():
            _RUNTIME["record"] = run_task(task, self.threads)

        usr = _usr_signal()
        signal.pthread_sigmask(signal.SIG_BLOCK, {usr})  # inherited by the thread's kernel
        try:
            thread = threading.Thread(target=target, name="xtc-run", daemon=True)
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {usr})
        _RUNTIME["thread"] = thread
        while thread.is_alive():
            thread.join(0.5)  # signal handlers run in this thread between the joins
        record = _RUNTIME.get("record") or {}
        if _RUNTIME["interrupted"] and record.get("status") != "ok":
            # stopped by the scheduler: last.pt holds the state
            record = {**record, **_record(task, "interrupted", job_id=job_id,
                                          slurm_restarts=restarts, log=str(log)),
                      "error": f"{_RUNTIME['interrupted']} received: training stopped after "
                               f"saving checkpoints/last.pt; a requeued task resumes from it"}
            write_status(out, record)
            raise SystemExit(128 + signal.SIGTERM)  # no result: the job is not done
        return record

    def _on_term(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        print(f"xtc: {name} received (preempted, requeued or cancelled): stopping the run at "
              f"its next saved step", flush=True)
        _RUNTIME["interrupted"] = name
        _signal_children(signal.SIGTERM)  # the kernel saves last.pt after its current step

    def checkpoint(self, *args, **kwargs):
        """The time-limit (or preemption) signal: stop training at a saved step, record
        ``requeued``, and hand submitit a fresh copy of this run to requeue."""
        import submitit


        thread = _RUNTIME.get("thread")
        print("xtc: time-limit (or preemption) signal: stopping the run at its next saved "
              "step, then requeueing it", flush=True)
        _RUNTIME["interrupted"] = _RUNTIME.get("interrupted") or "time-limit signal"
        if thread is not None and thread.is_alive():
            _signal_children(signal.SIGTERM)
            thread.join(max(5.0, float(os.environ.get("XTC_SLURM_STOP_WAIT_S", "45"))))
        out = Path(self.task["out_dir"])
        record = _RUNTIME.get("record") or {}
        if record.get("status") != "ok":  # else it finished meanwhile; the requeue returns it
            write_status(out, {**record, **_record(self.task, "requeued",
                                                     job_id=_RUNTIME.get("job_id")),
                                "error": "time-limit signal: training stopped after saving "
                                         "checkpoints/last.pt; requeued, it resumes from it"})
        return submitit.helpers.DelayedSubmission(SlurmRun(self.task, self.threads),
                                                  *args, **kwargs)


def _usr_signal() -> signal.Signals:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _signal_children(sig: int) -> None:
    """Send ``sig`` to this process's children (the notebook's kernel)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            try:
                os.kill(int(stat.parent.name), sig)
            except OSError:
                pass

