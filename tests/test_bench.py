"""The benchmarks run and print the JSON their README promises (tiny sizes: the numbers of a
--quick run mean nothing; bench/RESULTS.md holds real ones)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json",
                           *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_train_step_benchmark_reports_the_issue_keys():
    out = _run("train_step.py")
    for key in ("ms_per_step", "images_per_s", "flops_per_step", "achieved_flops",
                "peak_bf16_flops", "peak_fp32_flops", "fraction_of_bf16_peak",
                "baseline_ms_per_step", "speedup_vs_baseline"):
        assert isinstance(out[key], (int, float)) and out[key] > 0, key
    # one backward of the sum and the authors' two backward passes give the same gradients
    assert out["gradient_check"]["equal"]


@pytest.mark.slow
def test_the_device_check_script_runs_every_benchmark(tmp_path):
    """bench/device_check.sh (what a session lent a GPU runs) in its QUICK mode: every
    benchmark exits 0 and writes its JSON where the device tool collects it."""
    done = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh")], capture_output=True,
                          text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "QUICK": "1", "PYTHON": sys.executable,
                               "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stdout + (tmp_path / "log.txt").read_text()[-3000:]
    out = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(out) == {"epoch", "train_step", "eval", "data", "scaling"}
    assert out["eval"]["agreement_ok"] and out["eval"]["compiled"]["agrees"]
    assert out["epoch"]["steps"] * out["epoch"]["config"]["batch_size"] == out["epoch"]["images"]
    assert out["epoch"]["epoch_s"] > 0 and out["epoch"]["meets_target"] is None  # no GPU here
    assert out["data"]["ratio"] > 0 and out["train_step"]["gradient_check"]["equal"]
    assert all(row["ms_per_step"] > 0 for row in out["scaling"]["rows"])


@pytest.mark.slow
def test_precision_benchmark_compares_bf16_with_fp32_over_seeds():
    out = _run("precision.py", "--seeds", "2")
    assert set(out["runs"]) == {"fp32", "bf16"}
    assert all(len(seeds) == 2 for seeds in out["runs"].values())
    miou = out["metrics"]["miou"]
    assert miou["agree"] == (miou["abs_diff_of_means"] <= miou["seed_spread"])
    assert out["all_agree"] == all(m["agree"] for m in out["metrics"].values())
