"""Device choice, seeding, provenance and the repository's folders: the facts a run needs to be
repeatable, and where it reads and writes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import random
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from xtc.errors import ConfigError

# the repository: configs/, notebooks/, runs/ (notebooks resolve files through it, not the cwd)
REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR_ENV = "XTC_RUNS_DIR"
_PACKAGES = ("torch", "torchvision", "timm", "kornia", "numpy", "papermill", "nbval")


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit CUDA request without CUDA fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but this machine has no CUDA device; "
                          f"use train.device=auto or cpu")
    return device


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. run seed, epoch, sample index)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: seed python/numpy from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """x86 CPUs with bf16 instructions (avx512_bf16 or AMX), where bf16 autocast is faster
    than fp32; without them oneDNN emulates bf16, usually slower than fp32."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively (CUDA with bf16 support,
    Ampere and later; a CPU per :func:`cpu_has_native_bf16`), else ``fp32``. bf16 autocast
    matched fp32 within the seed spread on synthetic-quick (bench/precision.py)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (or ``auto`` resolves to it), otherwise a no-op context."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout xtc runs from (``+dirty`` if it has changes), or None."""
    root = Path(path or Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "xtc"],
                               check=True, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


def package_versions() -> dict[str, str | None]:
    versions = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(device: torch.device | None = None) -> dict:
    """What results.json records about where and with what a run was made."""
    device = device or choose_device("auto")
    info = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
    }
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return info


# --------------------------------------------------------------------------- folders
def repo_path(*parts: str) -> Path:
    """Absolute path of ``parts`` inside the xtc repository (``configs/``, ``runs/``, ...).

    Notebooks run from ``notebooks/`` (nbval, JupyterLab) or anywhere (papermill), so they
    resolve repository files through the package location instead of the working directory.
    An absolute path in ``parts`` is returned unchanged.
    """
    return (REPO_ROOT.joinpath(*parts) if parts else REPO_ROOT).resolve()


def runs_root() -> Path:
    """Where notebooks write their runs and look for earlier ones by default: the
    ``XTC_RUNS_DIR`` environment variable if set (the test suite points it at a temporary
    folder), else the repository's git-ignored ``runs/``."""
    return Path(os.environ[RUNS_DIR_ENV]) if os.environ.get(RUNS_DIR_ENV) else repo_path("runs")


def output_dir(out_dir: str | Path | None = None, name: str = "notebook") -> Path:
    """Folder a notebook writes into, created if needed.

    ``None`` (the notebooks' default) means a fresh ``<runs_root()>/<name>/<timestamp>``
    folder, so re-running a notebook never collides with an earlier run; a given path is used
    as is (relative to the working directory).
    """
    import time

    if out_dir is None:
        stamp, parent = time.strftime("%Y%m%d-%H%M%S"), runs_root() / name
        out_dir, suffix = parent / stamp, 1
        while out_dir.exists():  # two runs in the same second
            out_dir, suffix = parent / f"{stamp}-{suffix}", suffix + 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
