"""``swiftmoe report``: the command line of the report (``python3 -m swiftmoe.report``).

    swiftmoe report --trace trace.jsonl [--sim sim.json] [--loss DIR] --out DIR
    swiftmoe report --trace trace.jsonl --plan-strategy swiftmoe --world-size 4 --slots 4 --out DIR

Figures (each written only when its inputs are given):
    load-heatmap.png      expert load / mean load over iterations, one panel per MoE layer (--trace)
    replicas.png          replicas per expert over iterations (--sim with per-iteration replicas,
                          or --plan-strategy: the real strategy plugin, driven through the sidecar
                          exactly as a training job drives it, one ReportLoads per iteration)
    step-time.png         seconds per iteration per system (--sim)
    loss-vs-time.png      loss against wall time per system: each system's loss curve (dropless
                          or its capacity factor, from --loss) times its seconds per iteration
                          (--sim; without it, the step times measured in the loss files)

and ``report.json`` (the figures written and the time-to-target table). The inputs are described
in ``swiftmoe.report.readers``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swiftmoe.report.convergence import table_text, time_to_target_table
from swiftmoe.report.plots import (
    plot_load_heatmap,
    plot_loss_vs_time,
    plot_replicas,
    plot_step_times,
)
from swiftmoe.report.readers import SimSystem, read_loss_dir, read_sim, read_trace
from swiftmoe.report.replay import plans_from_sidecar

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swiftmoe report",
        description="Turn a routing trace, simulator results and loss curves into PNG plots "
        "(load heatmap, replicas per expert, step time per system, loss against wall time) and a "
        "time-to-target-loss table.",
        epilog="Simulator JSON: `swiftmoe sim --output FILE`, {system: seconds_per_iteration} "
        'or {"systems": [{"name", '
        '"step_s" or "mean_step_s", "tokens_dropped", "replicas"}]}. Loss directory: '
        "loss-NAME.jsonl files from scripts/convergence.py (NAME dropless or cfX).",
    )
    p.add_argument("--trace", help="routing trace (JSON Lines) for the load heatmap")
    p.add_argument("--sim", help="simulator results JSON (step time per system, replicas)")
    p.add_argument("--loss", help="directory of loss-NAME.jsonl curves")
    p.add_argument("--out", required=True, help="directory the PNGs and report.json go to")
    p.add_argument(
        "--plan-strategy",
        help="replicas plot from this strategy plugin, driven through the sidecar per iteration",
    )
    p.add_argument(
        "--replicas-system",
        default="swiftmoe",
        help="the --sim system whose replicas are plotted (default swiftmoe, else the first "
        "system with replicas)",
    )
    p.add_argument("--world-size", type=int, help="ranks for --plan-strategy")
    p.add_argument("--slots", type=int, help="slots per rank for --plan-strategy")
    p.add_argument(
        "--ranks-per-node", type=int, default=0, help="for --plan-strategy (0: one node)"
    )
    p.add_argument(
        "--strategy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option for --plan-strategy, repeatable",
    )
    p.add_argument(
        "--target-fraction",
        type=float,
        default=0.8,
        help="target loss: the smoothed dropless loss at this fraction of its steps",
    )
    p.add_argument("--smooth", type=int, default=25, help="moving-average window in steps")
    p.add_argument("--max-layers", type=int, default=6, help="layers shown in per-layer plots")
    p.add_argument("--title", default="", help="prefix for the plot titles")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if not (args.trace or args.sim or args.loss):
        p.error("give at least one of --trace, --sim, --loss")
    if args.plan_strategy and not (args.trace and args.world_size and args.slots):
        p.error("--plan-strategy needs --trace, --world-size and --slots")
    if args.smooth < 1 or args.max_layers < 1:
        p.error("--smooth and --max-layers must be >= 1")
    options = {}
    for kv in args.strategy_option:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            p.error(f"--strategy-option: expected KEY=VALUE, got {kv!r}")
        options[k] = v
    prefix = f"{args.title}: " if args.title else ""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {out}: cannot create the directory ({e})")
    written: list[Path] = []
    summary: dict[str, Any] = {}
    try:
        loads_ILE = read_trace(args.trace) if args.trace else None
        systems = read_sim(args.sim) if args.sim else []
        curves = read_loss_dir(args.loss) if args.loss else {}
        if loads_ILE is not None:
            written.append(
                plot_load_heatmap(
                    loads_ILE,
                    out / "load-heatmap.png",
                    args.max_layers,
                    f"{prefix}expert load ÷ mean load, {args.trace}",
                )
            )
        with_reps = [s for s in systems if s.replicas_ILE]
        replicas = next(
            (s for s in with_reps if s.name == args.replicas_system),
            with_reps[0] if with_reps else None,
        )
        if args.plan_strategy:
            from swiftmoe.planning.client import SidecarError

            try:
                reps = plans_from_sidecar(
                    loads_ILE,
                    args.plan_strategy,
                    args.world_size,
                    args.slots,
                    options=options,
                    ranks_per_node=args.ranks_per_node,
                )
            except SidecarError as e:
                raise ValueError(f"--plan-strategy {args.plan_strategy}: {e}") from None
            written.append(
                plot_replicas(
                    reps,
                    out / "replicas.png",
                    args.max_layers,
                    f"{prefix}replicas per expert, strategy {args.plan_strategy}, "
                    f"N={args.world_size} S={args.slots} (plan from the previous iteration)",
                )
            )
        elif replicas is not None:
            written.append(
                plot_replicas(
                    replicas.replicas_ILE,
                    out / "replicas.png",
                    args.max_layers,
                    f"{prefix}replicas per expert, {replicas.name}",
                )
            )
        measured = not systems
        if measured:  # no simulator: the step times measured in the loss files, if any
            systems = [
                SimSystem(name=k, mean_step_s=c.mean_step_s, step_s=c.step_s)
                for k, c in curves.items()
                if c.mean_step_s
            ]
        if systems:
            what = "measured time per step per run" if measured else "time per iteration per system"
            written.append(plot_step_times(systems, out / "step-time.png", f"{prefix}{what}"))
        if curves:
            losses = {k: c.loss for k, c in curves.items()}
            spi = {s.name: s.mean_step_s for s in systems}
            label = "measured wall time" if measured else "simulated wall time"
            target = None
            if "dropless" in losses and spi:
                table = time_to_target_table(losses, spi, args.target_fraction, args.smooth)
                table["time"] = label
                summary["time_to_target"] = table
                target = table["target_loss"]
                print(table_text(table))
            written.append(
                plot_loss_vs_time(
                    losses,
                    spi,
                    out / "loss-vs-time.png",
                    window=args.smooth,
                    target=target,
                    time_label=label,
                    title=f"{prefix}training loss (moving average of {args.smooth} steps)",
                )
            )
    except ValueError as e:
        print(f"swiftmoe report: error: {e}", file=sys.stderr)
        return 2
    summary["figures"] = [str(w) for w in written]
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
