#!/usr/bin/env python3
"""Choose the burst-replica defaults by measurement: replay synthetic workloads on a simulated
cluster with burst_slots_per_rank B and burst_threshold t, and compare each (B, t) with no bursts
and with the perfect-balance bound.

A measurement, not a test. Per iteration and MoE layer it runs what the engine runs: the
placement planned from the previous iteration's loads (swiftmoe.planning.reference: replicas
proportional to load, LPT packing; the Go strategy plans better, so the gaps here are upper
bounds of what bursts face), the engine's split of the iteration's actual counts, and the
engine's own burst decision (swiftmoe.engine.burst.plan_bursts, with the cost parameters the
engine derives on this GPU: swiftmoe.engine.step_costs's H200 default throughput). It prices the
step as the simulator does: the busiest rank's expert time from the H200 calibration table (one
grouped GEMM per rank), plus the token all-to-all per tier, plus the burst copies (the shared cost
model, swiftmoe.engine.costmodel). The bound: the same total routed uniformly over the static
placement, as in the simulator (balanced compute; its all-to-all is the static placement's, so a
placement with more slots that keeps more tokens at home can come in under it). Workloads (each at E=64 top-8 with 6 slots and E=32 top-2 with 4 slots, 16 GPUs in
2 nodes, 12.5 and 50 GB/s between nodes, 300 GB/s within):

  fixed    a Zipf(1.2) hot set that drifts slowly (the hottest experts take about half);
  moving   the same hot set re-drawn every 3 iterations;
  burst    3 ordinary iterations (Zipf 0.6), then one with a sharp hot set (Zipf 2.0, re-drawn);
  idle     half the experts get no tokens, the rest uniform;
  uniform  every expert alike (the control).

    python3 scripts/burst_sweep.py [--iterations 48] [--json FILE]

Prints, per workload and setting, the mean and p95 over iterations of step / bound for every
(B, t), and a summary with how often the threshold let the decision run and its CPU time per
layer call (not in the step times above: the engine pays it on the CPU before dispatch);
progress goes to stderr.

Shape legend: I iterations, E experts, N ranks, S slots per rank, Q source ranks, R ranks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pyshim"))

from swiftmoe.engine import burst, step_costs  # noqa: E402
from swiftmoe.engine import costmodel as cm  # noqa: E402
from swiftmoe.engine.plan import static_slots  # noqa: E402
from swiftmoe.engine.split.demand import min_max_demand  # noqa: E402
from swiftmoe.engine.split.tiers import tier_sums  # noqa: E402
from swiftmoe.planning import reference  # noqa: E402
from swiftmoe.sim import calibration, trace  # noqa: E402

GPUS, PER_NODE, INTRA_BW = 16, 8, 300e9
TOKENS_PER_GPU = 4096
SETTINGS = {  # name -> (E, top-k, slots, static slots, calibration shape, d_model, P)
    "E64-top8": (64, 8, 6, 4, "qwen3-30b-a3b", 2048, 3 * 2048 * 768),
    "E32-top2": (32, 2, 4, 2, "gpt-medium", 1024, 2 * 1024 * 4096),
}
WORKLOADS = ("fixed", "moving", "burst", "idle", "uniform")


def loads_of(workload: str, E: int, k: int, iterations: int, seed: int) -> np.ndarray:
    """loads_IE of one workload (a single MoE layer), deterministic in ``seed``."""
    T = TOKENS_PER_GPU * GPUS
    if workload in ("fixed", "moving", "uniform"):
        it = trace.synthetic_iterations(
            E,
            1,
            iterations,
            T,
            k,
            zipf=0.0 if workload == "uniform" else 1.2,
            shift_every=3 if workload == "moving" else 0,
            seed=seed,
        )
        return np.stack([x[0] for x in it])
    rng = np.random.default_rng([seed, 7])
    out = np.zeros((iterations, E), dtype=np.int64)
    perm = rng.permutation(E)
    for i in range(iterations):
        if workload == "idle":
            p = np.zeros(E)
            p[perm[: E // 2]] = 1.0 / (E // 2)
        elif i % 4 == 3:  # the burst: a sharp hot set, new each time
            p = trace.zipf_popularity(E, 2.0, rng.permutation(E))
        else:
            p = trace.zipf_popularity(E, 0.6, perm)
        out[i] = trace._draw(rng, p, T, k)
    return out


def step_ms(et, p: cm.CostParams, c_QE, slots, S: int, rpn: int) -> tuple[float, np.ndarray]:
    """Expert time of the busiest rank (grouped GEMM) plus the all-to-all, and load_R."""
    _, plan, demand_K, _ = min_max_demand(c_QE, slots, S, rpn, "auto")
    load_R = demand_K.reshape(p.ranks, S).sum(axis=1)
    t = float(et(load_R).max()) + cm.a2a_ms(p, *tier_sums(c_QE, plan, demand_K, rpn))
    return t, load_R


def run(args) -> dict:
    variants = [(0, 0.0)] + list(itertools.product(args.burst_slots, args.thresholds))
    results: dict = {}
    t_start = time.monotonic()
    cases = list(itertools.product(SETTINGS, args.inter_bw, WORKLOADS))
    for n_case, (setting, inter, workload) in enumerate(cases):
        E, k, S, S0, shape, d, P = SETTINGS[setting]
        et = calibration.load_table(None, shape)
        p = cm.CostParams(
            ranks=GPUS,
            ranks_per_node=PER_NODE,
            token_bytes=2 * d,
            expert_bytes=2 * P,
            flops_per_token=6 * P,
            flops_per_s=step_costs.HOPPER_FLOPS_PER_S,
            intra_bw=INTRA_BW,
            inter_bw=inter * 1e9,
        )
        loads = loads_of(workload, E, k, args.iterations, args.seed)
        static = static_slots(E, GPUS, S0)
        ratios = {v: [] for v in variants}
        bursts = {v: 0 for v in variants}
        decided = {v: 0 for v in variants}  # calls past the threshold: the decision ran
        decide_s = {v: 0.0 for v in variants}
        slots = static_slots(E, GPUS, S)
        for i in range(args.iterations):
            if i > 0:  # planned from the previous iteration's loads
                slots = reference.plan_layer(loads[i - 1].tolist(), GPUS, S, cap_at_ranks=True)
            c_QE = trace.source_counts(loads[i], GPUS)
            c_bound = trace.source_counts(trace.uniform_loads(int(loads[i].sum()), E), GPUS)
            bound, _ = step_ms(et, p, c_bound, static, S0, PER_NODE)
            base, load_R = step_ms(et, p, c_QE, slots, S, PER_NODE)
            for B, thr in variants:
                t = base
                if B:
                    t0 = time.perf_counter()
                    b = burst.plan_bursts(c_QE, slots, S, B, PER_NODE, p, thr, load_R=load_R)
                    decide_s[(B, thr)] += time.perf_counter() - t0
                    decided[(B, thr)] += int(load_R.max()) * GPUS > thr * int(load_R.sum())
                    if b.count:
                        t, _ = step_ms(
                            et, p, burst.pad_counts(c_QE), b.slots_K, b.slots_per_rank, PER_NODE
                        )
                        t += b.copy_ms
                        bursts[(B, thr)] += b.count
                ratios[(B, thr)].append(t / bound)
        key = f"{setting} {inter:g}GB/s {workload}"
        results[key] = {
            f"B{B} t{thr:g}": {
                "mean": float(np.mean(r)),
                "p95": float(np.percentile(r, 95)),
                "bursts_per_iteration": bursts[(B, thr)] / args.iterations,
                "decided_share": decided[(B, thr)] / args.iterations,
                "decide_ms_per_iteration": 1e3 * decide_s[(B, thr)] / args.iterations,
            }
            for (B, thr), r in ratios.items()
        }
        el = time.monotonic() - t_start
        print(
            f"burst_sweep: {n_case + 1}/{len(cases)} {key} done, {el:.0f} s elapsed",
            file=sys.stderr,
            flush=True,
        )
    return results


def summary(results: dict) -> dict:
    """Per variant: the mean over cases of the mean ratio, the worst mean and the worst p95,
    and the worst gain against no bursts (> 1: slower than no bursts somewhere)."""
    names = list(next(iter(results.values())))
    out = {}
    for v in names:
        means = [r[v]["mean"] for r in results.values()]
        p95 = [r[v]["p95"] for r in results.values()]
        vs0 = [r[v]["mean"] / r["B0 t0"]["mean"] for r in results.values()]
        out[v] = {
            "mean_of_means": float(np.mean(means)),
            "worst_mean": float(np.max(means)),
            "worst_p95": float(np.max(p95)),
            "worst_vs_no_bursts": float(np.max(vs0)),
            "decided_share": float(np.mean([r[v]["decided_share"] for r in results.values()])),
            "decide_ms": float(
                np.mean([r[v]["decide_ms_per_iteration"] for r in results.values()])
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iterations", type=int, default=48, help="iterations per workload (48)")
    ap.add_argument(
        "--burst-slots", default="1,2,4", help="burst slots per rank to try, comma-separated"
    )
    ap.add_argument(
        "--thresholds", default="1.0,1.05,1.1,1.2", help="thresholds to try, comma-separated"
    )
    ap.add_argument("--inter-bw", default="12.5,50", help="GB/s between nodes, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        args.burst_slots = [int(x) for x in args.burst_slots.split(",")]
        args.thresholds = [float(x) for x in args.thresholds.split(",")]
        args.inter_bw = [float(x) for x in args.inter_bw.split(",")]
    except ValueError as e:
        ap.error(f"--burst-slots, --thresholds and --inter-bw take comma-separated numbers: {e}")
    if args.iterations < 2 or min(args.burst_slots) < 1 or min(args.thresholds) < 1.0:
        ap.error("--iterations must be >= 2, --burst-slots >= 1 and --thresholds >= 1.0")
    if min(args.inter_bw) <= 0:
        ap.error("--inter-bw must be > 0")
    results = run(args)
    summ = summary(results)
    names = list(summ)
    print(
        f"step / bound, mean and p95 over {args.iterations} iterations (B burst slots, t threshold)"
    )
    print(f"{'case':<28}" + "".join(f"{n:>16}" for n in names))
    for case, r in results.items():
        print(f"{case:<28}" + "".join(f"{r[n]['mean']:>8.3f}/{r[n]['p95']:<7.3f}" for n in names))
    print("\nsummary (over every case)")
    for n, s in summ.items():
        print(
            f"  {n:<10} mean of means {s['mean_of_means']:.4f}  worst mean {s['worst_mean']:.3f}"
            f"  worst p95 {s['worst_p95']:.3f}  worst vs no bursts {s['worst_vs_no_bursts']:.4f}"
            f"  decided {100 * s['decided_share']:.0f}% of layer calls, "
            f"{s['decide_ms']:.2f} ms of decision per layer call"
        )
    if args.json:
        args.json.write_text(json.dumps({"cases": results, "summary": summ}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
