"""The workshop material holds together: four notebooks in teaching order, each with a
parameters cell papermill can read (``solutions`` and ``out_dir`` among them), exercises whose
learner part is a marked blank with the solution behind ``solutions``, an opening cell that
says the goal, the time and the expected output, stripped outputs, and a row with a timing in
the instructor's guide. With the solutions on they run through (nbval runs them with their
defaults, solutions off)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = sorted((ROOT / "notebooks" / "workshop").glob("*.ipynb"))
GUIDE = ROOT / "docs" / "workshop.md"


def _parameters(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "one papermill parameters cell"
    return cells[0]


def test_there_are_four_workshop_notebooks_in_teaching_order():
    assert [p.stem[0] for p in WORKSHOP] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_the_parameters_cell_has_solutions_and_out_dir_and_papermill_reads_it(path):
    from papermill.translators import PythonTranslator

    cell = _parameters(nbformat.read(path, as_version=4))
    assert re.search(r"^solutions = False\b", cell.source, re.M)
    assert re.search(r"^out_dir = None\b", cell.source, re.M)
    lines = [line for line in cell.source.splitlines() if line.strip()]
    assert all("  # " in line for line in lines), "every parameter has a comment"
    # papermill drops a line it cannot parse (e.g. an "=" in the comment) from -p and
    # --help-notebook
    parsed = [p.name for p in PythonTranslator.inspect(cell)]
    assert parsed == [line.split("=")[0].strip() for line in lines]


@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_the_first_cell_says_goal_time_and_expected_output(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    for part in ("**Goal.**", "**Time.**", "**You will see.**"):
        assert part in first.source, f"{path.stem}: no {part} in the first cell"
    assert re.search(r"\d+ min", first.source)


@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_each_exercise_has_a_marked_blank_and_a_hidden_solution(path):
    cells = nbformat.read(path, as_version=4).cells
    exercises = [i for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and re.search(r"^#+ .*Exercise \d", c.source, re.M)]
    assert 1 <= len(exercises) <= 3
    for i in exercises:
        answer = next(c for c in cells[i + 1:] if c.cell_type == "code")
        assert re.search(r"^\w+(, \w+)* = None(, None)*  # TODO", answer.source, re.M), (
            f"{path.stem}: the code cell after exercise {cells[i].source.splitlines()[0]!r} "
            f"has no blank")
        assert "if solutions:" in answer.source
        assert "not answered yet" in answer.source  # and goes on without an answer


@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                "strip outputs: python tools/clean_notebooks.py notebooks/workshop/*.ipynb"


def test_the_instructors_guide_lists_every_notebook_with_a_timing():
    guide = GUIDE.read_text()
    for path in WORKSHOP:
        row = next((line for line in guide.splitlines()
                    if line.startswith("|") and f"workshop/{path.stem}" in line), "")
        assert re.search(r"\d+ s", row), (
            f"{path.stem}: no schedule row with a timing in docs/workshop.md")
    assert "OMP_NUM_THREADS=1" in guide  # the timing command is recorded


def test_the_notebooks_readme_lists_every_workshop_notebook():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for path in WORKSHOP:
        assert f"workshop/{path.name}" in readme


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny trained xtc run the notebooks are pointed at (run_dir), so the test does not
    depend on make demo or 00_quickstart having run."""
    from xtc import config, train
    from tests.conftest import TINY

    cfg = config.load(None, [*TINY, "train.epochs=1", "train.max_steps_per_epoch=2"])
    return train.fit(cfg, out_dir=tmp_path_factory.mktemp("ws") / "run", progress=False).out_dir


@pytest.mark.slow
@pytest.mark.parametrize("path", WORKSHOP, ids=lambda p: p.stem)
def test_each_notebook_runs_with_the_solutions_filled_in(path, tmp_path, tiny_run):
    import papermill
    from papermill.translators import PythonTranslator

    cell = _parameters(nbformat.read(path, as_version=4))
    names = {p.name for p in PythonTranslator.inspect(cell)}
    wanted = {"run_dir": str(tiny_run), "solutions": True, "out_dir": str(tmp_path / "out"),
              "train_steps": 2}  # notebook 2 trains its own runs: 2 steps each
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), cwd=str(path.parent), progress_bar=False,
                               parameters={k: v for k, v in wanted.items() if k in names})
    executed = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "not answered yet" not in printed  # the solutions ran, not the fallback
    assert "No trained run found" not in printed  # the given run was used
    assert any("image/png" in o.get("data", {}) for c in executed.cells
               for o in c.get("outputs", [])), "no figure"
