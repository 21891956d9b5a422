"""results.json: the one channel by which results leave a run or a notebook.

Reports, sweeps, 90_summary and tests read this file; nothing is scraped from notebook
outputs. It is strict JSON (NaN and infinities are written as ``null``) and is written
atomically. This module does not import papermill or any notebook machinery.

Examples:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = write(d, params={"method": "xtc"}, metrics={"miou": 0.5, "bad": float("nan")})
    >>> read(d)["metrics"]
    {'miou': 0.5, 'bad': None}
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from xtc.files import atomic_write
from xtc.errors import MissingFileError, OutputExistsError

FILENAME = "results.json"
SCHEMA_VERSION = 1


def write(out_dir: str | Path, params: dict | None = None, metrics: dict | None = None,
          **sections: Any) -> Path:
    """Write ``out_dir/results.json`` with ``params``, ``metrics`` and any extra sections."""
    from xtc import __version__

    document = {"schema": SCHEMA_VERSION, "xtc_version": __version__,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "params": params or {}, "metrics": metrics or {}, **sections}
    text = json.dumps(_strict(document), indent=2, allow_nan=False)
    return atomic_write(Path(out_dir) / FILENAME, lambda tmp: tmp.write_text(text + "\n"))


def read(path: str | Path) -> dict:
    """Read a results.json (or the one inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; run `xtc train --out DIR` or the "
                               f"02_train notebook to produce it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun the run that wrote it") from None


def is_evaluation(doc: dict) -> bool:
    """Written by ``xtc evaluate`` (``kind: evaluation``; earlier versions: a ``checkpoint``
    and a ``split`` and no training ``history``)."""
    return doc.get("kind") == "evaluation" or (
        "checkpoint" in doc and "split" in doc and "history" not in doc)


def check_evaluation_target(out_dir: str | Path, checkpoint: str | Path, split: str) -> None:
    """Refuse an ``out_dir`` whose results.json ``xtc evaluate`` must not replace.

    The rule: only an earlier evaluation of the same checkpoint (resolved path) on the same
    split may be replaced (re-running an evaluation refreshes its own result). A training
    run's results.json (its history, selected epoch and test metrics cannot be rebuilt from
    one checkpoint), another checkpoint's or split's evaluation, and a file that is not
    valid JSON are refused: each is a result that would otherwise be lost.
    """
    path = Path(out_dir) / FILENAME
    if not path.exists():
        return
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and is_evaluation(doc):
        same = (doc.get("split") == split
                and Path(str(doc.get("checkpoint"))).resolve() == Path(checkpoint).resolve())
        if same:
            return
        what = (f"the evaluation of {doc.get('checkpoint')} on its {doc.get('split')} split")
    elif isinstance(doc, dict) and "history" in doc:
        what = "a training run's results (history, selected epoch, test metrics)"
    elif isinstance(doc, dict):
        what = "results that xtc evaluate did not write"
    else:
        what = "a file that is not results JSON"
    out_dir = Path(out_dir)
    other = (out_dir / f"eval-{split}" if out_dir.name != f"eval-{split}"
             else out_dir.with_name(f"{out_dir.name}-2"))
    raise OutputExistsError(f"{path} already holds {what}; xtc evaluate will not overwrite it: "
                            f"pass another --out folder, e.g. --out {other}")


def _strict(value: Any) -> Any:
    """Make ``value`` strict-JSON: NaN/inf -> None, tuples -> lists, tensors -> numbers."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
