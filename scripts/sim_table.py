#!/usr/bin/env python3
"""The simulator's headline table: mean and p95 step time over the perfect-balance bound, for
every system on every workload, model and cluster, from ``swiftmoe sim`` runs (docs/figures.sh).

Rows: the synthetic workload classes (fixed-hot, moving-hot, burst, half-idle, uniform) at E=64
top-8 (6 slots per GPU) and E=32 top-2 (4 slots), and the recorded traces of testdata/traces/
at their own experts and top-k; each on 16 GPUs in 2 nodes and 32 GPUs in 4 nodes (8 per node),
with 12.5 and 50 GB/s per GPU between nodes; H200 calibration, GPT-Small experts, 4,096 tokens
per GPU per iteration. Every run is one ``swiftmoe sim`` command (printed), its JSON kept in
--work. A synthetic trace is drawn once per workload, model and cluster (--write-trace) and
replayed at the second bandwidth (--trace).

    python3 scripts/sim_table.py --out docs/sim-table.md --json docs/sim-table.json
    python3 scripts/sim_table.py --quick    # a few rows, few iterations: a smoke run

Targets checked per row (the issue's): SwiftMoE with burst replicas within 1.10x the bound in
mean and 1.30x at p95 on every shifting or skewed workload, never slower (mean step) than any
baseline, and within 2% of static-nopad on uniform routing; the table marks each row.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = ("fixed-hot", "moving-hot", "burst", "half-idle", "uniform")
MODELS = {"e64-top8": (64, 8, 6), "e32-top2": (32, 2, 4)}  # experts, top-k, slots per GPU
CLUSTERS = (16, 32)  # GPUs, 8 per node
BANDWIDTHS = (12.5, 50.0)  # GB/s per GPU between nodes
SYSTEMS = (
    "swiftmoe-burst",
    "swiftmoe",
    "static-nopad",
    "static-dropless",
    "static-cf1.0",
    "static-cf2.0",
    "flexmoe-10",
    "flexmoe-50",
    "flexmoe-100",
)
BASELINES = SYSTEMS[2:]
HEADLINE = "static-nopad"
MEAN_TARGET, P95_TARGET, UNIFORM_TARGET = 1.10, 1.30, 1.02


@dataclass(frozen=True)
class Row:
    workload: str  # a synthetic class or a trace file's stem
    model: str  # MODELS key, or the trace's "eE-topK"
    experts: int
    top_k: int
    slots: int
    gpus: int
    inter_bw: float
    trace: Path | None = None  # a recorded trace
    layers: int = 1

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.model}/{self.gpus}gpu/{self.inter_bw:g}GBps"

    @property
    def shifting(self) -> bool:
        return self.workload != "uniform"


def recorded_traces() -> list[tuple[Path, int, int]]:
    """(path, experts, top-k) of testdata/traces/*-eE-topK-*.jsonl."""
    out = []
    for p in sorted((ROOT / "testdata" / "traces").glob("*.jsonl")):
        parts = p.stem.split("-")
        e = next((int(x[1:]) for x in parts if x[:1] == "e" and x[1:].isdigit()), 0)
        k = next((int(x[3:]) for x in parts if x.startswith("top") and x[3:].isdigit()), 0)
        if e and k:
            out.append((p, e, k))
    return out


def rows(quick: bool) -> list[Row]:
    out = []
    for w in SYNTHETIC:
        for m, (e, k, s) in MODELS.items():
            for n in CLUSTERS:
                for bw in BANDWIDTHS:
                    out.append(Row(w, m, e, k, s, n, bw))
    for path, e, k in recorded_traces():
        s = 6 if k > 2 else 4
        for n in CLUSTERS:
            for bw in BANDWIDTHS:
                out.append(Row(path.stem, f"e{e}-top{k}", e, k, s, n, bw, trace=path, layers=4))
    if quick:
        keep = {("moving-hot", "e64-top8"), ("uniform", "e32-top2")}
        out = [r for r in out if (r.workload, r.model) in keep and r.gpus == 16]
    return out


def command(r: Row, iterations: int, work: Path) -> list[str]:
    tokens = 4096 * r.gpus
    cmd = [
        sys.executable, "-m", "swiftmoe.cli", "sim", "--quiet",
        "--gpus", str(r.gpus), "--gpus-per-node", "8", "--slots", str(r.slots),
        "--top-k", str(r.top_k), "--inter-bw", f"{r.inter_bw:g}", "--shape", "gpt-small",
        "--tokens-per-iter", str(tokens), "--iterations", str(iterations),
        "--systems", "bound," + ",".join(SYSTEMS),
        "--output", str(work / (r.key.replace("/", "_") + ".json")),
    ]  # fmt: skip
    if r.trace is not None:
        return [*cmd, "--trace", str(r.trace)]
    drawn = work / f"{r.workload}_{r.model}_{r.gpus}gpu.jsonl"
    if r.inter_bw == BANDWIDTHS[0]:
        return [
            *cmd, "--synthetic-experts", str(r.experts), "--workload", r.workload,
            "--write-trace", str(drawn),
        ]  # fmt: skip
    return [*cmd, "--trace", str(drawn)]  # drawn by the row at the first bandwidth


def run_sim(cmd: list[str], what: str) -> None:
    """Runs one ``swiftmoe sim`` command from the repository root with pyshim importable;
    RuntimeError naming ``what``, the command and its stderr when it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            x for x in (str(ROOT / "pyshim"), os.environ.get("PYTHONPATH", "")) if x
        ),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"{what}: {' '.join(cmd)}\n{proc.stderr}")


def run_row(r: Row, iterations: int, work: Path) -> dict:
    cmd = command(r, iterations, work)
    t0 = time.monotonic()
    run_sim(cmd, r.key)
    doc = json.loads((work / (r.key.replace("/", "_") + ".json")).read_text())
    s = doc["summary"]["systems"]
    out = {
        "row": r.key,
        "workload": r.workload,
        "model": r.model,
        "gpus": r.gpus,
        "inter_bw_GBps": r.inter_bw,
        "iterations": doc["iterations"] if isinstance(doc["iterations"], int) else iterations,
        "bound_mean_step_ms": s["bound"]["mean_step_ms"],
        "seconds": round(time.monotonic() - t0, 1),
        "command": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
        "systems": {},
    }
    for name in SYSTEMS:
        d = s[name]
        out["systems"][name] = {
            "mean_over_bound": d["over_bound"],
            "p95_over_bound": d["per_iteration_over_bound"]["p95"],
            "mean_step_ms": d["mean_step_ms"],
            "dropped_fraction": d["dropped_fraction"],
        }
    return out


def verdict(r: Row, res: dict) -> tuple[bool, str]:
    """Whether SwiftMoE (with bursts) meets the row's targets, and what it misses."""
    sw = res["systems"]["swiftmoe-burst"]
    misses = []
    if r.shifting:
        if sw["mean_over_bound"] > MEAN_TARGET:
            misses.append(f"mean {sw['mean_over_bound']:.2f} > {MEAN_TARGET}")
        if sw["p95_over_bound"] > P95_TARGET:
            misses.append(f"p95 {sw['p95_over_bound']:.2f} > {P95_TARGET}")
    else:
        head = res["systems"][HEADLINE]["mean_step_ms"]
        if sw["mean_step_ms"] > UNIFORM_TARGET * head:
            misses.append(f"{sw['mean_step_ms'] / head:.3f}x static-nopad > {UNIFORM_TARGET}")
    # Never slower than a baseline; on uniform routing "within 2% of static" is the target.
    slack = 1.0 if r.shifting else UNIFORM_TARGET
    for b in BASELINES:
        base = res["systems"][b]["mean_step_ms"]
        if sw["mean_step_ms"] > slack * base * (1 + 1e-9):
            drop = res["systems"][b]["dropped_fraction"]
            extra = f", which drops {100 * drop:.0f}% of tokens" if drop > 0 else ""
            misses.append(f"{sw['mean_step_ms'] / base:.3f}x {b}{extra}")
    return not misses, "; ".join(misses)


def markdown(results: list[tuple[Row, dict]], minutes: float, iterations: int) -> str:
    short = {
        "swiftmoe-burst": "SwiftMoE",
        "swiftmoe": "SwiftMoE, no bursts",
        "static-nopad": "static no-pad",
        "static-dropless": "static padded",
        "static-cf1.0": "static cf1.0",
        "static-cf2.0": "static cf2.0",
        "flexmoe-10": "FlexMoE-10",
        "flexmoe-50": "FlexMoE-50",
        "flexmoe-100": "FlexMoE-100",
    }
    head = ["workload", "model", "GPUs", "GB/s"] + [short[s] for s in SYSTEMS] + ["targets"]
    lines = [
        f"Mean / p95 step time over the perfect-balance bound ({iterations} iterations per row; "
        f"{minutes:.0f} minutes for the whole table). SwiftMoE is the swiftmoe strategy with the "
        "engine's burst replicas; targets: mean <= 1.10 and p95 <= 1.30 on shifting or skewed "
        "workloads, within 2% of static no-pad on uniform routing, and never slower than a "
        "baseline.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r, res in results:
        ok, why = verdict(r, res)
        cells = [r.workload, r.model, str(r.gpus), f"{r.inter_bw:g}"]
        for s in SYSTEMS:
            d = res["systems"][s]
            cell = f"{d['mean_over_bound']:.2f} / {d['p95_over_bound']:.2f}"
            if d["dropped_fraction"] > 0:
                cell += f" ({100 * d['dropped_fraction']:.0f}% dropped)"
            cells.append(cell)
        cells.append("met" if ok else "missed: " + why)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, help="write the markdown table here (default: stdout)")
    ap.add_argument("--json", type=Path, help="write every row's figures and command here")
    ap.add_argument("--iterations", type=int, default=60, help="iterations per run (default 60)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="runs at once (default: the CPUs)",
    )
    ap.add_argument("--work", type=Path, help="keep each run's JSON and drawn trace here")
    ap.add_argument("--quick", action="store_true", help="a few rows only (a smoke run)")
    args = ap.parse_args()
    if args.iterations < 4 or args.jobs < 1:
        ap.error("--iterations must be >= 4 and --jobs >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="sim-table-"))
    work.mkdir(parents=True, exist_ok=True)
    todo = rows(args.quick)
    # A synthetic row at the second bandwidth replays the trace its first-bandwidth row drew.
    first = [r for r in todo if r.trace is not None or r.inter_bw == BANDWIDTHS[0]]
    later = [r for r in todo if r not in first]
    results: dict[str, dict] = {}
    t0 = time.monotonic()
    done = 0
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for batch in (first, later):
            futs = {pool.submit(run_row, r, args.iterations, work): r for r in batch}
            for f in cf.as_completed(futs):
                r = futs[f]
                results[r.key] = f.result()
                done += 1
                el = time.monotonic() - t0
                print(
                    f"sim_table: {done}/{len(todo)} {r.key} in {results[r.key]['seconds']:.0f}s; "
                    f"{el / 60:.1f} min elapsed, ~{el / done * (len(todo) - done) / 60:.1f} "
                    "min left",
                    file=sys.stderr,
                    flush=True,
                )
    minutes = (time.monotonic() - t0) / 60
    ordered = [(r, results[r.key]) for r in todo]
    table = markdown(ordered, minutes, args.iterations)
    if args.out:
        args.out.write_text(table)
    else:
        print(table)
    if args.json:
        doc = {
            "iterations": args.iterations,
            "minutes": round(minutes, 1),
            "rows": [
                {**res, "targets_met": verdict(r, res)[0], "missed": verdict(r, res)[1]}
                for r, res in ordered
            ],
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
