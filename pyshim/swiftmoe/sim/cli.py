"""``swiftmoe sim``: the trace-driven cluster simulator's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Progress", "add_parser", "run"]

DESCRIPTION = """\
Replays a routing trace (JSON Lines of DESIGN.md, or a synthetic workload) on a simulated cluster
and compares systems: SwiftMoE (the real swiftmoe strategy plugin through a real sidecar, given
the cluster's link bandwidths and cost model, so it plans for step time), SwiftMoE with the
engine's burst replicas (swiftmoe-burst), static expert parallelism dropless without padding
(static-nopad: what Megatron-Core and torchtitan run, the headline baseline), dropless padded to
the largest expert and with capacity factors (tokens dropped), FlexMoE at rebalance intervals
(the flexmoe plugin, migration cost included), and the perfect-balance bound. Tokens are split
across replicas by swiftmoe.engine.split, the engine's split, on per-source counts spread evenly
from the trace's global counts.

Step time per iteration = expert compute (slowest rank, from a calibration table) + token
all-to-all (4 exchanges per layer) + gradient and weight transfers (charged to every system
alike) + migration (FlexMoE) + burst copies and --decision-ms (swiftmoe-burst) + --split-ms
(swiftmoe, swiftmoe-burst) + --other-ms.
The model is documented in swiftmoe/sim/model.py.

Synthetic workloads (--synthetic-experts E --workload NAME): zipf (drifting Zipf skew, the
default), fixed-hot (a few experts take about --hot-share of the selections), moving-hot (the
same, a new hot set every --shift-every iterations, default 3), burst (--burst-every - 1 ordinary
iterations, then one with a sharp new hot set), half-idle (half the experts get no tokens),
uniform (the control).
"""

EPILOG = """\
examples:
  swiftmoe sim --trace testdata/traces/cheaders-e8-top2-aux0.jsonl --gpus 16 --slots 4 \\
      --tokens-per-iter 65536 --shape gpt-small
  swiftmoe sim --synthetic-experts 256 --gpus 1024 --slots 4 --iterations 1000 --json
  swiftmoe sim --synthetic-experts 64 --top-k 8 --workload moving-hot --gpus 16 --slots 6 \\
      --iterations 60
"""


def _decision_ms(v: str) -> float | str:
    """--decision-ms: milliseconds >= 0 (checked by SimConfig), or "measured"."""
    if v.strip().lower() == "measured":
        return "measured"
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{v!r} is neither milliseconds (a number >= 0) nor 'measured'"
        ) from None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from swiftmoe.sim.systems import DEFAULT_SYSTEMS
    from swiftmoe.sim.trace import add_skew_arguments
    from swiftmoe.sim.workloads import (
        DEFAULT_BURST_EVERY,
        DEFAULT_HOT_SHARE,
        WORKLOADS,
    )

    p = sub.add_parser(
        "sim",
        help="simulate a cluster from a routing trace: SwiftMoE vs FlexMoE vs static vs bound",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("trace")
    g.add_argument("--trace", type=Path, help="routing trace, JSON Lines (or use --synthetic-*)")
    g.add_argument("--iterations", type=int, default=0, help="iterations to replay (0: all)")
    g.add_argument(
        "--tokens-per-iter",
        type=int,
        default=0,
        help="tokens per iteration; every layer's counts are scaled to this x top-k (0: as "
        "recorded; synthetic: 4096 per GPU)",
    )
    g.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    g.add_argument("--synthetic-experts", type=int, default=0, help="draw a synthetic trace")
    g.add_argument("--synthetic-layers", type=int, default=1, help="synthetic MoE layers")
    g.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="zipf",
        help="synthetic workload class (default zipf; see above)",
    )
    add_skew_arguments(g, zipf=1.0, shift_every=0, what="synthetic")
    g.add_argument("--drift", type=int, default=1, help="zipf: adjacent swaps per iteration")
    g.add_argument(
        "--hot-experts",
        type=int,
        default=0,
        help="fixed-hot, moving-hot, burst: experts in the hot set (0: the fewest that can take "
        "--hot-share, 5 for top-8 and 2 for top-2 at 0.5)",
    )
    g.add_argument(
        "--hot-share",
        type=float,
        default=DEFAULT_HOT_SHARE,
        help=f"fixed-hot, moving-hot, burst: share of the selections the hot set takes "
        f"(default {DEFAULT_HOT_SHARE:g})",
    )
    g.add_argument(
        "--burst-every",
        type=int,
        default=DEFAULT_BURST_EVERY,
        help=f"burst: one burst iteration every N (default {DEFAULT_BURST_EVERY})",
    )
    g.add_argument("--seed", type=int, default=0, help="synthetic trace seed")
    g.add_argument("--write-trace", type=Path, help="also write the (scaled) trace here")
    c = p.add_argument_group("cluster")
    c.add_argument("--gpus", type=int, default=16)
    c.add_argument("--gpus-per-node", type=int, default=8)
    c.add_argument("--slots", type=int, default=4, help="SwiftMoE/FlexMoE slots per GPU")
    c.add_argument(
        "--static-slots", type=int, default=0, help="static slots per GPU (0: same as --slots)"
    )
    c.add_argument("--d-model", type=int, default=768)
    c.add_argument("--d-ff", type=int, default=3072)
    c.add_argument("--gated", action="store_true", help="gated (SwiGLU) experts: 3 matrices")
    c.add_argument("--bytes-per-param", type=int, default=2, help="weights, grads, tokens (2)")
    c.add_argument("--optimizer-bytes", type=int, default=12, help="optimizer bytes/param (12)")
    c.add_argument("--intra-bw", type=float, default=300.0, help="intra-node GB/s (300)")
    c.add_argument("--inter-bw", type=float, default=12.5, help="inter-node GB/s per GPU (12.5)")
    c.add_argument("--pcie-bw", type=float, default=25.0, help="PCIe GB/s for --offload (25)")
    c.add_argument("--offload", action="store_true", help="optimizer state offloaded to host")
    c.add_argument("--other-ms", type=float, default=0.0, help="non-MoE ms per iteration (0)")
    m = p.add_argument_group("compute")
    m.add_argument(
        "--calibration",
        type=Path,
        help="table (default: h200-expert-ffn.json, bundled with the package)",
    )
    m.add_argument("--shape", help="table shape name or prefix (default: closest d_model/d_ff)")
    m.add_argument(
        "--compute-model",
        choices=("auto", "per-slot", "grouped"),
        default="auto",
        help="per-slot kernels or one grouped GEMM per rank (auto: grouped on a GPU table)",
    )
    s = p.add_argument_group("systems and output")
    s.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma list ({DEFAULT_SYSTEMS})")
    s.add_argument(
        "--swiftmoe-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="swiftmoe (and swiftmoe-burst) strategy option, repeatable, e.g. objective=compute "
        "or predictor=ewma",
    )
    s.add_argument(
        "--burst-slots",
        type=int,
        default=1,
        help="swiftmoe-burst: burst slots per GPU (default 1, the engine's)",
    )
    s.add_argument(
        "--burst-threshold",
        type=float,
        default=1.1,
        help="swiftmoe-burst: busiest rank over the mean above which bursts are considered "
        "(default 1.1, the engine's)",
    )
    s.add_argument(
        "--decision-ms",
        type=_decision_ms,
        default=0.0,
        metavar="MS|measured",
        help="swiftmoe-burst: host milliseconds charged to each layer call whose burst decision "
        "runs (past --burst-threshold), whatever it makes; the engine decides on the CPU before "
        "the dispatch. 'measured': each call's own wall time on this host, with the decision "
        "the engine would run here (C when built, see swiftmoe doctor; not deterministic). "
        "Default 0: not charged",
    )
    s.add_argument(
        "--decision-gate",
        choices=("on", "off"),
        default="on",
        help="swiftmoe-burst: the engine's decision gate (burst_decision_ms), with --decision-ms "
        "as the decision's host time (with 'measured', the median of the iteration before's "
        "decisions): past the threshold a decision stops where the planned split's modelled "
        "step is within that above the lowest step the layer's decisions of the last 16 "
        "iterations reached; a stopped call is charged nothing. Default on; it does nothing "
        "where --decision-ms is 0",
    )
    s.add_argument(
        "--split-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="swiftmoe and swiftmoe-burst: host milliseconds charged to every layer call for the "
        "engine's token split of the planned placement and its checks, made on the CPU between "
        "the counts' all-reduce and the dispatch (`layer min` of scripts/bench_split.py measures "
        "it). Default 0: not charged",
    )
    s.add_argument(
        "--split-new-ms",
        type=float,
        default=None,
        metavar="MS",
        help="swiftmoe and swiftmoe-burst: charged instead of --split-ms on a layer call whose "
        "placement changed since the iteration before (and in the first iteration): the "
        "engine's first split of a new placement, its caches cold (`layer new` of "
        "scripts/bench_split.py). Default: --split-ms",
    )
    s.add_argument(
        "--decision-new-ms",
        type=float,
        default=None,
        metavar="MS",
        help="swiftmoe-burst: charged instead of --decision-ms on such a layer call "
        "(scripts/bench_decision.py --layer-call's 'new placement' figures). Default: "
        "--decision-ms",
    )
    s.add_argument(
        "--split",
        choices=("auto", "fast", "exact"),
        default="auto",
        help="swiftmoe and swiftmoe-burst: the engine's split_method (default auto: on several "
        "nodes the cheaper by the cost model of the min-max and the node-balanced amounts; fast "
        "and exact: the min-max amounts)",
    )
    s.add_argument("--flexmoe-threshold", type=float, help="flexmoe threshold option")
    s.add_argument("--flexmoe-max-moves", type=int, help="flexmoe max_moves option")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (per iteration and summary)")
    fmt.add_argument("--table", action="store_true", help="print the table (the default)")
    s.add_argument("--output", type=Path, help="also write the JSON here")
    s.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (every 5 s on long runs)"
    )
    s.add_argument("--binary", help="swiftmoe-sidecar to use (default: bundled / bin/)")
    s.add_argument("--plugins-dir", help="strategy plugins folder (default: beside the binary)")
    s.add_argument("--plugin-timeout", type=float, default=30.0, help="seconds per plan (30)")
    return p


def _err(msg: str) -> int:
    print(f"swiftmoe sim: error: {msg}", file=sys.stderr)
    return 2


class Progress:
    """simulate's progress callback: one line on stderr every ``every_s`` seconds of ``clock``,
    none on a run shorter than that: ``swiftmoe sim: iteration i/N, Ts elapsed, ~Rs left``."""

    def __init__(self, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._t0 = clock()
        self._next = self._t0 + every_s

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every_s
        elapsed = now - self._t0
        print(
            f"swiftmoe sim: iteration {done}/{total}, {elapsed:.0f}s elapsed, "
            f"~{elapsed * (total - done) / done:.0f}s left",
            file=sys.stderr,
            flush=True,
        )


def _check_writable(flag: str, path: Path | None) -> None:
    """ValueError naming ``flag`` when ``path`` cannot be written (its folder is missing or
    read-only, or it is a folder)."""
    if path is None:
        return
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: pass a file path")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path} is not writable: pass a path you can write")


def run(args: argparse.Namespace) -> int:
    from swiftmoe.planning.client import SidecarError
    from swiftmoe.sim import calibration, model, report, systems, trace, workloads
    from swiftmoe.sim.run import FLOPS_PER_PARAM, SimConfig, simulate

    try:
        if (args.trace is None) == (args.synthetic_experts == 0):
            raise ValueError("pass exactly one of --trace FILE and --synthetic-experts E")
        if args.trace is not None and args.workload != "zipf":
            raise ValueError(
                f"--workload {args.workload} draws a synthetic trace: pass --synthetic-experts E "
                "instead of --trace"
            )
        for name in ("iterations", "tokens_per_iter"):
            v = getattr(args, name)
            if v < 0:
                raise ValueError(f"--{name.replace('_', '-')} is {v}: pass an integer >= 0")
        if args.top_k < 1:
            raise ValueError(f"--top-k is {args.top_k}: pass an integer >= 1")
        # Checked before the run, which can take minutes: the files are written after it.
        for flag, path in (("--output", args.output), ("--write-trace", args.write_trace)):
            _check_writable(flag, path)
        if args.trace is not None:
            loads = trace.read_trace(args.trace, args.iterations)
            source = f"{args.trace} ({loads.shape[0]} iterations)"
            if args.tokens_per_iter:
                loads = trace.scale_loads(loads, args.tokens_per_iter * args.top_k)
        else:  # drawn while the replay runs (trace.StreamedTrace), started just before it
            n_it = args.iterations or 1000
            shift = args.shift_every
            if args.workload == "moving-hot" and not shift:
                shift = workloads.DEFAULT_SHIFT_EVERY
            hot = args.hot_experts or workloads.default_hot_experts(args.top_k, args.hot_share)
            rows = workloads.workload_iterations(
                args.workload,
                args.synthetic_experts,
                args.synthetic_layers,
                n_it,
                args.tokens_per_iter or 4096 * args.gpus,
                args.top_k,
                seed=args.seed,
                hot_experts=hot,
                hot_share=args.hot_share,
                shift_every=shift,
                burst_every=args.burst_every,
                zipf=args.zipf,
                drift=args.drift,
            )
            loads = None
            what = workloads.describe(
                args.workload,
                args.synthetic_experts,
                args.top_k,
                hot,
                args.hot_share,
                shift,
                args.burst_every,
                args.zipf,
                args.drift,
            )
            source = (
                f"synthetic {args.workload}: {args.synthetic_experts} experts, "
                f"{args.synthetic_layers} layer(s), {what}, seed {args.seed}"
            )
        et = calibration.load_table(
            args.calibration, args.shape, args.d_model, args.d_ff, args.gated
        )
        cm = args.compute_model
        if cm == "auto":
            cm = "grouped" if et.is_gpu else "per-slot"
        cluster = model.Cluster(
            gpus=args.gpus,
            gpus_per_node=args.gpus_per_node,
            d_model=args.d_model,
            d_ff=args.d_ff,
            gated=args.gated,
            bytes_per_param=args.bytes_per_param,
            optimizer_bytes=args.optimizer_bytes,
            intra_bw=args.intra_bw * 1e9,
            inter_bw=args.inter_bw * 1e9,
            pcie_bw=args.pcie_bw * 1e9,
            offload=args.offload,
            compute_model=cm,
        )
        flex: dict[str, str] = {}
        if args.flexmoe_threshold is not None:
            flex["threshold"] = repr(float(args.flexmoe_threshold))
        if args.flexmoe_max_moves is not None:
            flex["max_moves"] = str(args.flexmoe_max_moves)
        swift: dict[str, str] = {}
        for kv in args.swiftmoe_option:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise ValueError(
                    f"--swiftmoe-option {kv!r}: pass KEY=VALUE, e.g. --swiftmoe-option "
                    "objective=compute"
                )
            swift[k] = v
        specs = systems.parse_systems(args.systems, flex, swift)
        if loads is not None:
            mean_rank = float(loads.sum()) / (loads.shape[0] * loads.shape[1] * args.gpus)
        else:
            mean_rank = (args.tokens_per_iter or 4096 * args.gpus) * args.top_k / args.gpus
        flops_per_token = FLOPS_PER_PARAM * cluster.expert_numel
        cfg = SimConfig(
            cluster=cluster,
            slots=args.slots,
            static_slots=args.static_slots or args.slots,
            other_ms=args.other_ms,
            flops_per_s=et.flops_per_s(flops_per_token, mean_rank),
            burst_slots=args.burst_slots,
            burst_threshold=args.burst_threshold,
            decision_ms=0.0 if args.decision_ms == "measured" else args.decision_ms,
            decision_measured=args.decision_ms == "measured",
            decision_gate=args.decision_gate == "on",
            split_ms=args.split_ms,
            split_new_ms=args.split_new_ms,
            decision_new_ms=args.decision_new_ms,
            split_method=args.split,
            plugin_timeout_s=args.plugin_timeout,
        )
        streamed = None
        if loads is None:
            streamed = trace.StreamedTrace(
                (n_it, args.synthetic_layers, args.synthetic_experts), rows
            )
            loads = streamed.loads_ILE
        try:
            res = simulate(
                streamed or loads,
                cfg,
                et,
                specs,
                binary=args.binary,
                plugins_dir=args.plugins_dir,
                progress=None if args.quiet else Progress(),
            )
        finally:
            if streamed is not None:
                streamed.close()
    except ValueError as e:
        return _err(str(e))
    except SidecarError as e:
        return _err(f"{e}\n(the simulator drives the real strategy plugins: run `make build`)")
    routed = int(loads.sum())
    tokens_per_iter = routed / loads.shape[0] / loads.shape[1] / args.top_k
    summary = report.summarize(res, routed)
    n_it, L, E = loads.shape
    meta = {
        "trace": source,
        "iterations": n_it,
        "layers": L,
        "experts": E,
        "tokens_per_iter": tokens_per_iter,
        "top_k": args.top_k,
        "calibration": {
            "table": et.table,
            "device": et.device,
            "shape": et.shape,
            "compute_model": cm,
        },
        "cluster": {
            "gpus": args.gpus,
            "gpus_per_node": args.gpus_per_node,
            "slots": cfg.slots,
            "static_slots": cfg.static_slots,
            "d_model": args.d_model,
            "d_ff": args.d_ff,
            "gated": args.gated,
            "expert_params": cluster.expert_numel,
            "bytes_per_param": args.bytes_per_param,
            "optimizer_bytes": args.optimizer_bytes,
            "intra_bw_GBps": args.intra_bw,
            "inter_bw_GBps": args.inter_bw,
            "pcie_bw_GBps": args.pcie_bw,
            "offload": args.offload,
            "other_ms": args.other_ms,
        },
    }
    doc = report.to_json(res, summary, meta)
    try:
        if args.output:
            args.output.write_text(json.dumps(doc) + "\n")
        if args.write_trace:
            trace.write_trace(args.write_trace, loads)
    except OSError as e:
        _err(f"writing the results: {e}")
        if not args.json:  # the results still reach the terminal
            print(report.format_table(res, summary))
        return 1
    if args.json:
        print(json.dumps(doc))
        return 0
    print(
        f"trace: {source}; {n_it} iterations x {L} layer(s) x {E} experts, "
        f"{tokens_per_iter:,.0f} tokens/iteration, top-{args.top_k}"
    )
    print(
        f"cluster: {args.gpus} GPUs ({args.gpus_per_node}/node), {cfg.slots} slots/GPU "
        f"(static {cfg.static_slots}), expert d{args.d_model} f{args.d_ff}"
        f"{' gated' if args.gated else ''}, intra {args.intra_bw:g} GB/s, inter {args.inter_bw:g} "
        f"GB/s{', offload over PCIe ' + format(args.pcie_bw, 'g') + ' GB/s' if args.offload else ''}"
    )
    print(f"compute: {et.table} [{et.device}], shape {et.shape!r}, {cm} model")
    if (
        et.shape
        and (d := calibration._dims(et.shape))
        and (d[0], d[1]) != (args.d_model, args.d_ff)
    ):
        print(f"note: the table's shape is d{d[0]} f{d[1]}, not d{args.d_model} f{args.d_ff}")
    print(
        f"simulated in {res.timing_s['total_s']:.1f}s (split {res.timing_s['split_s']:.1f}s, "
        f"sidecar {res.timing_s['sidecar_s']:.1f}s); ms per iteration, means over iterations\n"
    )
    print(report.format_table(res, summary))
    return 0
