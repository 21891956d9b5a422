"""Strip outputs from notebooks and normalise their metadata, keeping cell tags.

Usage: ``python tools/clean_notebooks.py [NOTEBOOK ...]`` (default: ``notebooks/*.ipynb``).
Clears outputs and execution counts, drops per-cell metadata except ``tags`` (papermill's
``parameters`` tag must survive), gives cells stable ids and sets the notebook kernelspec
to python3, so git holds only what a human wrote (tests/notebooks/test_clean.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def clean(path: Path) -> bool:
    """Clean ``path`` in place; return True when the file changed."""
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags")
        cell["metadata"] = {"tags": tags} if tags else {}
        cell["id"] = f"cell-{i:02d}"
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    nb.nbformat, nb.nbformat_minor = 4, 5
    after = nbformat.writes(nb).rstrip("\n") + "\n"
    if after != before:
        path.write_text(after)
    return after != before


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    paths = [Path(p) for p in argv] or sorted((root / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{'cleaned' if clean(path) else 'clean  '} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
