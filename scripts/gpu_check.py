#!/usr/bin/env python3
"""make gpu-check: the engine on one GPU against the unpatched model, in well under 5 minutes.

World size 1 on NCCL, bf16, a model of L residual ``swiftmoe.nn.MoE`` blocks (the model of
scripts/overhead_gpu.py). On Hopper or newer the engine runs each rank's slots as grouped GEMMs
(``torch._grouped_mm``); the unpatched model runs its experts one by one. Three parts:

1. equivalence: the same weights and the same input through both: the output, the input's
   gradient, every dense parameter's gradient (routers, norms) and every expert's gradient (the
   engine's slot gradients) within bf16 tolerance: relative error ||a - b|| / ||b|| at most
   1.6e-2 (torch.testing's bf16 rtol; 1e-5 in fp32). In bf16 both are also measured against
   the same weights run in fp32 (``accuracy``): SwiftMoE's output and input gradient may be
   at most ACCURACY_FACTOR times as far from it as the unpatched model's own;
2. overhead: the interleaved step timing of scripts/overhead_gpu.py (forward, backward,
   optimizer step, zero_grad; median ms per step, unpatched, under SwiftMoE, and as static
   dropless expert parallelism with grouped GEMMs, the baseline users run today, with bf16
   parameters and with fp32 master weights);
3. expert throughput: forward+backward TFLOP/s of the grouped GEMMs at this shape (E groups of
   T*top_k/E tokens), against the cost model's default for Hopper
   (``swiftmoe.engine.step_costs.HOPPER_FLOPS_PER_S``). GPU only.

Progress goes to stderr; stdout gets one JSON object with every figure (``--json`` also writes
it to a file). ``--profile FILE`` (``make gpu-check``: out/gpu-profile.txt) adds each system's
top operators by GPU time over 3 profiled steps, to tell where a difference comes from. Exit status: 0 when every check holds, 1 when one does not, 2 when the check
cannot run here (no CUDA device: it fails at once and says so).

    make gpu-check
    python3 scripts/gpu_check.py [--json FILE] [--layers 4 --dim 1024 --hidden 2048 ...]
    python3 scripts/gpu_check.py --device cpu --tokens 512 --dim 64 --hidden 128   # CPU, gloo

Shape legend: T tokens, D model dim, F expert hidden dim, E experts, L MoE layers, S slots,
P elements of one expert.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# Imported before init_process_group (see scripts/overhead_gpu.py).
import torch._dynamo  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pyshim"))
sys.path.insert(0, str(REPO / "scripts"))

import overhead_gpu  # noqa: E402

import swiftmoe  # noqa: E402
from swiftmoe import nn as smnn  # noqa: E402
from swiftmoe.engine import step_costs  # noqa: E402

BF16_RTOL = 1.6e-2  # torch.testing's default rtol for bfloat16
FP32_RTOL = 1e-5
# SwiftMoE's distance to the fp32 run may be at most this multiple of the unpatched model's:
# the two sum in different orders, so neither is the other's rounding, but neither may be
# clearly worse.
ACCURACY_FACTOR = 1.5
NO_DEVICE = 2


def _say(msg: str) -> None:
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The arguments are scripts/overhead_gpu.py's (--json also writes the JSON object "
        "printed). Exit status: 0 every check holds, 1 a check failed, 2 no CUDA device.",
    )
    overhead_gpu.add_arguments(p)
    args = p.parse_args(argv)
    overhead_gpu.check_arguments(p, args)
    return args


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    den = float(b64.norm())
    num = float((a64 - b64).norm())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def expert_grads(block: smnn.MoE) -> torch.Tensor:
    """The unpatched block's expert gradients as grad_EP [E, P], in expert_spec order."""
    parts = [getattr(block, n).grad.float().reshape(block.num_experts, -1) for n in _NAMES]
    return torch.cat(parts, dim=1)


_NAMES = ("w_gate", "w_up", "w_down")


def equivalence(args, device: torch.device, dtype: torch.dtype) -> dict:
    """One forward and backward of both models from the same weights on the same input."""
    torch.manual_seed(args.seed)
    ref = overhead_gpu.Net(args.layers, args.dim, args.hidden, args.experts, args.top_k)
    ref = ref.to(device, dtype)
    model = copy.deepcopy(ref)
    exact = copy.deepcopy(ref).float() if dtype != torch.float32 else None
    handle = swiftmoe.replicate_(
        model,
        swiftmoe.SwiftMoEConfig(slots_per_rank=args.experts, optimizer="AdamW"),
    )
    try:
        g = torch.Generator().manual_seed(args.seed + 7)
        x = torch.randn(args.tokens, args.dim, generator=g).to(device, dtype)
        proj = torch.randn(args.tokens, args.dim, generator=g).to(device, torch.float32)
        outs, xs = [], []
        for m in (ref, model):
            xm = x.clone().requires_grad_()
            y = m(xm)
            (y.float() * proj).sum().backward()
            outs.append(y.detach())
            xs.append(xm)
        errs = {"output": rel_err(outs[1], outs[0]), "input_grad": rel_err(xs[1].grad, xs[0].grad)}
        accuracy = None
        if exact is not None:  # the same bf16 weights and input, computed in fp32
            xe = x.float().requires_grad_()
            ye = exact(xe)
            (ye * proj).sum().backward()
            accuracy = {
                f"{name}_{what}_vs_fp32": rel_err(got, want)
                for i, name in enumerate(("unpatched", "swiftmoe"))
                for what, got, want in (
                    ("output", outs[i], ye),
                    ("input_grad", xs[i].grad, xe.grad),
                )
            }
        ref_params = dict(ref.named_parameters())
        dense = {}
        for name, p in model.named_parameters():
            dense[name] = rel_err(p.grad, ref_params[name].grad)
        experts = {}
        for layer in handle.layers:
            block = ref.get_submodule(layer.fqn)
            want_EP = expert_grads(block)
            got_SP = layer.slot_grads()
            for s, e in enumerate(layer.slots):
                experts[f"{layer.fqn}.expert{e}"] = rel_err(got_SP[s], want_EP[e])
        grouped = all(layer.grouped for layer in handle.layers)
    finally:
        handle.close()
    worst_dense = max(dense, key=dense.get)
    worst_expert = max(experts, key=experts.get)
    return {
        "grouped_gemm": grouped,
        "output_rel_err": errs["output"],
        "input_grad_rel_err": errs["input_grad"],
        "dense_grad_rel_err_max": dense[worst_dense],
        "dense_grad_worst": worst_dense,
        "expert_grad_rel_err_max": experts[worst_expert],
        "expert_grad_worst": worst_expert,
        "dense_params_checked": len(dense),
        "experts_checked": len(experts),
        "accuracy": accuracy,
    }


def expert_tflops(args, device: torch.device, dtype: torch.dtype) -> float | None:
    """Forward+backward TFLOP/s of the grouped GEMMs at this shape (CUDA only)."""
    if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
        return None
    E, D, F = args.experts, args.dim, args.hidden
    M = args.tokens * args.top_k
    per = M // E
    offs = torch.arange(1, E + 1, device=device, dtype=torch.int32) * per
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(per * E, D, device=device, dtype=dtype, generator=g, requires_grad=True)
    ws = [
        (
            torch.randn(E, *shape, device=device, dtype=dtype, generator=g) / shape[-1] ** 0.5
        ).requires_grad_()
        for shape in ((F, D), (F, D), (D, F))
    ]
    dy = torch.randn(per * E, D, device=device, dtype=dtype, generator=g)
    times = []
    for i in range(13):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        y = smnn.grouped_swiglu(x, offs, *ws)
        y.backward(dy)
        torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
        x.grad = None
        for w in ws:
            w.grad = None
    flops = 3 * 2 * (per * E) * D * F * 3  # 3 matrices, 2 flops per multiply-add, fwd + bwd
    return flops / statistics.median(times) / 1e12


def run(args) -> dict:
    t0 = time.monotonic()
    with overhead_gpu.world_of_one(args) as (device, dtype, backend):
        tol = BF16_RTOL if dtype == torch.bfloat16 else FP32_RTOL
        _say(f"1/3 equivalence on {device.type} ({backend}, {str(dtype).removeprefix('torch.')})")
        eq = equivalence(args, device, dtype)
        _say(f"2/3 per-step overhead, {args.warmup}+{args.iters} steps per system")
        ov = overhead_gpu.measure_in_group(args, device, dtype, backend)
        _say("3/3 grouped-GEMM throughput")
        tflops = expert_tflops(args, device, dtype)
    checks = {
        name: eq[key] <= tol
        for name, key in (
            ("output", "output_rel_err"),
            ("input_grad", "input_grad_rel_err"),
            ("dense_grads", "dense_grad_rel_err_max"),
            ("expert_grads", "expert_grad_rel_err_max"),
        )
    }
    acc = eq["accuracy"]
    if acc is not None:
        checks["accuracy"] = all(
            acc[f"swiftmoe_{w}_vs_fp32"] <= ACCURACY_FACTOR * acc[f"unpatched_{w}_vs_fp32"]
            for w in ("output", "input_grad")
        )
    out = {
        "check": "gpu-check",
        "ok": all(checks.values()),
        "checks": checks,
        "tolerance_rel_err": tol,
        "device": ov["device"],
        "capability": (
            ".".join(map(str, torch.cuda.get_device_capability(0)))
            if device.type == "cuda"
            else None
        ),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "backend": backend,
        "dtype": ov["dtype"],
        "world_size": 1,
        "config": ov["config"],
        "equivalence": eq,
        "overhead": {
            k: ov[k]
            for k in (
                "unpatched_ms",
                "swiftmoe_ms",
                "overhead_ms",
                "overhead_pct",
                "unpatched_ms_p90",
                "swiftmoe_ms_p90",
                "static_grouped_ms",
                "static_grouped_ms_p90",
                "static_fp32_master_ms",
                "swiftmoe_over_static_fp32_master",
                "swiftmoe_over_static",
                "first_loss",
            )
        },
        "expert_fwd_bwd_tflops": tflops,
        "cost_model_default_tflops": step_costs.HOPPER_FLOPS_PER_S / 1e12,
        "wall_s": round(time.monotonic() - t0, 2),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        _say(
            "no CUDA device is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a machine with an "
            "NVIDIA GPU, or pass --device cpu to run the same code on CPUs"
        )
        return NO_DEVICE
    out = run(args)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    eq, ov = out["equivalence"], out["overhead"]
    _say(
        f"{'PASS' if out['ok'] else 'FAIL'}: output {eq['output_rel_err']:.2e}, input grad "
        f"{eq['input_grad_rel_err']:.2e}, dense grads {eq['dense_grad_rel_err_max']:.2e}, "
        f"expert grads {eq['expert_grad_rel_err_max']:.2e} (tolerance "
        f"{out['tolerance_rel_err']:.1e}); "
        + (
            ""
            if eq["accuracy"] is None
            else f"input grad vs fp32 {eq['accuracy']['swiftmoe_input_grad_vs_fp32']:.2e} "
            f"(unpatched {eq['accuracy']['unpatched_input_grad_vs_fp32']:.2e}); "
        )
        + f"grouped GEMMs {'on' if eq['grouped_gemm'] else 'off'}; "
        f"step {ov['unpatched_ms']:.2f} ms unpatched, {ov['swiftmoe_ms']:.2f} ms SwiftMoE "
        f"({ov['overhead_pct']:+.2f}%), {ov['static_grouped_ms']:.2f} ms static EP with grouped "
        f"GEMMs (SwiftMoE {ov['swiftmoe_over_static']:.3f}x), {ov['static_fp32_master_ms']:.2f} ms "
        f"with fp32 masters ({ov['swiftmoe_over_static_fp32_master']:.3f}x); {out['wall_s']:.0f} s"
    )
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
