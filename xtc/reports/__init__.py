"""Reports: presets and sweeps run headless through papermill, with their bookkeeping and
``reports/index.html``; the top layer, beside :mod:`xtc.cli`.

A *plan* (a preset in ``configs/reports/`` or a sweep file in ``configs/sweeps/``) lists
training runs of ``notebooks/02_train.ipynb`` (``runs:`` explicitly, or ``grid:`` as a
cartesian product) with fixed ``parameters:``, then ``analysis:`` notebooks (03, 04, 90)
whose parameters refer to runs as ``$runs/<run-name>`` (``$runs`` alone: the plan's folder).
Each run executes into ``<reports_dir>/<plan>/<run>/`` (executed .ipynb, .html,
results.json, status.json).

The stages, each importing only from those before it:

* :mod:`~xtc.reports.notebooks`: execute one notebook (papermill, nbconvert to HTML).
* :mod:`~xtc.reports.runs`: one run's bookkeeping (done or not, attempts moved aside, the
  plan folder's lock, status.json).
* :mod:`~xtc.reports.index`: ``reports/index.html`` over every plan folder.
* :mod:`~xtc.reports.executors`: where training runs execute (local processes or a Slurm
  job array through submitit).
* :mod:`~xtc.reports.plan`: read and check a plan, expand it into named runs.
* :mod:`~xtc.reports.sweep`: run a plan end to end.
"""

from __future__ import annotations

from xtc.reports.index import build_index
from xtc.reports.notebooks import ExecutionFailed, check_kernel, execute, to_html
from xtc.reports.plan import (PRESETS_DIR, SUMMARY_NOTEBOOK, TRAIN_NOTEBOOK, expand_runs,
                              list_presets, load_plan, notebook_parameters, run_name)
from xtc.reports.runs import ATTEMPTS, STATUS, PlanLocked, plan_lock
from xtc.reports.sweep import run_plan, run_preset, run_sweep

__all__ = ["ATTEMPTS", "PRESETS_DIR", "STATUS", "SUMMARY_NOTEBOOK", "TRAIN_NOTEBOOK",
           "ExecutionFailed", "PlanLocked", "build_index", "check_kernel", "execute",
           "expand_runs", "list_presets", "load_plan", "notebook_parameters", "plan_lock",
           "run_name", "run_plan", "run_preset", "run_sweep", "to_html"]
