"""The set-up files agree with each other: one list of dependencies, two formats."""

import re
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


def test_makefile_pins_torch_as_the_machine_needs():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in makefile
    for target in ("setup:", "demo: setup", "test: setup", "lab: setup"):
        assert target in makefile
    assert "--ip 127.0.0.1" in makefile and "IdentityProvider.token" in makefile


def test_torch_cpu_takes_the_same_pins_from_the_cpu_wheel_index():
    """`make setup TORCH=cpu` (dry run: the CPU index is not reachable from CI) installs the
    pinned pair from PyTorch's CPU-only index; the default install does not use it."""
    import subprocess

    def dry(*args):
        return subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent", *args], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    cpu = [line for line in dry("TORCH=cpu").splitlines() if "torch==" in line]
    default = [line for line in dry().splitlines() if "torch==" in line]
    assert len(cpu) == len(default) == 1
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1" in cpu[0]
    assert "--index-url" not in default[0] and "torch==2.14.1 torchvision==0.29.1" in default[0]
    readme = " ".join((ROOT / "README.md").read_text().replace("**", "").split())
    assert "make setup TORCH=cpu" in readme and "not tested on CI" in readme


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_import_xtc_stays_light():
    import subprocess
    import sys

    code = ("import sys, xtc; import xtc.config, xtc.results; "
            "heavy = [m for m in ('plotly', 'ipywidgets', 'papermill', 'matplotlib', 'timm') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
