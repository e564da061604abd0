#!/usr/bin/env python3
"""The README's prediction table: SwiftMoE (with burst replicas) under each of the sidecar's
predictors, mean and p95 step time over the perfect-balance bound, from ``swiftmoe sim`` runs.

Workloads: the synthetic moving-hot, burst, fixed-hot and zipf classes at E=64 top-8 (6 slots per
GPU) and E=32 top-2 (4 slots), and the recorded E=32 and E=64 traces of testdata/traces/; each on
16 simulated H200s in 2 nodes of 8 with 12.5 GB/s per GPU between nodes, GPT-Small experts and
4,096 tokens per GPU per iteration (the headline table's cluster, scripts/sim_table.py). The
predictors are the sidecar's (``--swiftmoe-option predictor=NAME``): last (the default), ewma,
max and hedge. Every run is one ``swiftmoe sim`` command (printed with --verbose); a synthetic
trace is drawn once per workload and replayed under every predictor, so they see the same loads.

    python3 scripts/predictor_table.py                  # the markdown table on stdout
    python3 scripts/predictor_table.py --json out.json  # and every run's figures
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sim_table import MODELS, recorded_traces, run_sim

PREDICTORS = ("last", "ewma", "max", "hedge")
SYNTHETIC = ("moving-hot", "burst", "fixed-hot", "zipf")
GPUS, INTER_BW = 16, 12.5


def workloads(seed: int = 0) -> list[tuple[str, list[str], list[str]]]:
    """(name, the sim flags that give its loads, those that give its model) of every workload;
    ``seed`` draws the synthetic ones."""
    out = []
    for w in SYNTHETIC:
        for e, k, s in MODELS.values():
            loads = ["--synthetic-experts", str(e), "--workload", w, "--seed", str(seed)]
            out.append((f"{w} E={e}", loads, ["--top-k", str(k), "--slots", str(s)]))
    for path, e, k in recorded_traces():
        if e in (32, 64):
            model = ["--top-k", str(k), "--slots", "6" if k > 2 else "4"]
            out.append((f"recorded E={e}", ["--trace", str(path)], model))
    return out


def sim_command(flags: list[str], systems: str, iterations: int, out: Path) -> list[str]:
    """One ``swiftmoe sim`` run on the table's cluster."""
    return [
        sys.executable, "-m", "swiftmoe.cli", "sim", "--quiet",
        "--gpus", str(GPUS), "--gpus-per-node", "8", "--inter-bw", f"{INTER_BW:g}",
        "--shape", "gpt-small", "--tokens-per-iter", str(4096 * GPUS),
        "--iterations", str(iterations), "--systems", systems, "--output", str(out), *flags,
    ]  # fmt: skip


def run(name: str, flags: list[str], predictor: str, iterations: int, work: Path) -> dict:
    out = work / f"{name.replace(' ', '_').replace('=', '')}_{predictor}.json"
    opt = ["--swiftmoe-option", f"predictor={predictor}"]
    cmd = sim_command([*opt, *flags], "bound,swiftmoe-burst", iterations, out)
    run_sim(cmd, f"{name} predictor={predictor}")
    d = json.loads(out.read_text())["summary"]["systems"]["swiftmoe-burst"]
    return {
        "workload": name,
        "predictor": predictor,
        "mean_over_bound": d["over_bound"],
        "p95_over_bound": d["per_iteration_over_bound"]["p95"],
        "command": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
    }


def draw(name: str, loads: list[str], model: list[str], iterations: int, work: Path) -> list[str]:
    """The flags that replay a workload's loads: a synthetic workload's trace is drawn once
    (--write-trace, by the bound alone), so that every predictor sees the same loads."""
    if "--trace" in loads:
        return [*loads, *model]
    stem = work / name.replace(" ", "_").replace("=", "")
    path = stem.with_suffix(".jsonl")
    cmd = sim_command([*loads, *model, "--write-trace", str(path)], "bound", iterations, stem)
    run_sim(cmd, f"{name}: drawing its trace")
    return ["--trace", str(path), *model]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", type=Path, help="write every run's figures and command here")
    ap.add_argument(
        "--iterations", type=int, default=48, help="iterations per synthetic run (default 48)"
    )
    ap.add_argument(
        "--trace-iterations", type=int, default=60, help="iterations per recorded trace (60)"
    )
    ap.add_argument(
        "--jobs", type=int, default=max(1, os.cpu_count() or 1), help="runs at once (the CPUs)"
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic workloads (default 0, the headline table's); other seeds "
        "show how far the predictors' ranking holds",
    )
    ap.add_argument("--verbose", action="store_true", help="print every run's command")
    args = ap.parse_args()
    if args.iterations < 4 or args.trace_iterations < 4 or args.jobs < 1:
        ap.error("--iterations and --trace-iterations must be >= 4, --jobs >= 1")
    work = Path(tempfile.mkdtemp(prefix="predictor-table-"))
    t0 = time.monotonic()
    todo = workloads(args.seed)
    its = {n: args.trace_iterations if "--trace" in f else args.iterations for n, f, _ in todo}
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        names = [n for n, _, _ in todo]
        drawn = dict(zip(names, pool.map(lambda w: draw(*w, its[w[0]], work), todo), strict=True))
        futs = [pool.submit(run, n, drawn[n], p, its[n], work) for n in names for p in PREDICTORS]
        results = []
        for i, f in enumerate(cf.as_completed(futs), 1):
            r = f.result()
            results.append(r)
            if args.verbose:
                print(r["command"], file=sys.stderr)
            print(
                f"predictor_table: {i}/{len(futs)} {r['workload']} {r['predictor']}; "
                f"{(time.monotonic() - t0) / 60:.1f} min elapsed",
                file=sys.stderr,
                flush=True,
            )
    by = {(r["workload"], r["predictor"]): r for r in results}
    lines = [
        "| workload | " + " | ".join(PREDICTORS) + " |",
        "|---|" + "---|" * len(PREDICTORS),
    ]
    for n in names:
        cells = [
            f"{by[n, p]['mean_over_bound']:.2f} / {by[n, p]['p95_over_bound']:.2f}"
            for p in PREDICTORS
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for key, label in (("mean_over_bound", "mean of the means"), ("p95_over_bound", "mean p95")):
        cells = [f"{sum(by[n, p][key] for n in names) / len(names):.3f}" for p in PREDICTORS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
