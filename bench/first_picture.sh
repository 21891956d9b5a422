#!/usr/bin/env bash
# Time from `git clone` to the quickstart's picture, as a newcomer following the README:
# clone this repository into a fresh folder, `make setup`, then run 00_quickstart headless
# with its defaults (it trains configs/quickstart.yaml; run_dir=None so an existing demo run
# is not used). Prints one JSON object with each phase's wall time in seconds.
#   bash bench/first_picture.sh [WORKDIR]     # WORKDIR is removed afterwards unless KEEP=1
# Caveat: pip's cache on this machine makes `make setup` faster than on a first-ever install.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/xtc-first-picture-XXXX)}"
now() { date +%s.%N; }
t0=$(now)
git clone -q "file://$REPO" "$WORK/xtc"
t1=$(now)
make -C "$WORK/xtc" setup > "$WORK/setup.log" 2>&1
t2=$(now)
XTC_RUNS_DIR="$WORK/runs" MPLBACKEND=agg "$WORK/xtc/.venv/bin/papermill" -p run_dir None \
    --cwd "$WORK/xtc/notebooks" "$WORK/xtc/notebooks/00_quickstart.ipynb" "$WORK/quickstart.ipynb" \
    > "$WORK/quickstart.log" 2>&1
t3=$(now)
metrics=$("$WORK/xtc/.venv/bin/python" -c "
import json, pathlib
run = next(pathlib.Path('$WORK/runs/00_quickstart').glob('*/results.json'))
test = json.loads(run.read_text())['metrics']['test']
print(json.dumps({k: round(test[k], 4) for k in ('miou', 'abs_err')}))")
python3 - "$t0" "$t1" "$t2" "$t3" "$metrics" "$(nproc)" "$(cat /proc/loadavg | cut -d' ' -f1)" <<'PY'
import json, sys
t0, t1, t2, t3 = map(float, sys.argv[1:5])
print(json.dumps({"clone_s": round(t1 - t0, 1), "setup_s": round(t2 - t1, 1),
                  "quickstart_s": round(t3 - t2, 1), "total_s": round(t3 - t0, 1),
                  "quickstart_test": json.loads(sys.argv[5]), "cores": int(sys.argv[6]),
                  "load_average_start": float(sys.argv[7])}))
PY
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
