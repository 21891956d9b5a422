"""The set-up files agree with each other: one list of dependencies, two formats."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_list_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for group in project["optional-dependencies"].values() for r in group}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    assert {_name(r) for r in pip_section} | conda == declared


def _dry_run(target: str, *args: str, makefile: Path | None = None) -> list[str]:
    """The commands ``make -n TARGET`` in the repository root would run (none is run; only
    ``$(shell ...)`` expansions are). ``VENV=/nonexistent``: the set-up steps always show."""
    makefile = makefile or ROOT / "Makefile"
    # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL reach this make, which then
    # prints "make[1]: Entering directory" lines around its commands: run it as a top level.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(makefile), target,
                           "VENV=/nonexistent", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"make -n {target}: rc {proc.returncode}: {proc.stderr}"
    return proc.stdout.splitlines()


def _readme_commands() -> dict[str, str]:
    """{target: what README.md says it runs} for the commands of its "Two commands" block,
    from its lines such as "`make demo` runs `xtc report --preset demo`"."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## Two commands\s*```bash\n(.*?)^```", readme, re.S | re.M)
    assert block, "README.md has no '## Two commands' bash block"
    targets = re.findall(r"^make (\S+)", block.group(1), re.M)
    says = dict(re.findall(r"`make ([\w-]+)` runs `([^`]+)`", " ".join(readme.split())))
    assert set(targets) <= set(says), f"README.md does not say what {targets} run"
    return {target: says[target] for target in targets}


def _line_running(lines: list[str], command: str) -> str | None:
    """The line that runs ``python -m <command>``: the module, then the command's other
    words in order (options the README leaves out, such as ``-q``, may come between)."""
    words = command.split()
    for line in lines:
        tokens = line.split()
        if "-m" in tokens and tokens[tokens.index("-m") + 1:][:1] == words[:1]:
            rest = iter(tokens[tokens.index("-m") + 2:])
            if all(word in rest for word in words[1:]):
                return line
    return None


# What the README's two commands really do: the job's own command line.
JOBS = {"demo": "-m xtc report --preset demo", "test": "-m pytest"}


def test_the_readme_commands_run_the_jobs_they_describe():
    """Each command of the README's "Two commands" block dry-runs (``make -n``): the set-up
    first ("set up .venv, then ..."), then the job the README says it runs."""
    commands = _readme_commands()
    assert set(commands) == set(JOBS), commands
    setup = _dry_run("setup")
    for target, command in commands.items():
        lines = _dry_run(target)
        job = _line_running(lines, command)
        assert job is not None, f"make -n {target} never runs {command!r}: {lines}"
        assert JOBS[target] in job and "/nonexistent/bin/python -m" in job  # the venv's
        assert lines[:len(setup)] == setup and lines.index(job) >= len(setup), lines


def test_makefile_pins_torch_as_the_machine_needs():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in makefile
    setup = _dry_run("setup")
    assert sum("torch==2.14.1 torchvision==0.29.1" in line for line in setup) == 1, setup
    for target in ("demo", "test", "lab"):  # each sets up first
        assert _dry_run(target)[:len(setup)] == setup, target
    jupyter = [line for line in _dry_run("lab") if line.startswith("/nonexistent/bin/jupyter")]
    assert len(jupyter) == 1 and "--ip 127.0.0.1" in jupyter[0], jupyter
    assert "token" not in jupyter[0]  # it travels in JUPYTER_TOKEN, never on a command line
    assert "IdentityProvider.token" in makefile


def test_torch_cpu_takes_the_same_pins_from_the_cpu_wheel_index():
    """`make setup TORCH=cpu` (dry run: the CPU index is not reachable from CI) installs the
    pinned pair from PyTorch's CPU-only index; the default install does not use it."""
    def dry(*args):
        return subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent", *args], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    cpu = [line for line in dry("TORCH=cpu").splitlines() if "torch==" in line]
    default = [line for line in dry().splitlines() if "torch==" in line]
    assert len(cpu) == len(default) == 1
    assert ("--index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1"
            in cpu[0])
    assert "--index-url" not in default[0] and "torch==2.14.1 torchvision==0.29.1" in default[0]
    readme = " ".join((ROOT / "README.md").read_text().replace("**", "").split())
    assert "make setup TORCH=cpu" in readme and "not tested on CI" in readme


def test_ci_runs_the_readme_test_command(tmp_path):
    """``.ci/run`` run with ``make`` and ``apt-get`` replaced by recorders (``make`` as
    ``make -n``): it calls the README's test command, last, and that runs pytest."""
    tests = [f"make {t}" for t, command in _readme_commands().items()
             if command.split()[0] == "pytest"]
    assert len(tests) == 1, _readme_commands()
    shims, log = tmp_path / "bin", tmp_path / "calls.log"
    shims.mkdir()
    for name, then in (("make", f'exec {shutil.which("make")} -n "$@" VENV=/nonexistent'),
                       ("apt-get", "exit 0")):
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{then}\n')
        (shims / name).chmod(0o755)
    ci = ROOT / ".ci" / "run"
    proc = subprocess.run([str(ci)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert [c for c in log.read_text().splitlines() if c.startswith("make")] == tests
    assert _line_running(proc.stdout.splitlines(), "pytest") is not None, proc.stdout
    lines = [line.strip() for line in ci.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == tests[0]  # the last command: its exit status is the script's
    assert "set -euo pipefail" in commands  # and any earlier failure stops it


def test_import_xtc_stays_light():
    import sys

    code = ("import sys, xtc; import xtc.config, xtc.results; "
            "heavy = [m for m in ('plotly', 'ipywidgets', 'papermill', 'matplotlib', 'timm') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
