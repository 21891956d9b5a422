#!/usr/bin/env bash
# Issue #4's GPU checks as one prepared run, for a session that is lent a GPU machine (whose
# device time is short: this stays under 9 minutes, each benchmark under its own limit).
#
#   bash bench/device_check.sh fetch     # HERE, once: kornia's wheels into .whl/ (git-ignored);
#                                        # the GPU image has torch and timm but not kornia
#   bash bench/device_check.sh           # THERE, from the repository root, carrying .whl:
#                                        #   run(command="bash bench/device_check.sh",
#                                        #       carry=[".whl"], timeout_s=600)
#
# Every benchmark's JSON lands in $OUT (the device tool's folder; default bench/results/gpu),
# with one log.txt for all of their progress output. QUICK=1 passes --quick to every script
# and skips the compiled epoch (a smoke test of this file on any machine); PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KORNIA=(kornia==0.9.0 kornia_rs==0.2.0)

if [[ "${1:-}" == "fetch" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${KORNIA[@]}"
fi

OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
if ! "$PYTHON" -c "import kornia" 2> /dev/null; then
    if ! ls .whl/kornia*.whl > /dev/null 2>&1; then
        echo "kornia is not installed and .whl/ holds no wheels: run 'bash bench/device_check.sh fetch'" \
             "on a machine with PyPI, then carry .whl" | tee -a "$LOG"
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl >> "$LOG" 2>&1 || { echo "installing .whl/ failed (see $LOG)"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
QUICK_FLAG=${QUICK:+--quick}
{ if command -v nvidia-smi > /dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else echo "no nvidia-smi"; fi
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >> "$LOG"

failed=0
bench() {  # bench OUTPUT_NAME SECONDS SCRIPT [ARGS...]
    local name=$1 limit=$2 script=$3
    shift 3
    echo "== $name ($script $*; limit ${limit}s)" >> "$LOG"
    local start=$SECONDS
    timeout "$limit" "$PYTHON" "bench/$script.py" --json $QUICK_FLAG "$@" > "$OUT/$name.json" 2>> "$LOG"
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
    [[ $rc -eq 0 ]] || failed=1
}

# the epoch goal first: 2975 synthetic-city scenes, paper config, data on the GPU
bench epoch 150 epoch
[[ -n "${QUICK:-}" ]] || bench epoch_compile 150 epoch --compile  # minutes of compiling on a CPU
bench train_step 90 train_step --peak-size 8192 --repeats 5 --verbose
bench eval 60 eval --compile --images 64
bench data 45 data
bench scaling 45 scaling
exit $failed
