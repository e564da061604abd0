#!/usr/bin/env bash
# Regenerates the figures of docs/evidence.md from committed data: the routing trace
# testdata/traces/cheaders-e8-top2-aux0.jsonl, the simulator (swiftmoe sim) and the loss curves
# in results/convergence/ (scripts/convergence.py run makes those; about 12 minutes on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root/pyshim${PYTHONPATH:+:$PYTHONPATH}"
trace=testdata/traces/cheaders-e8-top2-aux0.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 16 simulated H200s (8 per node), 4 slots per GPU, GPT-Small experts, 65,536 tokens/iteration
python3 -m swiftmoe.cli sim --trace "$trace" --gpus 16 --slots 4 --tokens-per-iter 65536 \
    --shape gpt-small --output "$tmp/sim.json" | tee docs/sim-e8-16gpu.txt

# load heatmap, replicas (SwiftMoE in the simulator), step time, loss against simulated time
python3 -m swiftmoe.report --trace "$trace" --sim "$tmp/sim.json" --loss results/convergence \
    --out docs --title "E=8 trace, 16 simulated H200s, 4 slots/GPU"

# the convergence runs themselves: measured step time and loss against measured time
python3 -m swiftmoe.report --loss results/convergence --out docs/cpu-2rank \
    --title "train_lm.py, 2 CPU ranks, static E=N*S"
