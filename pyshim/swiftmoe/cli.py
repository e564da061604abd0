"""The ``swiftmoe`` command: ``doctor``, ``plan``, ``sim`` and ``report``; each tool sits behind it.

``doctor`` checks what a training job needs and says, for each problem, what to do
(``swiftmoe.doctor``); it exits 1 when something is broken. ``plan`` passes its arguments to
``swiftmoe-sidecar plan`` (the offline planner). ``sim`` replays a routing trace on a simulated
cluster (``swiftmoe.sim``). ``report`` draws plots from traces, simulator results and loss curves
(``swiftmoe.report``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

__all__ = ["main"]


def _plan(argv: list[str]) -> int:
    from swiftmoe.planning import binaries as sc

    try:
        binary = sc.find_sidecar_binary()
    except sc.SidecarNotFoundError as e:
        print(
            "usage: swiftmoe plan [sidecar plan arguments...]\n"
            "Runs `swiftmoe-sidecar plan` (the offline planner) with the arguments given.\n"
            f"error: {e}",
            file=sys.stderr,
        )
        return 2
    try:
        return subprocess.run([str(binary), "plan", *argv]).returncode
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swiftmoe",
        description="SwiftMoE: adaptive expert replication for MoE training.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "doctor",
        help="check torch, the bundled sidecar and plugins, and GPU/NIC discovery",
        description="Checks what a SwiftMoE training job needs and says how to fix each problem. "
        "Exits 1 when something is broken.",
    )
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.add_argument(
        "--binary",
        help="the swiftmoe-sidecar to check (default: $SWIFTMOE_SIDECAR, the bundled one)",
    )
    d.add_argument(
        "--timeout", type=float, default=60.0, help="seconds discovery may take (default 60)"
    )
    from swiftmoe.sim.cli import add_parser as add_sim_parser

    add_sim_parser(sub)
    sub.add_parser(
        "plan",
        help="offline planning: runs `swiftmoe-sidecar plan ARGS` (see `swiftmoe plan --help`)",
        add_help=False,
    )
    sub.add_parser(
        "report",
        help="plots from a routing trace and simulator results (see `swiftmoe report --help`)",
        add_help=False,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "plan":
        return _plan(argv[1:])  # every argument, --help included, belongs to the sidecar
    if argv and argv[0] == "report":
        from swiftmoe.report.cli import main as report_main

        return report_main(argv[1:])
    p = _parser()
    args = p.parse_args(argv)
    if args.command == "doctor":
        if not args.timeout > 0:
            p.error(f"--timeout is {args.timeout}: pass seconds > 0")
        from swiftmoe import doctor

        return doctor.run(args)
    if args.command == "sim":
        from swiftmoe.sim.cli import run as run_sim

        return run_sim(args)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
