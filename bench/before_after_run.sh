#!/usr/bin/env bash
# Before/after wall time of one training run: the demo's xtc consistency run (synthetic-quick,
# 240 images, 2 epochs, gradient cosines every 4 steps) through `python -m xtc train`, on the
# tree of an older commit and on this checkout, alternated round by round so drift in machine
# load hits both. Prints one JSON object per run, then a summary line.
#   bash bench/before_after_run.sh <old-commit> [rounds=2]
set -euo pipefail
old_rev=${1:?usage: bash bench/before_after_run.sh <old-commit> [rounds]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
old_tree=$(mktemp -d /tmp/xtc-before-XXXXXX)
out=$(mktemp -d /tmp/xtc-before-after-runs-XXXXXX)
trap 'git -C "$here" worktree remove --force "$old_tree" > /dev/null 2>&1 || true; rm -rf "$out"' EXIT
git -C "$here" worktree add --detach -f "$old_tree" "$old_rev" > /dev/null 2>&1
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    tree=$([ "$side" = old ] && echo "$old_tree" || echo "$here")
    start=$(date +%s.%N)
    # run from the tree, so `python -m xtc` imports that tree's package (sys.path[0] = cwd)
    (cd "$tree" && "$py" -m xtc train --config "$tree/configs/synthetic-quick.yaml" --quiet \
        --out "$out/$side-$round" --set model.method=xtc --set train.epochs=2 \
        --set data.train_size=240 --set data.test_size=80 --set train.grad_cosine_every=4 \
        --set train.keep_checkpoints=best > "$out/$side-$round.log" 2>&1)
    "$py" -c 'import json, sys, time; side, commit, rnd, start = sys.argv[1:]
print(json.dumps({"side": side, "commit": commit, "round": int(rnd),
                  "wall_s": round(time.time() - float(start), 2)}))' \
        "$side" "$(git -C "$tree" rev-parse --short HEAD)" "$round" "$start" | tee -a "$out/runs.jsonl"
  done
done
# the summary from the lines above (python, not bc: bc prints ".96", which is not JSON)
"$py" -c 'import json, sys, statistics as st
rows = [json.loads(line) for line in open(sys.argv[1])]
mean = {s: st.fmean(r["wall_s"] for r in rows if r["side"] == s) for s in ("old", "new")}
print(json.dumps({"old_mean_s": round(mean["old"], 2), "new_mean_s": round(mean["new"], 2),
                  "new_over_old": round(mean["new"] / mean["old"], 3)}))' "$out/runs.jsonl"
