"""Train a small byte-level GPT-style MoE language model on real text with SwiftMoE.

The corpus is the Python standard library's own source files, present on every machine with
Python. Run it on CPUs (gloo) or GPUs (NCCL) alike:

    torchrun --standalone --nproc-per-node 2 examples/train_lm.py --strategy swiftmoe --steps 60
    torchrun --standalone --nproc-per-node 2 examples/train_lm.py --strategy static --steps 60
    python examples/train_lm.py --mode observe --steps 20          # one process

Every rank sees the same global batch order for a given --seed, so runs with different
strategies train on identical data; only the placement of expert replicas differs.

Shape legend: B sequences per rank, T tokens per sequence, D model dim, V vocabulary (256).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

# Imported before init_process_group: importing it afterwards (torch.optim does, at the first
# optimizer) keeps references to the default group, so destroy_process_group cannot join gloo's
# worker threads, and one that drops a finished collective's tensors during interpreter exit
# aborts the process ("terminate called without an active exception").
import torch._dynamo  # noqa: F401
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import swiftmoe
from swiftmoe.nn import MoE

VOCAB = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a byte-level MoE language model on the Python standard library's "
        "source with SwiftMoE (run under torchrun for several ranks).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--strategy",
        default="swiftmoe",
        help="sidecar strategy: static, swiftmoe, "
        "flexmoe or a plugin's name; 'none' keeps the initial static placement "
        "without a sidecar",
    )
    p.add_argument(
        "--strategy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option, repeatable (e.g. predictor=ewma)",
    )
    p.add_argument("--mode", choices=("observe", "replicate"), default="replicate")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--slots", type=int, default=4, help="expert slots per rank per MoE layer")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=96)
    p.add_argument("--d-ff", type=int, default=192, help="expert hidden size")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--capacity-factor",
        type=float,
        default=None,
        help="drop tokens above this capacity (default: dropless)",
    )
    p.add_argument(
        "--burst-slots",
        type=int,
        default=None,
        help="burst replica slots per rank (0: none; default: SwiftMoEConfig's)",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="directory of text files (default: the Python standard library)",
    )
    p.add_argument("--corpus-bytes", type=int, default=8 << 20, help="bytes of corpus to load")
    p.add_argument("--trace-out", default=None, help="write the routing trace (JSON Lines)")
    p.add_argument("--timings-out", default=None, help="write per-step timings (JSON Lines)")
    p.add_argument("--summary-out", default=None, help="write a run summary (JSON)")
    p.add_argument(
        "--sidecar",
        default=None,
        help="attach to a running sidecar at this address instead of starting the bundled one",
    )
    p.add_argument("--plugins-dir", default=None, help="strategy plugins directory")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing summary")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank on CPU")
    p.add_argument(
        "--no-progress", action="store_true", help="one log line per step instead of a progress bar"
    )
    args = p.parse_args(argv)
    for name in (
        "experts",
        "top_k",
        "slots",
        "layers",
        "d_model",
        "d_ff",
        "heads",
        "seq_len",
        "batch_size",
        "steps",
        "threads",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.top_k > args.experts:
        p.error("--top-k must not exceed --experts")
    if args.d_model % args.heads:
        p.error("--d-model must be a multiple of --heads")
    return args


# ---- data ---------------------------------------------------------------------------------------


def load_corpus(root: str | None, limit: int) -> torch.Tensor:
    """The bytes of every *.py (or, for a given root, every file) under root, in sorted order."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise SystemExit(f"--corpus: {base} is not a directory; pass a directory of text files")
    pattern = "*" if root else "*.py"
    chunks, total = [], 0
    for path in sorted(base.rglob(pattern)):
        if not path.is_file() or "site-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    if total < 1 << 16:
        raise SystemExit(f"--corpus: only {total} bytes of text under {base}; need at least 64 KiB")
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def batch_for(step: int, data: torch.Tensor, args, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of the global batch of ``step`` (same on every run with the seed)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    starts = torch.randint(
        0, data.numel() - args.seq_len - 1, (world * args.batch_size,), generator=g
    )
    mine = starts[rank * args.batch_size : (rank + 1) * args.batch_size]
    idx = mine[:, None] + torch.arange(args.seq_len + 1)[None, :]
    return data[idx]


# ---- model --------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, args) -> None:
        super().__init__()
        D = args.d_model
        self.heads = args.heads
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.norm2 = nn.LayerNorm(D)
        self.moe = MoE(D, args.d_ff, args.experts, args.top_k)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(self.norm1(x_BTD)).view(B, T, 3, self.heads, D // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x_BTD = x_BTD + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x_BTD + self.moe(self.norm2(x_BTD))


class ByteLM(nn.Module):
    def __init__(self, args) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, args.d_model)
        self.pos = nn.Parameter(torch.zeros(args.seq_len, args.d_model))
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.layers))
        self.norm = nn.LayerNorm(args.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids_BT: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids_BT) + self.pos[: ids_BT.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.embed.weight.T


# ---- training -----------------------------------------------------------------------------------


def setup_dist(args) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
        backend = "gloo"
    if world > 1 or "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, device


def strategy_options(args) -> dict[str, str]:
    options = {}
    for kv in args.strategy_option:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise SystemExit(f"--strategy-option: expected KEY=VALUE, got {kv!r}")
        options[key] = value
    return options


class Progress:
    """A one-line progress bar on rank 0 (or a line per step with --no-progress)."""

    def __init__(self, total: int, enabled: bool, plain: bool) -> None:
        self.total, self.enabled = total, enabled
        self.plain = plain or not sys.stderr.isatty()

    def update(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        if self.plain:
            print(f"step {step + 1}/{self.total} {text}", file=sys.stderr, flush=True)
            return
        width = 24
        done = int(width * (step + 1) / self.total)
        bar = "#" * done + "." * (width - done)
        print(f"\r[{bar}] {step + 1}/{self.total} {text}", end="", file=sys.stderr, flush=True)
        if step + 1 == self.total:
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_dist(args)
    torch.manual_seed(args.seed)
    data = load_corpus(args.corpus, args.corpus_bytes)
    model = ByteLM(args).to(device)
    cfg = swiftmoe.SwiftMoEConfig(
        slots_per_rank=args.slots,
        mode=args.mode,
        optimizer="AdamW",
        optimizer_kwargs={"lr": args.lr},
        strategy=None if args.strategy == "none" else args.strategy,
        strategy_options=strategy_options(args),
        sidecar_address=args.sidecar,
        plugins_dir=args.plugins_dir,
        capacity_factor=args.capacity_factor,
        **({} if args.burst_slots is None else {"burst_slots_per_rank": args.burst_slots}),
    )
    handle = swiftmoe.replicate_(model, cfg)
    dense = list(handle.dense_parameters(model))
    if world > 1:
        handle.ddp_ignore(model)  # DDP must not broadcast SwiftMoE's per-rank load statistics
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=None)
        ddp._set_static_graph()
        net = ddp
    else:
        net = model
    # In observe mode the experts stay in the model and the dense optimizer trains them.
    opt = torch.optim.AdamW(dense if args.mode == "replicate" else model.parameters(), lr=args.lr)
    tokens_per_step = world * args.batch_size * args.seq_len
    trace = open(args.trace_out, "w") if args.trace_out and rank == 0 else None  # noqa: SIM115
    timings = open(args.timings_out, "w") if args.timings_out and rank == 0 else None  # noqa: SIM115
    progress = Progress(args.steps, rank == 0, args.no_progress)
    # Step time, and the busiest rank's CPU time of the step (this thread's, the one that runs
    # the model): on a machine whose cores are shared, waiting for a CPU inflates step time for
    # every strategy, while the busiest rank's CPU time still shows the work balance saves.
    step_times, all_times, imbalances, losses, busiest_cpu = [], [], [], [], []
    try:
        for step in range(args.steps):
            batch = batch_for(step, data, args, rank, world).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.thread_time()
            logits = net(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            stats = handle.step()
            opt.zero_grad(set_to_none=True)
            handle.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            lv = loss.detach().clone()
            cpu = torch.tensor([dc], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(lv)
                lv /= world
                dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
            mom = max(stats.max_over_mean_L)
            losses.append(float(lv))
            imbalances.append(mom)
            all_times.append(dt)
            if step >= args.warmup:
                step_times.append(dt)
                busiest_cpu.append(float(cpu))
            progress.update(
                step,
                f"loss {float(lv):.3f} {tokens_per_step / dt:,.0f} tok/s "
                f"max_over_mean {mom:.3f} plan {stats.plan_event.split(':')[0]}",
            )
            if trace:
                trace.write(json.dumps({"iteration": step, "loads": stats.loads_LE}) + "\n")
            if timings:
                timings.write(
                    json.dumps(
                        {
                            "step": step,
                            "step_s": dt,
                            "busiest_cpu_s": float(cpu),
                            "loss": float(lv),
                            "max_over_mean": mom,
                            "dropped": sum(stats.dropped_L),
                        }
                    )
                    + "\n"
                )
    finally:
        for f in (trace, timings):
            if f:
                f.close()
        handle.close()
    step_times = step_times or all_times  # runs no longer than the warm-up time every step
    summary = {
        "strategy": args.strategy,
        "mode": args.mode,
        "world_size": world,
        "steps": args.steps,
        "mean_step_s": sum(step_times) / max(1, len(step_times)),
        "mean_busiest_cpu_s": sum(busiest_cpu) / max(1, len(busiest_cpu)),
        "tokens_per_s": tokens_per_step * len(step_times) / max(1e-9, sum(step_times)),
        "mean_max_over_mean": sum(imbalances) / len(imbalances),
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "plan_events": handle.plan_events,
    }
    if rank == 0:
        print(json.dumps(summary), flush=True)
        if args.summary_out:
            Path(args.summary_out).write_text(json.dumps(summary, indent=1) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if math.isfinite(summary["final_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
