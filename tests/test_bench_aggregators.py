"""bench/aggregators.py (step time and peak memory of gradient aggregation against the
scalarised step, for 2, 4, 8 and 9 objectives) prints the JSON its docstring promises: every
setup, every registered aggregator and the Gramian-engine path, finite ratios to ``none``, the
(K + 1)x target and the memory block. --quick: tiny sizes, the numbers mean nothing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPS = {"K2-tasks": 2, "K4-terms": 4, "K8-terms-5edges": 8, "K9-terms-6edges": 9}


@pytest.mark.slow
def test_aggregators_benchmark_reports_every_setup_and_aggregator_with_finite_ratios():
    from xtc.losses.aggregation import AGGREGATORS

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "aggregators.py"), "--quick",
                           "--json", "--repeats", "1"], capture_output=True, text=True,
                          timeout=1800, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["failures"] == [], out["failures"]
    assert {name: s["K"] for name, s in out["setups"].items()} == SETUPS
    expected = {"none", *AGGREGATORS.names(), "upgrad-autogram"}
    for name, s in out["setups"].items():
        assert len(s["objectives"]) == s["K"] and s["target_ratio"] == s["K"] + 1, name
        assert set(s["candidates"]) == expected, name
        for cand, v in s["candidates"].items():
            for key in ("ms_per_step", "ratio_to_none", "ratio_of_medians_to_none",
                        "cpu_ms_per_step", "cpu_ratio_to_none", "step_mb_ratio_to_none",
                        "peak_mb_ratio_to_none"):
                assert isinstance(v[key], float) and math.isfinite(v[key]) and v[key] > 0, \
                    (name, cand, key, v.get(key))
            assert len(v["times_ms"]) == out["repeats"] == 1
            assert v["memory"]["peak_mb"] >= v["memory"]["resident_mb"] > 0, (name, cand)
            assert isinstance(v["within_target"], bool) or cand == "none"
        assert s["candidates"]["none"]["ratio_to_none"] == 1.0
        engine = s["gramian_engine"]
        assert engine["faster"] in ("autojac", "autogram")
        # both engines give UPGrad's direction on the encoder from the same weights and batch
        assert engine["first_step_encoder_grad_cosine"] > 0.999, (name, engine)
    assert isinstance(out["target"]["met"], bool) and isinstance(out["target"]["over"], list)
    assert set(out["gramian_engine"]["faster_per_setup"]) == set(SETUPS)
    assert out["memory_measure"]["what"] and out["config"]["quick"] is True
