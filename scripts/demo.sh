#!/usr/bin/env bash
# The main job (make demo), run after `make build`:
#  1. offline planning on a recorded routing trace with every built-in strategy;
#  2. a real training run on 2 CPU ranks (torchrun, gloo): a byte-level MoE language model on the
#     Python standard library's source, first with the static placement, then with SwiftMoE;
#  3. a side-by-side table of step time, imbalance and final loss.
# Environment: STEPS (default 60), WORLD_SIZE (offline planning, default 4), SLOTS (default 4).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root/pyshim${PYTHONPATH:+:$PYTHONPATH}"
trace=testdata/traces/cheaders-e8-top2-aux0.jsonl
world=${WORLD_SIZE:-4}
slots=${SLOTS:-4}
steps=${STEPS:-60}
out=${DEMO_OUT:-$root/out/demo}
mkdir -p "$out"

echo "== 1. offline planning on $trace (world size $world, $slots slots per rank) =="
echo "   max_over_mean: busiest rank / mean rank load, each expert's tokens split evenly over its replicas (1.00 = perfect balance)"
strategies=(static flexmoe swiftmoe)
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

echo
echo "== 2. training on real text: 2 ranks (gloo, one thread each), 8 experts, top-2, $steps steps =="
echo "   static: expert parallelism, 4 slots per rank (each expert once), no burst replicas;"
echo "   swiftmoe: 6 slots per rank (1.5x the expert weight slots; expert optimizer state is"
echo "   sharded 1/N either way) and its default burst replicas"
for s in static swiftmoe; do
  slots=4; bursts=(--burst-slots 0); [ "$s" = swiftmoe ] && slots=6 && bursts=()
  echo "-- strategy $s ($slots slots per rank)"
  python3 -m torch.distributed.run --standalone --nproc-per-node 2 examples/train_lm.py \
    --strategy "$s" --steps "$steps" --slots "$slots" "${bursts[@]}" --d-ff 512 --batch-size 16 --no-progress \
    --trace-out "$out/trace-$s.jsonl" --timings-out "$out/timings-$s.jsonl" \
    --summary-out "$out/summary-$s.json" 2>&1 | grep -E '^step ([0-9]*0|'"$steps"')/'"$steps"' |^\{' || true
  [ -s "$out/summary-$s.json" ] || { echo "demo: the $s run wrote no summary; see the output above" >&2; exit 1; }
done

echo
echo "== 3. side by side (step time after warm-up; imbalance = mean over steps of the worst layer's busiest rank / mean) =="
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.load(open(f"{out}/summary-{s}.json")) for s in ("static", "swiftmoe")]
base = rows[0]["mean_step_s"]
cbase = rows[0]["mean_busiest_cpu_s"]
print(f"{'strategy':<10}{'step (ms)':>12}{'vs static':>11}{'busiest CPU (ms)':>18}{'vs static':>11}"
      f"{'tokens/s':>11}{'imbalance':>11}{'final loss':>12}")
for r in rows:
    c = r["mean_busiest_cpu_s"]
    print(f"{r['strategy']:<10}{r['mean_step_s']*1e3:>12.1f}{r['mean_step_s']/base:>11.3f}"
          f"{c*1e3:>18.1f}{c/cbase:>11.3f}"
          f"{r['tokens_per_s']:>11,.0f}{r['mean_max_over_mean']:>11.3f}{r['final_loss']:>12.3f}")
print("busiest CPU: the busiest rank's CPU time per step (the work balance saves, whatever else runs"
      " on the machine's cores); step time also counts waiting for a CPU")
print(f"traces and timings: {out}")
PY
