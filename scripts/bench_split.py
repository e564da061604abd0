#!/usr/bin/env python3
"""Time the token split per layer on one CPU thread (a benchmark, not a test).

For each (E, N, S) it builds Zipf-skewed per-rank counts (8192 routed tokens per rank, as top-2
over 4096 tokens), a plan from a noisy copy of the loads (replicas proportional to load, LPT
packing: swiftmoe.planning.reference), and prints the median microseconds of what the engine
runs per layer on every rank:

- split_tokens_for_rank in NumPy (native=False): the rank's row and slot columns of the fast
  split, its fastest run too (the machine may be shared), with 8 ranks per node, and with 8
  ranks per node and the cost parameters below (stage 1 priced, swiftmoe.engine.split.priced:
  what the engine runs on several nodes); the last of these in C (swiftmoe.engine.native, the
  same split, what the engine runs when the library is built); and the whole of a layer call's
  split in the engine (swiftmoe.engine.splitter.RankSplitter given the placement's index, which
  the engine's layer keeps from when the placement was installed: that split and the engine's
  conservation checks of the result; every rank's splitter has split once before), its
  median and its fastest, and the median of a placement's first split, timed right after its
  index is built as the layer builds it (``RankSplitter.build_index``; the caches hold the
  index's work, not the split's: what a layer call pays where the placement changes every
  iteration and other work runs before the layer), and of that index's build (``index us``:
  what installing a changed placement costs a layer);
- the dense fast split ([N, N*S], the reference the tests check the engine's part against:
  pyshim/tests/split_reference.py), the min-max stage alone (per-rank amounts, before routing
  sources to slots), the exact and the even split, fast/exact max rank load and max/mean rank
  load of each;
- last, the burst-replica decision a layer runs when its threshold is passed
  (swiftmoe.engine.burst.plan_bursts, one burst slot per rank, threshold 1.0 so that it always
  runs, the cost parameters of H200s with Qwen3-30B-A3B-sized experts, 8 ranks per node) and the
  bursts it made, on this plan and on a stale one (planned for a hot set that has moved), in
  NumPy and in C (the same bursts).

C columns read "nan" when the library is not built (make build). The load average is printed
first: on a busy machine medians run high. Every call takes the plan's index from a
PlanIndexCache, as the engine's splitter does: the plan is indexed once.

    OMP_NUM_THREADS=1 PYTHONPATH=pyshim python3 scripts/bench_split.py [--reps 20]
        [--shapes 256x256x4,64x16x8,16x16x4]   (256x1024x4: the decision on 1024 ranks)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

_REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_REPO / "pyshim"), str(_REPO / "pyshim" / "tests")]
import split_reference as reference  # noqa: E402

from swiftmoe.engine import burst, native, split  # noqa: E402
from swiftmoe.engine import costmodel as cm  # noqa: E402
from swiftmoe.engine.plan import max_over_mean  # noqa: E402
from swiftmoe.engine.split import amounts, plan_index  # noqa: E402
from swiftmoe.engine.splitter import RankSplitter  # noqa: E402
from swiftmoe.planning import reference as reference_planner  # noqa: E402

SHAPES = [(256, 256, 4), (64, 16, 8), (16, 16, 4)]


def timed(fn, reps: int, best: bool = False):
    times = []
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e6
    return ((med, min(times) * 1e6) if best else med), out


def bench_shape(E: int, N: int, S: int, reps: int, rng) -> None:
    p_E = 1.0 / np.arange(1, E + 1) ** 1.0
    p_E = p_E[rng.permutation(E)]
    p_E /= p_E.sum()
    counts_QE = torch.from_numpy(rng.multinomial(8192, p_E, size=N).astype(np.int64))
    prev_E = counts_QE.sum(0).numpy() * rng.uniform(0.8, 1.2, size=E)
    slots_K = reference_planner.plan_layer(prev_E.tolist(), N, S)
    rpn = 8 if N > 8 else 0
    ranks = iter(range(10**9))  # a different rank each call: ranks' costs differ a little
    cache = split.PlanIndexCache()  # what the engine's RankSplitter keeps

    def plan() -> split.PlanIndex:
        return cache.index(slots_K, S, N, E)

    P = 3 * 2048 * 768
    params = cm.CostParams(
        ranks=N,
        ranks_per_node=rpn,
        token_bytes=2 * 2048,
        expert_bytes=2 * P,
        flops_per_token=6 * P,
        flops_per_s=5.8e14,
        intra_bw=3e11,
        inter_bw=1.25e10,
    )

    def rank_split(r: int, rpn: int = 0, cost=None, nat: bool = False) -> split.RankSplit:
        return split.split_tokens_for_rank(counts_QE, plan(), S, r, rpn, cost=cost, native=nat)

    (t_rank, t_rbest), _ = timed(lambda: rank_split(next(ranks) % N), reps, True)
    t_rnode, _ = timed(lambda: rank_split(next(ranks) % N, rpn), reps)
    t_rpriced, _ = timed(lambda: rank_split(next(ranks) % N, rpn, params), reps)
    t_cpriced = float("nan")
    if native.available():
        t_cpriced, _ = timed(lambda: rank_split(next(ranks) % N, rpn, params, True), reps)
    splitters = [RankSplitter(S, r, rpn, "auto") for r in range(N)]
    slots_t = torch.tensor(slots_K)
    # Each rank's engine indexes the placement once, when it is installed, and passes the index.
    kept = [sp.index(slots_t, N, E) for sp in splitters]
    for r, sp in enumerate(splitters):  # and has split under it before
        sp(counts_QE, kept[r], 0, cost=params)
    (t_layer, t_lbest), _ = timed(
        lambda: (r := next(ranks) % N, splitters[r](counts_QE, kept[r], 0, cost=params))[1],
        reps,
        True,
    )

    def first_split() -> tuple[float, float]:  # the first split after a placement is installed
        r = next(ranks) % N
        t0 = time.perf_counter()
        fresh = splitters[r].build_index(slots_t, N, E)  # as the layer installs it: untimed
        t1 = time.perf_counter()
        splitters[r](counts_QE, fresh, 0, cost=params)
        return time.perf_counter() - t1, t1 - t0

    firsts = [first_split() for _ in range(reps)]
    t_lnew = statistics.median(t for t, _ in firsts) * 1e6
    t_index = statistics.median(b for _, b in firsts) * 1e6
    t_fast, f_fast = timed(
        lambda: reference.split_tokens(counts_QE, plan(), S, method="fast"), reps
    )
    t_node, f_node = timed(lambda: reference.split_tokens(counts_QE, plan(), S, rpn, "fast"), reps)
    c_QE, pl, L_E = plan_index.prepare(counts_QE, plan(), S)
    t_amt, _ = timed(lambda: amounts.amounts_fast(c_QE, pl, L_E), reps)
    t_exact, f_exact = timed(
        lambda: reference.split_tokens(counts_QE, plan(), S, method="exact"),
        max(1, reps // 5),
    )
    t_even, f_even = timed(lambda: reference.even_split_tokens(counts_QE, plan(), S), reps)
    loads = {
        k: reference.rank_load_from_flow(f, S)
        for k, f in (("even", f_even), ("fast", f_fast), ("exact", f_exact))
    }
    ratio = float(loads["fast"].max()) / float(loads["exact"].max())
    mom = {k: max_over_mean(v.tolist()) for k, v in loads.items()}
    if not torch.equal(reference.rank_load_from_flow(f_node, S), loads["fast"]):
        raise SystemExit("ranks_per_node changed the rank loads; it may only change who sends")
    moved_E = np.random.default_rng(E * N + S).permutation(E)  # not rng: same counts as before
    stale_K = reference_planner.plan_layer(prev_E[moved_E].tolist(), N, S)
    t_burst, bursts = [], []
    for slots in (slots_K, stale_K):
        load_R = split.split_rank_loads(counts_QE, slots, S, rpn, cost=params)
        for nat in (False, True) if native.available() else (False,):
            t, bp = timed(
                lambda s=slots, lr=load_R, n=nat: burst.plan_bursts(
                    counts_QE, s, S, 1, rpn, params, 1.0, load_R=lr, native=n
                ),
                max(1, reps // 2) if not nat else reps,
            )
            t_burst.append(t)
            bursts.append(bp.count)
        if not native.available():
            t_burst.append(float("nan"))
            bursts.append(-1)
    print(
        f"{f'{E},{N},{S}':>12} {t_rank:9.0f} {t_rbest:9.0f} {t_rnode:9.0f} {t_rpriced:9.0f} "
        f"{t_cpriced:9.0f} {t_layer:9.0f} {t_lbest:9.0f} {t_lnew:9.0f} {t_index:9.0f} "
        f"{t_fast:9.0f} {t_node:9.0f} {t_amt:10.0f} "
        f"{t_exact:10.0f} {t_even:9.0f} {ratio:10.4f} {mom['even']:8.3f} {mom['fast']:8.4f} "
        f"{mom['exact']:9.4f} {t_burst[0]:9.0f} {t_burst[1]:9.0f} {bursts[0]:6d} "
        f"{t_burst[2]:9.0f} {t_burst[3]:9.0f} {bursts[2]:6d}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per method")
    ap.add_argument(
        "--shapes",
        default=",".join(f"{E}x{N}x{S}" for E, N, S in SHAPES),
        help="comma-separated ExNxS (experts x ranks x slots per rank) to time "
        "(default %(default)s); N above 8 runs in nodes of 8",
    )
    args = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if any(len(t) != 3 or min(t) < 1 for t in shapes):
            raise ValueError
    except ValueError:
        ap.error(
            f"--shapes {args.shapes!r}: want ExNxS[,ExNxS...] of positive integers, e.g. 256x1024x4"
        )
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    load1, load5, _ = os.getloadavg()
    print(f"load average {load1:.2f} {load5:.2f} on {os.cpu_count()} CPUs, torch threads 1")
    print(f"native burst decision: {native.why()}")
    print(
        f"{'E,N,S':>12} {'rank us':>9} {'rank min':>9} {'rnode8 us':>9} {'priced us':>9} "
        f"{'C pric us':>9} {'layer us':>9} {'layer min':>9} {'layer new':>9} {'index us':>9} "
        f"{'dense us':>9} {'node8 us':>9} {'amounts us':>10} "
        f"{'exact us':>10} {'even us':>9} {'fast/exact':>10} {'mom even':>8} {'mom fast':>8} "
        f"{'mom exact':>9} {'burst us':>9} {'native us':>9} {'bursts':>6} {'stale us':>9} "
        f"{'native us':>9} {'bursts':>6}"
    )
    for E, N, S in shapes:
        bench_shape(E, N, S, args.reps, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
