#!/usr/bin/env python3
"""The shim's per-iteration overhead: one training step of a model of ``swiftmoe.nn.MoE`` layers
under ``swiftmoe.replicate_`` against the same model unpatched, at world size 1.

On one GPU (NCCL, bf16 by default, so the engine runs its slots with torch._grouped_mm on
Hopper or newer):

    python3 scripts/overhead_gpu.py [--json FILE]

On CPUs (gloo, fp32, one thread):

    python3 scripts/overhead_gpu.py --device cpu --tokens 1024 --dim 128 --hidden 256

A step is forward, a mean-square loss, backward, the optimizer step (AdamW; under SwiftMoE the
dense AdamW plus ``handle.step()``: the sharded expert step and the remap) and zero_grad. The
two models start from the same weights and train on the same inputs; the systems alternate
step by step (A B A B ...) so drift hits both alike, and each is timed by its median. At world
size 1 the engine still counts loads, all-reduces them, splits, runs both all_to_all_single
calls, the gradient and weight exchanges and the plan poll: its whole per-iteration machinery,
with no network time to hide it. The unpatched model runs its experts one by one (a loop over
experts); under the engine on a GPU they run as grouped GEMMs, so a negative overhead means the
engine's expert path is faster than the loop it replaces.

A third system is the baseline users run today at world size 1: static expert parallelism,
dropless, with grouped GEMMs and no padding (``StaticGroupedMoE``, built as torchtitan's and
Megatron-Core's MoE layers run on one GPU, less torchtitan's padding of each group to a multiple
of 8 rows: tokens sorted by expert, one grouped GEMM per weight with the group ends computed on
the device, so no host wait), its bf16 parameters
stepped by a fused AdamW. SwiftMoE against it is the engine's own per-step cost: the count
matrix's trip to the host, the split, the fp32 master weights and their exchanges. A fourth,
``static_fp32_master``, is the same layer trained as mixed precision keeps it (FSDP2's policy,
as torchtitan trains; Megatron's fp32 master weights): fp32 master weights stepped by the fused
AdamW, cast to the bf16 working copy after each step, the gradients cast to fp32 for it. It
separates what SwiftMoE pays for its fp32 masters, which such a baseline pays too, from the
rest of its cost.

Shape legend: T tokens, D model dim, F expert hidden dim, E experts, L MoE layers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Imported before init_process_group: importing it afterwards (torch.optim does, at the first
# optimizer) keeps references to the default group, so destroy_process_group cannot join gloo's
# worker threads, and one that drops a finished collective's tensors during interpreter exit
# aborts the process ("terminate called without an active exception").
import torch._dynamo  # noqa: F401
import torch.distributed as dist
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pyshim"))

import swiftmoe  # noqa: E402
from swiftmoe.nn import MoE, grouped_swiglu, swiglu_expert  # noqa: E402


class Net(nn.Module):
    """L residual blocks ``x + MoE(LayerNorm(x))``."""

    def __init__(self, layers: int, dim: int, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.moes = nn.ModuleList(MoE(dim, hidden, experts, top_k) for _ in range(layers))

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        for norm, moe in zip(self.norms, self.moes, strict=True):
            x_TD = x_TD + moe(norm(x_TD))
        return x_TD


class StaticGroupedMoE(nn.Module):
    """A ``MoE`` block's forward as static dropless expert parallelism runs it on one GPU: the
    assignments sorted by expert, every expert's group in one grouped GEMM per weight
    (``torch._grouped_mm``, group ends from a cumulative sum on the device), no padding and no
    host wait. It shares the block's parameters. Where ``torch._grouped_mm`` is missing the
    experts run one by one (which reads the counts on the host)."""

    def __init__(self, moe: MoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.moe
        x_TD = x.reshape(-1, m.dim)
        ids_TK, weights_TK = m.route(x_TD)
        T, K = ids_TK.shape
        e_A = ids_TK.reshape(-1)
        order_A = torch.argsort(e_A, stable=True)
        counts_E = torch.bincount(e_A, minlength=m.num_experts)
        xs_AD = x_TD.index_select(0, order_A // K)
        if hasattr(torch, "_grouped_mm"):
            offs_E = torch.cumsum(counts_E, 0).to(torch.int32)
            ys_AD = grouped_swiglu(xs_AD, offs_E, m.w_gate, m.w_up, m.w_down)
        else:
            parts, start = [], 0
            for e, n in enumerate(counts_E.tolist()):
                parts.append(swiglu_expert(xs_AD[start : start + n], m.w_gate[e], m.w_up[e],
                                           m.w_down[e]))  # fmt: skip
                start += n
            ys_AD = torch.cat(parts)
        y_AD = torch.zeros_like(ys_AD).index_copy(0, order_A, ys_AD)
        y_TD = (y_AD.view(T, K, y_AD.shape[-1]) * weights_TK.unsqueeze(-1)).sum(dim=1)
        return y_TD.reshape(x.shape)


class MasterStep:
    """A step of ``net`` (bf16 working weights) whose optimizer holds fp32 master copies: the
    gradients are cast to fp32 for it, and its result is cast back into the working weights."""

    def __init__(self, net: nn.Module, opt_class: type, **kwargs) -> None:
        self.net = net
        self.params = list(net.parameters())
        self.masters = [p.detach().float().clone().requires_grad_() for p in self.params]
        self.opt = opt_class(self.masters, **kwargs)

    def __call__(self, x_TD: torch.Tensor) -> torch.Tensor:
        loss = self.net(x_TD).float().pow(2).mean()
        loss.backward()
        for m, p in zip(self.masters, self.params, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)
        return loss.detach()


def static_grouped(net: Net) -> Net:
    """A copy of ``net`` whose MoE blocks run as :class:`StaticGroupedMoE`."""
    out = copy.deepcopy(net)
    out.moes = nn.ModuleList(StaticGroupedMoE(m) for m in out.moes)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    check_arguments(p, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible; run on a GPU or pass --device cpu")
    return args


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The shape, timing and device arguments (scripts/gpu_check.py takes them too)."""
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--iters", type=int, default=30, help="timed steps per system")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per system")
    p.add_argument("--strategy", default="none",
                   help="'none' (static placement, no sidecar) or a sidecar strategy name")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads on cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="collective timeout, seconds")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="after the timing, profile 3 more steps of each system (torch.profiler) "
                        "and write their top operators by self time to FILE")  # fmt: skip


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """p.error (exit 2) on an argument out of range."""
    for name in ("layers", "dim", "hidden", "experts", "top_k", "tokens", "iters", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if not 1 <= args.top_k <= args.experts:
        p.error("--top-k must be in 1..--experts")


def measure(args: argparse.Namespace) -> dict:
    """Initializes a world-size-1 group, times both systems, returns the figures."""
    with world_of_one(args) as (device, dtype, backend):
        return measure_in_group(args, device, dtype, backend)


@contextlib.contextmanager
def world_of_one(args: argparse.Namespace):
    """A world-size-1 process group (NCCL on cuda, gloo on cpu) for ``args.device``: yields
    (device, dtype, backend) and destroys the group on exit."""
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args.threads)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group(
            backend, store=store, rank=0, world_size=1,
            timeout=datetime.timedelta(seconds=args.timeout),
        )  # fmt: skip
        try:
            yield device, dtype, backend
        finally:
            dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_in_group(args, device: torch.device, dtype: torch.dtype, backend: str) -> dict:
    """Times both systems in the world-size-1 group in force; the figures."""
    torch.manual_seed(args.seed)
    ref = Net(args.layers, args.dim, args.hidden, args.experts, args.top_k).to(device, dtype)
    model = copy.deepcopy(ref)
    static = static_grouped(ref)
    static32 = static_grouped(ref)
    cfg = swiftmoe.SwiftMoEConfig(
        slots_per_rank=args.experts,
        optimizer="AdamW",
        optimizer_kwargs={"lr": 1e-4},
        strategy=None if args.strategy == "none" else args.strategy,
    )
    handle = swiftmoe.replicate_(model, cfg)
    try:
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
        fused = {"fused": True} if device.type == "cuda" else {}
        static_opt = torch.optim.AdamW(static.parameters(), lr=1e-4, **fused)
        dense_opt = torch.optim.AdamW(handle.dense_parameters(model), lr=1e-4)
        g = torch.Generator().manual_seed(args.seed + 1)
        inputs = [
            torch.randn(args.tokens, args.dim, generator=g).to(device, dtype) for _ in range(4)
        ]

        def plain_step(net: nn.Module, opt: torch.optim.Optimizer):
            def step(x_TD: torch.Tensor) -> torch.Tensor:
                loss = net(x_TD).float().pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.detach()

            return step

        def step_swiftmoe(x_TD: torch.Tensor) -> torch.Tensor:
            loss = model(x_TD).float().pow(2).mean()
            loss.backward()
            dense_opt.step()
            handle.step()
            dense_opt.zero_grad(set_to_none=True)
            handle.zero_grad()
            return loss.detach()

        # Same weights, same input: the first losses agree to rounding (the same computation).
        fns = {
            "unpatched": plain_step(ref, ref_opt),
            "static_grouped": plain_step(static, static_opt),
            "static_fp32_master": MasterStep(static32, torch.optim.AdamW, lr=1e-4, **fused),
            "swiftmoe": step_swiftmoe,
        }
        first = {name: float(fn(inputs[0])) for name, fn in fns.items()}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(args.warmup + args.iters):
            x_TD = inputs[i % len(inputs)]
            for name, fn in fns.items():
                _sync(device)
                t0 = time.perf_counter()
                fn(x_TD)
                _sync(device)
                if i >= args.warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        if args.profile:
            write_profile(Path(args.profile), fns, inputs, device)
    finally:
        handle.close()
    ref_ms = statistics.median(times["unpatched"])
    moe_ms = statistics.median(times["swiftmoe"])
    static_ms = statistics.median(times["static_grouped"])
    static32_ms = statistics.median(times["static_fp32_master"])
    if device.type == "cuda":
        name = torch.cuda.get_device_properties(device).name
    else:
        name = f"CPU ({torch.get_num_threads()} torch thread(s))"
    return {
        "device": name,
        "backend": backend,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": 1,
        "strategy": args.strategy,
        "config": {
            k: getattr(args, k)
            for k in ("layers", "dim", "hidden", "experts", "top_k", "tokens", "iters", "warmup")
        },
        "first_loss": first,
        "unpatched_ms": round(ref_ms, 4),
        "swiftmoe_ms": round(moe_ms, 4),
        "overhead_ms": round(moe_ms - ref_ms, 4),
        "overhead_pct": round(100.0 * (moe_ms - ref_ms) / ref_ms, 2),
        "unpatched_ms_p90": round(_p90(times["unpatched"]), 4),
        "swiftmoe_ms_p90": round(_p90(times["swiftmoe"]), 4),
        "static_grouped_ms": round(static_ms, 4),
        "static_grouped_ms_p90": round(_p90(times["static_grouped"]), 4),
        "static_fp32_master_ms": round(static32_ms, 4),
        "swiftmoe_over_static_fp32_master": round(moe_ms / static32_ms, 4),
        "swiftmoe_over_static": round(moe_ms / static_ms, 4),
    }


def write_profile(path: Path, fns: dict, inputs: list[torch.Tensor], device: torch.device) -> None:
    """3 steps of each system under torch.profiler; their top operators by self time (CUDA
    time as well on a GPU) to ``path``, one table per system."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, fn in fns.items():
        with profile(activities=acts) as prof:
            for x_TD in inputs[:3]:
                fn(x_TD)
            _sync(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)
        parts.append(f"== {name}: 3 steps, by {sort}\n{table}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def _p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.9 * len(s)))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r = measure(args)
    c = r["config"]
    print(
        f"{r['device']}, {r['backend']}, {r['dtype']}, world size 1, L={c['layers']} "
        f"D={c['dim']} F={c['hidden']} E={c['experts']} top-{c['top_k']} T={c['tokens']}, "
        f"median of {c['iters']} steps"
    )
    print(f"  unpatched  {r['unpatched_ms']:.3f} ms/step (p90 {r['unpatched_ms_p90']:.3f})")
    print(f"  swiftmoe   {r['swiftmoe_ms']:.3f} ms/step (p90 {r['swiftmoe_ms_p90']:.3f})")
    print(f"  overhead   {r['overhead_ms']:+.3f} ms/step ({r['overhead_pct']:+.2f}%)")
    print(f"  static EP, grouped GEMMs {r['static_grouped_ms']:.3f} ms/step (p90 "
          f"{r['static_grouped_ms_p90']:.3f}); swiftmoe / static {r['swiftmoe_over_static']:.3f}")  # fmt: skip
    print(f"  the same with fp32 master weights {r['static_fp32_master_ms']:.3f} ms/step; "
          f"swiftmoe / it {r['swiftmoe_over_static_fp32_master']:.3f}")  # fmt: skip
    print(f"  first loss unpatched {r['first_loss']['unpatched']:.6f} "
          f"swiftmoe {r['first_loss']['swiftmoe']:.6f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
