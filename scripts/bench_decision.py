#!/usr/bin/env python3
"""Time the burst decision on a simulated workload's own layer calls (a benchmark, not a test).

It runs ``swiftmoe sim`` for one workload with the swiftmoe-burst system, keeps the inputs of
every layer call whose decision runs (its threshold passed: the calls the engine would pay for),
and then times ``swiftmoe.engine.burst.plan_bursts`` on each of them, on one thread:

- warm: the fastest of ``--repeats`` runs of a call in a row (what a host with the decision's
  data in cache pays);
- cold (``--cold``): each call once, right after the NumPy decision of another call, as in a step
  where other work runs between layer calls;
- NumPy (``--numpy``): the same calls with the NumPy decision, which hosts without the native
  library run;
- the layer call (``--layer-call``): what the engine's ``burst_run.decide`` takes on one rank
  for each call, the decision and, where it makes bursts, that rank's split over the enlarged
  placement (with its checks) and the placement's send order, each call once after the others
  (the fastest of ``--repeats`` passes over the calls), each the first of its placement and
  layer; "again", the same call made once more right after it (the same placement's next layer
  call: another micro-batch, or the recompute under activation checkpointing); with
  ``--cold`` too, each call once right after another call's NumPy decision; and the whole
  host step of such a layer call: the split of the planned placement alone, then that split and
  the burst step as two calls and as the engine's one C call (``burst_run.split_and_decide``).

It prints the median and 90th percentile over the calls, in microseconds, and the bursts made.
The native library (``make build``) must be there: without it the script says why and exits 2.
The defaults are the README's moving-hot E=32 row: 16 GPUs in nodes of 8, 4 slots, top-2,
50 GB/s between nodes. The README's other rows:

    python3 scripts/bench_decision.py --workload fixed-hot --inter-bw 12.5
    python3 scripts/bench_decision.py --experts 64 --top-k 8 --slots 6 --gpus 32 --inter-bw 12.5
    python3 scripts/bench_decision.py --workload burst --experts 64 --top-k 8 --slots 6 --gpus 32

The machine may be shared: run it twice, or beside another build's, and compare ranges.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

# One thread for NumPy's and torch's pools too: the simulator runs torch between the decisions,
# and their idle threads spin on the core beside the one being timed (on this 2-core machine
# that took the warm median from 154 to 272 us).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "pyshim"))

import torch  # noqa: E402

from swiftmoe import cli  # noqa: E402
from swiftmoe.engine import burst, burst_run, native  # noqa: E402
from swiftmoe.engine.splitter import RankSplitter  # noqa: E402
from swiftmoe.sim import run as sim_run  # noqa: E402

WORKLOADS = ("fixed-hot", "moving-hot", "burst", "half-idle", "uniform")


def record(args) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of every burst decision the simulated run makes whose threshold passed."""
    calls: list[tuple[tuple, dict]] = []
    real = sim_run.plan_bursts

    def keep(*a, **k):
        calls.append((a, dict(k)))
        return real(*a, **k)

    sim_run.plan_bursts = keep
    try:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [
                "sim", "--quiet", "--gpus", str(args.gpus), "--gpus-per-node",
                str(args.gpus_per_node), "--slots", str(args.slots), "--top-k", str(args.top_k),
                "--inter-bw", f"{args.inter_bw:g}", "--shape", "gpt-small",
                "--tokens-per-iter", str(4096 * args.gpus), "--iterations", str(args.iterations),
                "--systems", "bound,swiftmoe-burst", "--synthetic-experts", str(args.experts),
                "--workload", args.workload, "--seed", str(args.seed),
                "--output", os.path.join(tmp, "sim.json"),
            ]  # fmt: skip
            with open(os.devnull, "w") as null:
                out, sys.stdout = sys.stdout, null
                try:
                    rc = cli.main(argv)
                finally:
                    sys.stdout = out
            if rc:
                raise SystemExit(f"swiftmoe sim failed (exit {rc}): {' '.join(argv)}")
    finally:
        sim_run.plan_bursts = real
    return [
        (a, k) for a, k in calls if burst.past_threshold(k["load_R"], a[3], a[6])
    ]  # (counts, slots, S, B, rpn, params, threshold)


def timed(a: tuple, k: dict, native_: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    bp = burst.plan_bursts(*a, **k, native=native_)
    return (time.perf_counter() - t0) * 1e6, bp.count


def layer_calls(
    calls: list[tuple[tuple, dict]], repeats: int, cold: bool = False, again: list | None = None
) -> list[float]:
    """Each call's ``burst_run.decide`` on rank 1 (the engine's own function, given the layer's
    placement and split as an ExpertLayer holds them): the fastest of ``repeats`` passes; cold,
    each call once, right after another call's NumPy decision. ``again``, when given a list,
    gets the fastest of the same call made a second time at once: the same placement's next
    layer call (another micro-batch, or the recompute under activation checkpointing)."""
    best = [float("inf")] * len(calls)
    if again is not None:
        again[:] = [float("inf")] * len(calls)
    for _ in range(1 if cold else repeats):
        for i, (a, k) in enumerate(calls):
            if cold:
                timed(*calls[i - 1], False)
            counts, slots, S, B, rpn, params, threshold = a
            layer = SimpleNamespace(
                index=0,
                S=S,
                slots_t=torch.as_tensor(slots, dtype=torch.int64),
                split=RankSplitter(S, 1, rpn, k.get("method", "auto")),
            )
            policy = burst_run.BurstPolicy(B, threshold, k.get("method", "auto"))
            counts_t = torch.as_tensor(counts, dtype=torch.int64)
            load_R = torch.as_tensor(k["load_R"], dtype=torch.int64)
            t0 = time.perf_counter()
            burst_run.decide(layer, policy, counts_t, load_R, params, k.get("planned"))
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e6)
            if again is not None:
                t0 = time.perf_counter()
                burst_run.decide(layer, policy, counts_t, load_R, params, k.get("planned"))
                again[i] = min(again[i], (time.perf_counter() - t0) * 1e6)
    return best


def whole_calls(calls: list[tuple[tuple, dict]], repeats: int, warm: bool) -> tuple:
    """For each call on rank 1, the fastest of ``repeats`` passes over the calls of: the
    layer's split of the planned placement alone; that split then ``burst_run.decide`` (two
    calls); ``burst_run.split_and_decide`` (one C call: ``native.layer_step``). The rank's
    splitter has split before, of another placement. ``warm`` False: the placement is new, its
    index built right before the timing, as in a running job whose placements change every
    iteration; True: the same placement's index split once before (the split's `layer` column
    in ``bench_split.py``, which ``swiftmoe sim --split-ms`` charges)."""
    best = ([float("inf")] * len(calls), [float("inf")] * len(calls), [float("inf")] * len(calls))
    for _ in range(repeats):
        for i, (a, k) in enumerate(calls):
            counts, slots, S, B, rpn, params, threshold = a
            method = k.get("method", "auto")
            counts_t = torch.as_tensor(counts, dtype=torch.int64)
            N, E = counts_t.shape
            policy = burst_run.BurstPolicy(B, threshold, method)
            slots_t = torch.as_tensor(slots, dtype=torch.int64)
            sp = RankSplitter(S, 1, rpn, method)
            sp(counts_t, slots_t.flip(0).clone(), 0, cost=params)  # its checks of the cost
            plan = sp.build_index(slots_t, N, E)
            for j in range(3):
                if not warm:  # new each time, as a new placement's, built as the layer builds it
                    plan = sp.build_index(slots_t, N, E)
                else:
                    sp(counts_t, plan, 0, cost=params)
                layer = SimpleNamespace(index=0, S=S, slots_t=slots_t, split=sp)
                t0 = time.perf_counter()
                if j == 0:
                    sp(counts_t, plan, 0, cost=params)
                elif j == 1:
                    rs = sp(counts_t, plan, 0, cost=params)
                    burst_run.decide(layer, policy, counts_t, rs.load_R, params, rs.planned)
                else:
                    burst_run.split_and_decide(layer, policy, counts_t, plan, params)
                best[j][i] = min(best[j][i], (time.perf_counter() - t0) * 1e6)
    return best


def summary(name: str, us: list[float]) -> str:
    us = sorted(us)
    p90 = us[min(len(us) - 1, int(0.9 * len(us)))]
    return f"{name} median {statistics.median(us):.0f} us, p90 {p90:.0f} us"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The defaults are the README's moving-hot E=32 row; see the module docstring.",
    )
    ap.add_argument("--workload", choices=WORKLOADS, default="moving-hot", help="(%(default)s)")
    ap.add_argument("--experts", type=int, default=32, help="experts (%(default)s)")
    ap.add_argument("--top-k", type=int, default=2, help="experts per token (%(default)s)")
    ap.add_argument("--slots", type=int, default=4, help="slots per GPU (%(default)s)")
    ap.add_argument("--gpus", type=int, default=16, help="simulated GPUs (%(default)s)")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (%(default)s)")
    ap.add_argument("--inter-bw", type=float, default=50.0, help="GB/s between nodes (%(default)s)")
    ap.add_argument("--iterations", type=int, default=60, help="simulated iterations (%(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the workload's seed (%(default)s)")
    ap.add_argument(
        "--repeats", type=int, default=5, help="runs of each call for warm (%(default)s)"
    )
    ap.add_argument("--cold", action="store_true", help="also time each call cold")
    ap.add_argument("--numpy", action="store_true", help="also time the NumPy decision")
    ap.add_argument(
        "--layer-call",
        action="store_true",
        help="also time the engine's whole burst step of a layer call (burst_run.decide)",
    )
    args = ap.parse_args()
    for field in ("experts", "top_k", "slots", "gpus", "gpus_per_node", "iterations", "repeats"):
        if getattr(args, field) < 1:
            ap.error(f"--{field.replace('_', '-')} is {getattr(args, field)}: pass 1 or more")
    if not args.inter_bw > 0:
        ap.error(f"--inter-bw is {args.inter_bw:g}: pass GB/s > 0")
    if not native.available():
        print(f"the native decision is not loaded: {native.why()}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    load1, _, _ = os.getloadavg()
    print(f"load average {load1:.2f} on {os.cpu_count()} CPUs, one thread; native: {native.why()}")
    what = (
        f"{args.workload} E={args.experts} top-{args.top_k}, {args.gpus} GPUs in nodes of "
        f"{args.gpus_per_node}, {args.slots} slots, {args.inter_bw:g} GB/s"
    )
    print(f"simulating {args.iterations} iterations of {what} ...", file=sys.stderr, flush=True)
    calls = record(args)
    if not calls:
        print(f"{what}: no layer call passed the burst threshold; nothing to time")
        return 0
    print(f"timing {len(calls)} decisions ...", file=sys.stderr, flush=True)
    warm, made = [], 0
    for a, k in calls:
        runs = [timed(a, k, True) for _ in range(args.repeats)]
        warm.append(min(t for t, _ in runs))
        made += runs[0][1]
    lines = [summary("warm", warm)]
    if args.cold or args.numpy:
        cold, slow = [], []
        for i, (a, k) in enumerate(calls):
            t, _ = timed(*calls[i - 1], False)  # another call's NumPy decision first
            slow.append(t)
            cold.append(timed(a, k, True)[0])
        if args.cold:
            lines.append(summary("cold", cold))
        if args.numpy:
            lines.append(summary("NumPy", slow))
    if args.layer_call:
        again: list[float] = []
        lines.append(summary("layer call", layer_calls(calls, args.repeats, again=again)))
        lines.append(summary("layer call again", again))
        for warm_ in (True, False):
            alone, two, one = whole_calls(calls, args.repeats, warm_)
            at = "placement split before" if warm_ else "new placement"
            lines += [summary(f"split ({at})", alone), summary("in two calls with the step", two)]
            lines.append(summary("in one call with the step", one))
        if args.cold:
            lines.append(summary("layer call cold", layer_calls(calls, 1, cold=True)))
    print(f"{what}: {len(calls)} decisions, {made} bursts; " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
