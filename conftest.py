"""Test runs write their run folders (nbval notebooks, papermill, the browser test's kernel)
into a temporary ``XTC_RUNS_DIR``, removed at the end, instead of the repository's ``runs/``:
a model checkpoint is ~140 MB, so every ``make test`` would otherwise leave gigabytes behind.
Kernels and subprocesses inherit the variable from this process."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWNED = "_xtc_test_runs_dir"
# `pytest --doctest-modules xtc` imports every module; the entry point would run the CLI
collect_ignore = ["xtc/__main__.py"]


@pytest.fixture(autouse=True, scope="session")
def _doctest_tiny(doctest_namespace):
    """Docstring examples get ``tiny``: configs/tiny.yaml on the CPU (seconds to train)."""
    from xtc import config

    doctest_namespace["tiny"] = config.load(Path(__file__).parent / "configs" / "tiny.yaml",
                                            {"train.device": "cpu"})


def pytest_configure(config):
    if not os.environ.get("XTC_RUNS_DIR"):  # a caller's own choice wins
        path = tempfile.mkdtemp(prefix="xtc-test-runs-")
        os.environ["XTC_RUNS_DIR"] = path
        setattr(config, _OWNED, path)


def pytest_unconfigure(config):
    path = getattr(config, _OWNED, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("XTC_RUNS_DIR", None)
