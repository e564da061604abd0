#!/usr/bin/env bash
# Benchmarks (make bench), not tests. This machine is shared and noisy: read the ratios printed
# side by side, not the absolute times. Results are also written under out/bench/.
#  1. the swiftmoe strategy's planner (64 layers x 256 experts x 256 ranks x 4 slots);
#  2. the round trip client -> sidecar -> plugin process -> client;
#  3. the token split per layer on one thread;
#  4. the MoE training step on 2 gloo ranks: static expert parallelism, SwiftMoE and the
#     perfect-balance bound, under skewed and under uniform routing; and a hot set that moves
#     every 3 iterations: SwiftMoE with burst replicas against without, and the bound.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root/pyshim${PYTHONPATH:+:$PYTHONPATH}"
out=${BENCH_OUT:-$root/out/bench}
mkdir -p "$out"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"

echo; echo "== 1. planner: swiftmoe strategy =="
go test -run '^$' -bench 'SwiftMoEPlan' -benchtime 50x ./plugins/swiftmoe/ | tee "$out/planner.txt"

echo; echo "== 2. round trip through sidecar and plugin process =="
go test -run '^$' -bench 'RoundTrip' -benchtime 200x ./sidecar/internal/e2e/ | tee "$out/roundtrip.txt"

echo; echo "== 3. token split per layer (one thread) =="
OMP_NUM_THREADS=1 python3 scripts/bench_split.py --reps 10 | tee "$out/split.txt"

echo; echo "== 4. MoE training step, 2 gloo ranks, one thread each =="
python3 scripts/bench_step.py --json "$out/step.json" | tee "$out/step.txt"
