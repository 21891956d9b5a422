"""Checkpoints: written atomically, loaded without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it; model weights live under ``model``.
Loading always uses ``weights_only=True``: a file whose pickle would import or call
arbitrary code is refused instead of run.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file.

    A failure before the rename leaves the previous version of ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (must hold ``model``: a state dict) to ``path`` atomically."""
    if "model" not in payload:
        raise ValueError("a checkpoint payload needs the model state dict under 'model'")
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; refuse files that are missing, truncated or hostile."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a "
                              f"checkpoints/last.pt or best.pt written by `xtc train`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects other than "
                              f"tensors and plain containers, and loading it could run code "
                              f"({str(exc).splitlines()[0]}). Only load checkpoints written "
                              f"by xtc or another source you trust.") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means an unreadable file
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); it "
                              f"is probably truncated or not a torch file: use the other "
                              f"checkpoint (last.pt / best.pt) or retrain") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry; it was not written by "
                              f"xtc (expected a dict with the model state dict under 'model')")
    return payload
