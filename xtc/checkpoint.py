"""Checkpoints: written atomically, loaded without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it; model weights live under ``model``.
Loading always uses ``weights_only=True``: a file whose pickle would import or call
arbitrary code is refused instead of run. Before unpickling, the zip's declared sizes are
checked (:func:`check_size`), so a small file cannot make ``torch.load`` allocate gigabytes.

:func:`save` stamps ``schema`` and ``xtc_version`` into the payload; :func:`config_of`
uses the schema to tell a key that an older xtc did not save (``ADDED_KEYS``) from a key
that is missing because the file was edited or truncated.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from xtc.errors import CheckpointError, ConfigError  # CheckpointError: re-exported
from xtc.files import atomic_write  # noqa: F401  (re-exported: checkpoint.atomic_write)

SCHEMA = 6  # checkpoints without a "schema" entry were written before the stamp: schema 1

MAX_BYTES_ENV = "XTC_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 8 << 30  # ~20x the paper model's last.pt with Adam state (~0.4 GB)
BOMB_RATIO = 100  # torch.save stores members uncompressed: a real checkpoint is ~1x its file
BOMB_FLOOR = 256 << 20  # ... and below this a high ratio costs little memory: allow it

# What `xtc evaluate` needs, and what `xtc train --resume` needs, from a payload.
EVAL_ENTRIES = ("model", "config", "num_classes")
RESUME_ENTRIES = ("model", "criterion", "optimizer", "scheduler", "config", "epoch", "step",
                  "partial", "history", "best_epoch", "best_score")

# Config keys introduced after checkpoint schema 1, that a checkpoint of an older schema may
# lack: key -> (first schema that saves it, the value that reproduces what the older xtc did;
# a callable gets the saved config tree). Every other missing key is an error. A key added
# to xtc.config later needs an entry here, with SCHEMA bumped.
ADDED_KEYS: dict[str, tuple[int, Any]] = {
    # 85cb60d: protocols, seeds that vary the split, single-task weighting, SSIM range
    "train.protocol": (2, "xtc"),  # earlier runs selected on val and tested once
    "data.split_seed": (2, lambda tree: tree["data"]["seed"]),  # the split followed data.seed
    "loss.ssim_max_val": (2, 1.0),  # SSIM's range was fixed at 1
    "loss.single_task_weighting": (2, lambda tree: tree["loss"]["weighting"]),  # stl-* used it
    "train.max_skipped_fraction": (2, 1.0),  # nonfinite=skip had no cap
    # opt-in features added before 85cb60d (not in the oldest checkpoints): off, as then
    "data.resident": (2, False),
    "optim.name": (2, "adam"),
    "optim.momentum": (2, 0.0),
    "train.sync_batchnorm": (2, True),
    "train.channels_last": (2, False),
    "train.nonfinite": (2, "stop"),
    "train.checkpoint_every": (2, 0),
    "train.grad_cosine_every": (2, 0),
    "model.transfer_detach_input": (2, False),
    # schema 3: finished runs drop the optimizer state they no longer need (issue 11)
    "train.keep_checkpoints": (3, "resumable"),  # earlier runs kept last.pt whole
    # schema 4: any set of tasks and a transfer graph (issue 12); earlier runs had the paper's
    "model.tasks": (4, lambda tree: ["seg", "depth"]),
    "model.transfers": (4, None),  # every ordered pair: seg2depth, depth2seg
    "loss.lambdas": (4, lambda tree: {}),  # lambda1 (seg) and lambda2 (depth)
    "loss.normal_loss": (4, "cosine"),
    # schema 5: gradient aggregation and FAMO (issue 13); earlier runs had one backward
    "loss.aggregator": (5, "none"),
    "loss.aggregator_args": (5, lambda tree: {}),
    "loss.objectives": (5, "tasks"),
    "loss.famo_lr": (5, 0.025),
    "loss.famo_weight_decay": (5, 1e-3),
    "train.grad_stats_every": (5, 0),
    # schema 6: the Gramian engine for aggregators (issue 13); earlier runs held the Jacobian
    "loss.aggregator_engine": (6, "autojac"),
}


# --------------------------------------------------------------------------- writing


def save(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (must hold ``model``: a state dict) to ``path`` atomically.

    Written through a Python file object: a full disk then raises ``OSError(ENOSPC)``,
    where torch's own path writer raises an opaque ``RuntimeError``.
    """
    from xtc import __version__

    if "model" not in payload:
        raise ValueError("a checkpoint payload needs the model state dict under 'model'")
    payload = {"schema": SCHEMA, "xtc_version": __version__, **payload}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)

    return atomic_write(path, write)


# --------------------------------------------------------------------------- reading


def load(path: str | Path, map_location: str | torch.device = "cpu",
         require: tuple[str, ...] = ("model",), max_bytes: int | None = None) -> dict[str, Any]:
    """Read a checkpoint safely; refuse files that are missing, truncated, hostile, that
    would expand past the size bound (:func:`check_size`), or lack an entry of ``require``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a "
                              f"checkpoints/last.pt or best.pt written by `xtc train`")
    check_size(path, max_bytes)
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
    missing = [name for name in require if name not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {', '.join(map(repr, missing))} "
                              f"entr{'y' if len(missing) == 1 else 'ies'}: it was not written "
                              f"by `xtc train` (whose checkpoints hold {', '.join(require)}) "
                              f"or was edited; use a checkpoints/last.pt or best.pt of a run")
    return payload


def max_bytes_allowed(max_bytes: int | None = None) -> int:
    """The bound: the argument, else ``$XTC_MAX_CHECKPOINT_BYTES``, else 8 GiB."""
    if max_bytes is not None:
        return int(max_bytes)
    raw = os.environ.get(MAX_BYTES_ENV)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_BYTES_ENV}={raw!r} must be a positive number of bytes, "
                          f"e.g. {MAX_BYTES_ENV}=17179869184 for 16 GiB; unset it for 8 GiB")
    return value


def check_size(path: str | Path, max_bytes: int | None = None) -> None:
    """Refuse a checkpoint whose zip members would expand past the bound, before unpickling.

    ``torch.load`` allocates every member at its declared uncompressed size. The rule:
    refuse when that total exceeds ``max_bytes`` (:func:`max_bytes_allowed`: 8 GiB, ~20x
    the paper model's checkpoint with optimiser state), or when it exceeds both
    ``BOMB_RATIO`` (100x) the file's size and ``BOMB_FLOOR`` (256 MiB). torch.save writes
    members uncompressed (a real checkpoint expands ~1x) and float weights compress ~1.1x,
    so 100x only comes from a crafted zip bomb; the floor keeps tiny, legitimately
    compressible files (an all-zero buffer re-zipped) loadable. Non-zip (legacy) torch files
    are raw pickles that cannot expand, and a damaged zip is left to torch.load to report.
    """
    path = Path(path)
    limit = max_bytes_allowed(max_bytes)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    size = path.stat().st_size
    if total > limit:
        raise CheckpointError(f"checkpoint {path} would expand to {_human(total)} in memory "
                              f"({_human(size)} on disk), over the {_human(limit)} limit for "
                              f"loading a checkpoint; if it is genuine, raise the limit with "
                              f"{MAX_BYTES_ENV}=BYTES")
    if total > BOMB_FLOOR and total > BOMB_RATIO * max(size, 1):
        raise CheckpointError(f"checkpoint {path} is {_human(size)} on disk but would expand "
                              f"to {_human(total)} ({total / max(size, 1):.0f}x); torch.save "
                              f"does not compress, so this is a zip bomb or a re-packed file, "
                              f"not an xtc checkpoint: refused. Use the checkpoints/last.pt or "
                              f"best.pt that `xtc train` wrote")


def check_finite(payload: dict[str, Any], path: str | Path,
                 entries: tuple[str, ...] = ("model", "criterion")) -> None:
    """Refuse weights holding NaN/inf: a diverged run's metrics would be meaningless (an
    mIoU of chance, a NaN error) and look like a result. Counts tensors and values."""
    bad = []
    for entry in entries:
        state = payload.get(entry)
        if not isinstance(state, dict):
            continue
        tensors = [(name, t) for name, t in state.items()
                   if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex())]
        counts = [(name, int((~torch.isfinite(t)).sum())) for name, t in tensors]
        counts = [(name, n) for name, n in counts if n]
        if counts:
            values = sum(n for _, n in counts)
            bad.append(f"{len(counts)} of the {len(tensors)} tensors in '{entry}' "
                       f"({values} values, e.g. {counts[0][0]})")
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite (NaN/inf) weights: "
                              f"{'; '.join(bad)}; the run diverged before it was saved, so it "
                              f"has no meaningful metrics: evaluate an earlier checkpoint "
                              f"(best.pt) or retrain with a lower optim.lr")


def config_of(payload: dict[str, Any], path: str | Path, overrides: list | dict | None = None):
    """The :class:`xtc.config.Config` a checkpoint was trained with, plus ``overrides``.

    Refuses (naming the keys, the writer and the fix) a saved config with a key missing or
    unknown to this version: ``config.load`` would fill a missing key with today's default,
    silently evaluating another configuration than the one trained. Keys in ``ADDED_KEYS``
    that the checkpoint's schema predates are filled with the value the older xtc used.
    """
    from xtc import config

    path = Path(path)
    tree = payload.get("config")
    if not isinstance(tree, dict):
        raise CheckpointError(f"checkpoint {path} has no 'config' entry (a dict of sections): "
                              f"it was not written by `xtc train`, which saves the config; use "
                              f"a checkpoints/last.pt or best.pt of a run")
    schema = payload.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise CheckpointError(f"checkpoint {path} has schema {schema!r}, not a number: it was "
                              f"edited or not written by xtc; use a checkpoint of a run")
    writer = (f"xtc {payload['xtc_version']}, checkpoint schema {schema}"
              if "xtc_version" in payload else f"an xtc before checkpoint schema {SCHEMA}")
    expected = set(config.flatten(config.Config()))
    saved = {f"{section}.{key}" for section, values in tree.items()
             if isinstance(values, dict) for key in values}
    bad_sections = sorted(s for s, v in tree.items() if not isinstance(v, dict))
    unknown = sorted(saved - expected)
    if bad_sections or unknown:
        what = (f"sections that are not mappings {bad_sections}" if bad_sections
                else f"keys this xtc does not know {unknown}")
        raise CheckpointError(f"checkpoint {path}'s config has {what} (written by {writer}); "
                              f"evaluate it with the xtc version that wrote it")
    missing = sorted(expected - saved)
    refused = [k for k in missing if k not in ADDED_KEYS or ADDED_KEYS[k][0] <= schema]
    if refused:
        raise CheckpointError(f"checkpoint {path}'s config lacks {refused} (written by {writer});"
                              f" xtc will not guess them from today's defaults: retrain with "
                              f"this version, or add the keys to the checkpoint's 'config' "
                              f"entry and re-save it")
    tree = {section: dict(values) for section, values in tree.items()}
    for key in missing:
        section, _, name = key.partition(".")
        fill = ADDED_KEYS[key][1]
        tree.setdefault(section, {})[name] = fill(tree) if callable(fill) else fill
    try:
        config.load(tree)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}'s saved config is not valid here ({exc}); "
                              f"it was edited or written by another xtc ({writer})") from None
    return config.load(tree, overrides)


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
