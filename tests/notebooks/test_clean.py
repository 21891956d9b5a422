"""Every notebook in notebooks/ is committed clean: git holds only what a human wrote.

Valid nbformat 4 JSON, no outputs or execution counts, the first code cell tagged
``parameters`` and holding only literal assignments (papermill injects after it), and no
``def``/``class`` in any cell (notebooks call xtc; they do not define code).
Fix a failure with ``python tools/clean_notebooks.py``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    path = request.param
    json.loads(path.read_text())  # valid JSON before anything else
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return path, nb


def test_outputs_and_counts_are_stripped(notebook):
    path, nb = notebook
    dirty = [i for i, c in enumerate(_code_cells(nb)) if c.outputs or c.execution_count]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; "
                       f"run python tools/clean_notebooks.py")


def test_first_code_cell_is_tagged_parameters(notebook):
    path, nb = notebook
    first = _code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters' for papermill")
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_parameters_are_literal_assignments(notebook):
    path, nb = notebook
    tree = ast.parse(_code_cells(nb)[0].source)
    for node in tree.body:
        assert (isinstance(node, ast.Assign)
                and all(isinstance(t, ast.Name) for t in node.targets)), (
            f"{path.name}: parameters cell line {node.lineno} is not `name = literal`")
        ast.literal_eval(node.value)  # raises ValueError for anything but a literal


def test_no_definitions_in_cells(notebook):
    path, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), (
                f"{path.name}: code cell {i} defines {node.name!r}; move it into the xtc package")


def test_kernelspec_is_python3(notebook):
    path, nb = notebook
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be python3; run python tools/clean_notebooks.py")
