#!/usr/bin/env bash
# The main job (make demo): offline planning on a recorded routing trace with
# every built-in strategy, balance side by side. Run after `make build`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
trace=testdata/traces/cheaders-e8-top2-aux0.jsonl
world=${WORLD_SIZE:-4}
slots=${SLOTS:-4}
strategies=(static flexmoe swiftmoe)
echo "== offline planning on $trace (world size $world, $slots slots per rank) =="
echo "   max_over_mean: busiest rank / mean rank load with each expert's tokens split evenly over its replicas (1.00 = perfect balance)"
printf '%-10s' iteration; for s in "${strategies[@]}"; do printf '%12s' "$s"; done; echo
for it in 0 10 25 50 100 150 199; do
  printf '%-10s' "$it"
  for s in "${strategies[@]}"; do
    mom=$(bin/swiftmoe-sidecar plan --strategy "$s" --loads "$trace" --iteration "$it" \
      --world-size "$world" --slots "$slots" --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["max_over_mean"])')
    printf '%12s' "$mom"
  done
  echo
done
