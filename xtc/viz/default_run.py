"""The run a notebook or the app shows when the user gives none.

A first picture must show the method working, so the fallback is never a 4-step toy: it is
the demo's trained ``xtc`` consistency run when ``make demo`` has made it, else the newest
run trained from ``configs/quickstart.yaml`` (by ``00_quickstart``), else that config
trained now (about a minute on a 2-core CPU, bench/RESULTS.md section 9; its test metrics
and their margin over the constant predictors are checked in ``tests/test_quickstart.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

QUICKSTART_CONFIG = "configs/quickstart.yaml"
DEMO_RUN = "reports/demo/xtc-consistency-s0"  # configs/reports/demo.yaml names it so
QUICKSTART_NAME = "00_quickstart"  # the runs_root() folder 00_quickstart trains into


def demo_run() -> Optional[Path]:
    """The demo's xtc consistency run, when ``make demo`` has finished it."""
    from xtc.runtime import repo_path

    run = repo_path(DEMO_RUN)
    return run if (run / "checkpoints" / "best.pt").is_file() else None


def quickstart_config(path: str = QUICKSTART_CONFIG, overrides: Optional[dict] = None,
                      **shortcuts):
    """The config at ``path`` (relative to the repository root; default
    ``configs/quickstart.yaml``) with ``overrides`` ({"section.key": value}) and shortcuts
    (``seed=1``) on top; shortcuts whose value is None keep the config's value."""
    import xtc.config
    from xtc.runtime import repo_path

    given = {k: v for k, v in shortcuts.items() if v is not None}
    return xtc.config.load(repo_path(path), overrides or {}, **given)


def newest_quickstart_run() -> Optional[Path]:
    """The newest finished run under ``<runs_root>/00_quickstart/``, if any."""
    from xtc.runtime import runs_root
    from xtc.viz.explorer import find_runs

    root = runs_root() / QUICKSTART_NAME
    runs = [r for r in find_runs(root) if (r / "checkpoints" / "best.pt").is_file()] \
        if root.is_dir() else []
    return max(runs, key=lambda r: (r / "checkpoints" / "best.pt").stat().st_mtime, default=None)


def first_run(name: str, train: bool = True, progress: bool = False) -> Optional[Path]:
    """:func:`demo_run`, else :func:`newest_quickstart_run`, else (``train``) the quickstart
    config trained now into ``<runs_root>/<name>/<timestamp>/quickstart``; None when there
    is no run and ``train`` is False."""
    found = demo_run() or newest_quickstart_run()
    if found is not None or not train:
        return found
    import xtc.train
    from xtc.runtime import output_dir

    return xtc.train.fit(quickstart_config(), out_dir=output_dir(None, name) / "quickstart",
                         progress=progress).out_dir


def best_run(runs: Sequence[str | Path], split: str = "val") -> Path:
    """The run among ``runs`` (folders with ``results.json``) whose ``split`` metrics are best
    by the task-weighted Δm% against the candidates' mean (:func:`xtc.selection.score` with
    ``delta_m``): every task counts equally, whatever its units. Chosen on ``val`` by
    default, never silently on test; the demo preset shows the best xtc run this way."""
    import xtc.results
    import xtc.selection
    from xtc.viz.explorer import resolve_run

    folders = [resolve_run(r) for r in runs]
    if not folders:
        raise ValueError("best_run: no runs given; pass run folders with results.json")
    metrics = []
    for folder in folders:
        try:
            metrics.append(xtc.results.read(folder)["metrics"][split])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"best_run: {folder / 'results.json'} has no {split} metrics "
                             f"({exc}); pass finished runs") from None
    names = {k for m in metrics for k, v in m.items() if isinstance(v, (int, float))}
    mean = {k: sum(m[k] for m in metrics if k in m) / sum(k in m for m in metrics)
            for k in names}
    from xtc.tasks import delta_m_metrics

    tasks = [t for t, ms in delta_m_metrics().items() if any(m in names for m in ms)]
    scores = [xtc.selection.score("delta_m", m, mean, tasks) for m in metrics]
    return folders[min(range(len(folders)), key=scores.__getitem__)]


def pick_run(run_dir, name: str) -> Path:
    """What a notebook's ``run_dir`` parameter means: None -> :func:`first_run`; a list of
    run folders -> :func:`best_run` on val; one folder -> that folder (resolved)."""
    from xtc.viz.explorer import resolve_run

    if run_dir is None:
        return first_run(name)
    if isinstance(run_dir, (list, tuple)):
        return best_run(run_dir)
    return resolve_run(run_dir)
