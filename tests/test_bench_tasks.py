"""bench/tasks.py (training-step cost against the number of tasks and transfer edges) prints
the JSON its README section promises. --quick: tiny sizes, the numbers mean nothing;
bench/RESULTS.md holds real ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = {"mtl-2task": 0, "xtc-2task": 2, "mtl-3task": 0, "xtc-3task": 6,
                  "xtc-3task-4edges": 4}  # name -> transfer edges


@pytest.mark.slow
def test_tasks_benchmark_reports_every_configuration_and_the_before_after_check():
    # --baseline-src ROOT: the before/after workers both run this tree, so they must agree
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tasks.py"), "--quick", "--json",
                           "--baseline-src", str(ROOT)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    confs = out["configurations"]
    assert {name: c["edges"] for name, c in confs.items()} == CONFIGURATIONS
    for name, c in confs.items():
        assert c["ms_per_step"] > 0 and c["ms_per_step_min"] > 0, name
        assert len(c["times_ms"]) == out["repeats"] and c["ratio_to_xtc_2task"] > 0, name
        p, f = c["params"], c["flops"]
        assert set(p["decoders"]) == set(c["tasks"]) and set(p["transfer"]) == set(c["transfers"])
        assert p["encoder"] > 0 and all(n > 0 for n in p["transfer"].values()), name
        # the whole forward = encoder + decoders + each transfer net on the direct predictions
        assert f["model_forward"] == f["direct_forward"] + f["transfer_forward"], name
        assert f["step_forward_backward"] > f["model_forward"], name
    assert confs["xtc-2task"]["ratio_to_xtc_2task"] == 1.0
    assert (confs["xtc-2task"]["flops"]["direct_forward"]
            == confs["mtl-2task"]["flops"]["model_forward"])
    # each edge's net has the same size up to its in/out channels: 6 edges cost ~3x 2 edges
    ratio = confs["xtc-3task"]["flops_ratio_to_xtc_2task"]["transfer_forward"]
    assert 2.7 < ratio < 3.3, ratio
    assert 1.8 < confs["xtc-3task-4edges"]["flops_ratio_to_xtc_2task"]["transfer_forward"] < 2.2

    b = out["baseline"]
    assert b["old_ms_per_step"] > 0 and b["new_ms_per_step"] > 0 and b["ratio_new_over_old"] > 0
    assert len(b["old_times_ms"]) == len(b["new_times_ms"]) == b["rounds"]
    for worker in b["workers"].values():  # the two-task step: no normals in its batch
        assert worker["batch_keys"] == ["depth_mask", "depth_target", "image", "seg_target"]
    assert b["same_first_losses"] and b["first_terms_new"] == b["in_process_first_terms"]
