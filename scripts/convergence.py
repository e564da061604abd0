#!/usr/bin/env python3
"""The convergence cost of dropping tokens, measured by real training.

``run`` trains examples/train_lm.py (a byte-level MoE LM on the Python standard library's
source) on 2 ranks with torchrun, once dropless and once per capacity factor, with the same seed
and data order, and the static strategy with E = N*S (8 experts, 2 ranks, 4 slots each), so
capacity binds as it does in DeepSpeed-MoE. It writes, per run, ``loss-NAME.jsonl`` (one
``{"step", "loss", "dropped", "step_s"}`` per step; NAME is ``dropless``, ``cf1.0``, ``cf2.0``)
and then summarizes.

``summarize`` computes, from those files, steps to the target loss per curve (the target is the
loss the dropless run reaches at --target-fraction of its steps, moving-average smoothed) and the
time to target: per system from ``--step-times FILE`` (``{system: seconds_per_iteration}``, or the
simulator's JSON, see ``swiftmoe report --help``), and per run from its own measured step time.

    python3 scripts/convergence.py run --steps 500 --out results/convergence
    python3 scripts/convergence.py summarize --loss results/convergence [--step-times sim.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pyshim"))

from swiftmoe import report  # noqa: E402

RUNS = {"dropless": None, "cf1.0": 1.0, "cf2.0": 2.0}


def run_one(name: str, cf: float | None, args: argparse.Namespace, out: Path) -> dict:
    """Trains one run under torchrun; returns its summary; raises RuntimeError on failure."""
    timings = out / f"timings-{name}.jsonl"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(args.nproc),
        str(REPO / "examples" / "train_lm.py"),
        "--strategy", "static", "--slots", str(args.slots), "--experts", str(args.experts),
        "--steps", str(args.steps), "--seed", str(args.seed), "--no-progress",
        "--timings-out", str(timings), "--summary-out", str(out / f"run-{name}.json"),
        *args.train_arg,
    ]  # fmt: skip
    if cf is not None:
        cmd += ["--capacity-factor", str(cf)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "pyshim"), OMP_NUM_THREADS="1")
    log = (out / f"log-{name}.txt").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=REPO)  # fmt: skip
    try:
        rc = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        raise RuntimeError(
            f"run {name} took over --timeout {args.timeout}s; lower --steps or raise --timeout"
        ) from None
    finally:
        log.close()
    wall = time.monotonic() - t0
    if rc != 0:
        tail = (out / f"log-{name}.txt").read_text().splitlines()[-15:]
        raise RuntimeError(f"run {name} exited {rc}:\n" + "\n".join(tail))
    rows = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    with (out / f"loss-{name}.jsonl").open("w") as f:
        for r in rows:
            keep = {k: r[k] for k in ("step", "loss", "dropped", "step_s")}
            f.write(json.dumps(keep) + "\n")
    timings.unlink()
    print(f"{name}: {len(rows)} steps in {wall:.0f}s, final loss {rows[-1]['loss']:.3f}",
          flush=True)  # fmt: skip
    return {"wall_s": wall, "command": " ".join(cmd[1:]).replace(str(REPO) + "/", "")}


def assignments_per_step(args: argparse.Namespace) -> int:
    """Global token-to-expert assignments per step over all MoE layers (what can be dropped)."""
    sys.path.insert(0, str(REPO / "examples"))
    import train_lm

    t = train_lm.parse_args(["--experts", str(args.experts), *args.train_arg])
    return args.nproc * t.batch_size * t.seq_len * t.top_k * t.layers


def summarize(loss_dir: Path, step_times: str | None, fraction: float, window: int,
              assignments_per_step: int | None) -> dict:  # fmt: skip
    curves = report.read_loss_dir(loss_dir)
    if "dropless" not in curves:
        raise ValueError(f"{loss_dir}: no loss-dropless.jsonl; the target comes from it")
    losses = {k: c.loss for k, c in curves.items()}
    target = report.choose_target(losses["dropless"], fraction, window)
    per_curve = {}
    for k, c in curves.items():
        steps = report.steps_to_target(c.loss, target, window)
        smooth = report.moving_average(c.loss, window)
        row = {
            "steps": len(c.loss),
            "steps_to_target": steps,
            "final_loss_smoothed": smooth[-1],
            "tokens_dropped_total": sum(c.dropped),
            "measured_s_per_step": c.mean_step_s,
            "measured_time_to_target_s": (
                report.time_to_target(steps, c.mean_step_s) if c.mean_step_s else None
            ),
        }
        if assignments_per_step:
            row["dropped_fraction"] = sum(c.dropped) / (assignments_per_step * len(c.loss))
        per_curve[k] = row
    out = {"target_loss": target, "fraction": fraction, "window": window, "curves": per_curve}
    if step_times:
        systems = report.read_sim(step_times)
        out["systems"] = report.time_to_target_table(
            losses, {s.name: s.mean_step_s for s in systems}, fraction, window
        )
    return out


def print_summary(s: dict) -> None:
    print(f"target loss {s['target_loss']:.4f} (dropless, moving average of {s['window']} steps, "
          f"at {s['fraction']:.0%} of its steps)")  # fmt: skip
    print("| run | steps to target | final loss (smoothed) | assignments dropped | "
          "measured s/step | measured time to target (s) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for k, r in sorted(s["curves"].items()):
        steps = r["steps_to_target"] or f"not in {r['steps']}"
        frac = f" ({r['dropped_fraction']:.1%})" if "dropped_fraction" in r else ""
        mt = r["measured_time_to_target_s"]
        ms = r["measured_s_per_step"]
        print(f"| {k} | {steps} | {r['final_loss_smoothed']:.4f} | "
              f"{r['tokens_dropped_total']}{frac} | {ms:.3f} | "
              f"{'—' if mt is None else f'{mt:.1f}'} |")  # fmt: skip
    if "systems" in s:
        print()
        print(report.table_text(s["systems"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train dropless, cf1.0 and cf2.0, then summarize")
    r.add_argument("--steps", type=int, default=500)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--nproc", type=int, default=2)
    r.add_argument("--slots", type=int, default=4)
    r.add_argument("--experts", type=int, default=8)
    r.add_argument(
        "--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS)
    )
    r.add_argument("--timeout", type=float, default=600, help="seconds per run")
    r.add_argument("--train-arg", action="append", default=[],
                   help="extra argument for train_lm.py, repeatable (e.g. --train-arg=--lr=2e-3)")  # fmt: skip
    r.add_argument("--out", default=str(REPO / "results" / "convergence"))
    s = sub.add_parser("summarize", help="steps and time to target from loss-*.jsonl")
    s.add_argument("--loss", default=str(REPO / "results" / "convergence"))
    for q in (r, s):
        q.add_argument("--step-times", help="{system: s/iteration} or simulator JSON")
        q.add_argument("--target-fraction", type=float, default=0.8)
        q.add_argument("--smooth", type=int, default=25)
    args = p.parse_args(argv)
    try:
        if args.cmd == "run":
            if args.steps < 1 or args.nproc < 1 or args.timeout <= 0:
                p.error("--steps, --nproc and --timeout must be positive")
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            meta = {
                "steps": args.steps,
                "seed": args.seed,
                "nproc": args.nproc,
                "assignments_per_step": assignments_per_step(args),
                "runs": {},
            }
            for name in args.runs.split(","):
                if name not in RUNS:
                    p.error(f"--runs: unknown run {name!r}; choose from {', '.join(RUNS)}")
                meta["runs"][name] = run_one(name, RUNS[name], args, out)
            loss_dir = out
        else:
            loss_dir, meta = Path(args.loss), None
        if meta is None and (loss_dir / "summary.json").is_file():
            meta = json.loads((loss_dir / "summary.json").read_text()).get("meta")
        per_step = (meta or {}).get("assignments_per_step")
        summary = summarize(loss_dir, args.step_times, args.target_fraction, args.smooth, per_step)
        if meta is not None:
            summary["meta"] = meta
        (loss_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print_summary(summary)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"convergence: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
