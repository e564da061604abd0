#!/usr/bin/env bash
# Regenerates the figures of the README's simulator section and of docs/evidence.md from committed
# data: the routing traces in testdata/traces/, the simulator (swiftmoe sim) and the loss curves in
# results/convergence/ (scripts/convergence.py run makes those; about 12 minutes on 2 cores).
#
# 1. docs/sim-table.md and docs/sim-table.json: mean and p95 step time over the perfect-balance
#    bound for every system on every workload (scripts/sim_table.py: 5 synthetic classes at E=64
#    top-8 and E=32 top-2, and the recorded traces, each on 16 and 32 simulated H200s, 8 per node,
#    with 12.5 and 50 GB/s between nodes). 52 simulator runs, two at a time (SIM_JOBS), one
#    progress line each; about 2 minutes on this project's 2-core machine.
# 2. docs/sim-e8-16gpu.txt and the plots of docs/evidence.md (the E=8 trace on 16 H200s).
# 3. docs/predictor-table.md: the README's prediction table (scripts/predictor_table.py: 40
#    simulator runs, about a minute).
#
# SIM_ITERATIONS (60) and SIM_JOBS (the CPUs) tune step 1; FIGURES_QUICK=1 runs a few rows only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root/pyshim${PYTHONPATH:+:$PYTHONPATH}"
trace=testdata/traces/cheaders-e8-top2-aux0.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

echo "figures: 1. the simulator's table (docs/sim-table.md)" >&2
quick=()
if [ "${FIGURES_QUICK:-0}" = 1 ]; then quick=(--quick); fi
python3 scripts/sim_table.py --iterations "${SIM_ITERATIONS:-60}" --jobs "${SIM_JOBS:-$(nproc)}" \
    --out docs/sim-table.md --json docs/sim-table.json --work "$tmp/table" "${quick[@]}"

echo "figures: 2. the E=8 trace on 16 simulated H200s and the plots of docs/evidence.md" >&2
# 16 simulated H200s (8 per node), 4 slots per GPU, GPT-Small experts, 65,536 tokens/iteration
python3 -m swiftmoe.cli sim --trace "$trace" --gpus 16 --slots 4 --tokens-per-iter 65536 \
    --shape gpt-small --output "$tmp/sim.json" | tee docs/sim-e8-16gpu.txt

# load heatmap, replicas (SwiftMoE in the simulator), step time, loss against simulated time
python3 -m swiftmoe.report --trace "$trace" --sim "$tmp/sim.json" --loss results/convergence \
    --out docs --title "E=8 trace, 16 simulated H200s, 4 slots/GPU"

# the convergence runs themselves: measured step time and loss against measured time
python3 -m swiftmoe.report --loss results/convergence --out docs/cpu-2rank \
    --title "train_lm.py, 2 CPU ranks, static E=N*S"
echo "figures: 3. the prediction table (docs/predictor-table.md)" >&2
# SwiftMoE under each of the sidecar's predictors, 16 simulated H200s in 2 nodes, 12.5 GB/s
python3 scripts/predictor_table.py --jobs "${SIM_JOBS:-$(nproc)}" > docs/predictor-table.md

echo "figures: done in $(( (SECONDS - start) / 60 )) min" >&2
