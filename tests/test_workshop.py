"""The workshop material holds together: four notebooks with exercises whose solutions hide
behind a parameter, stripped outputs, each listed in the instructor's guide; with solutions
on they run through (nbval runs them with the defaults, solutions off)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = sorted((ROOT / "notebooks" / "workshop").glob("*.ipynb"))


def _parameters(nb) -> str:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "one papermill parameters cell"
    return cells[0].source


def test_there_are_four_workshop_notebooks_in_teaching_order():
    assert [p.stem[0] for p in WORKSHOP] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_each_notebook_has_exercises_hidden_solutions_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    params = _parameters(nb)
    assert re.search(r"^solutions = False\b", params, re.M)
    assert re.search(r"^out_dir = None\b", params, re.M) and re.search(r"^run_dir = None\b", params, re.M)
    assert any("Exercise" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert sum("if solutions:" in c.source for c in nb.cells if c.cell_type == "code") >= 1
    assert "You will see" in nb.cells[0].source  # the expected output, in words
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip outputs"


def test_the_instructors_guide_lists_every_notebook_with_a_timing():
    guide = (ROOT / "docs" / "workshop.md").read_text()
    for path in WORKSHOP:
        row = next((line for line in guide.splitlines() if f"workshop/{path.stem}" in line), "")
        assert re.search(r"\d+ s", row), f"{path.stem}: no row with a timing in docs/workshop.md"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from xtc import config, train
    from tests.conftest import TINY

    cfg = config.load(None, [*TINY, "train.epochs=1", "train.max_steps_per_epoch=2"])
    return train.fit(cfg, out_dir=tmp_path_factory.mktemp("ws") / "run", progress=False).out_dir


@pytest.mark.slow
@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_each_notebook_runs_with_the_solutions_filled_in(path, tmp_path, tiny_run):
    import papermill

    run = tiny_run
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), cwd=str(path.parent), progress_bar=False,
                               parameters={"run_dir": str(run), "solutions": True,
                                           "out_dir": str(tmp_path / "out")})
    executed = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "not answered yet" not in printed  # the solutions ran, not the fallback
