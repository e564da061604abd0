#!/usr/bin/env python3
"""Measure one expert's forward and forward+backward time against token count: the calibration
table the simulator (``swiftmoe sim``) reads (format: calibration/README.md).

On one NVIDIA GPU (bf16, CUDA events):

    python3 scripts/calibrate_gpu.py                      # writes calibration/<gpu>-expert-ffn.json

On this machine's CPUs (fp32, one torch thread, as each rank of the 2-rank CPU benchmark runs):

    python3 scripts/calibrate_gpu.py --device cpu         # writes calibration/cpu-expert-ffn.json

Each point is the median of --reps timed runs after --warmup untimed ones. The forward runs the
expert on x_TD; forward+backward also back-propagates a fixed gradient into x_TD and the weights
(the work an expert does per iteration in training). fwd_bwd_tflops counts 3x the forward's
2*T*D*F multiply-adds per weight matrix (2 for GELU, 3 for SwiGLU). On a GPU the table also holds
device-to-device copy and pinned host<->device bandwidth, and NCCL all_to_all_single time at
world size 1 (link figures the simulator may use).

Shape legend: T tokens, D model dim, F expert hidden dim.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

# Imported before init_process_group: importing it afterwards (torch.optim does, at the first
# optimizer) keeps references to the default group, so destroy_process_group cannot join gloo's
# worker threads, and one that drops a finished collective's tensors during interpreter exit
# aborts the process ("terminate called without an active exception").
import torch._dynamo  # noqa: F401
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

# name -> (D, F, activation); names follow calibration/h200-expert-ffn.json so tables line up.
GPU_SHAPES: dict[str, tuple[int, int, str]] = {
    "gpt-small-e16 (d768 f3072 gelu)": (768, 3072, "gelu"),
    "gpt-medium (d1024 f4096 gelu)": (1024, 4096, "gelu"),
    "mixtral-8x7b (d4096 f14336 swiglu)": (4096, 14336, "swiglu"),
    "deepseek-v3 (d7168 f2048 swiglu)": (7168, 2048, "swiglu"),
    "qwen3-30b-a3b (d2048 f768 swiglu)": (2048, 768, "swiglu"),
}
GPU_TOKENS = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]

# The CPU table covers the shapes the CPU runs use: scripts/bench_step.py (make bench) and
# examples/train_lm.py, plus GPT-Small at the token counts one thread finishes in seconds.
CPU_SHAPES: dict[str, tuple[int, int, str]] = {
    "bench-step (d256 f512 swiglu)": (256, 512, "swiglu"),
    "train-lm (d96 f192 swiglu)": (96, 192, "swiglu"),
    "gpt-small-e16 (d768 f3072 gelu)": (768, 3072, "gelu"),
}
CPU_TOKENS = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
CPU_MAX_TOKENS = {"gpt-small-e16 (d768 f3072 gelu)": 2048}

REQUIRED_ROW_KEYS = ("tokens", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_tflops")
_SHAPE_RE = re.compile(r"\(d(\d+) f(\d+) (gelu|swiglu)\)$")


# ---- the expert --------------------------------------------------------------------------------


def make_expert(
    d: int, f: int, act: str, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The weights (requires_grad) and the forward of one expert D -> F -> D."""
    if act not in ("gelu", "swiglu"):
        raise ValueError(f"activation {act!r}: use 'gelu' or 'swiglu'")
    g = torch.Generator().manual_seed(seed)

    def w(rows: int, cols: int) -> torch.Tensor:
        t = torch.randn(rows, cols, generator=g) / cols**0.5
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    if act == "gelu":
        w_in_FD, w_out_DF = w(f, d), w(d, f)

        def fwd(x_TD: torch.Tensor) -> torch.Tensor:
            return F.gelu(x_TD @ w_in_FD.t()) @ w_out_DF.t()

        return [w_in_FD, w_out_DF], fwd
    sys.path.insert(0, str(REPO / "pyshim"))
    from swiftmoe.nn import swiglu_expert  # the engine's own per-slot expert

    w_gate_FD, w_up_FD, w_down_DF = w(f, d), w(f, d), w(d, f)
    return [w_gate_FD, w_up_FD, w_down_DF], lambda x: swiglu_expert(
        x, w_gate_FD, w_up_FD, w_down_DF
    )


def flops_fwd_bwd(tokens: int, d: int, f: int, act: str) -> float:
    """Forward+backward FLOPs of one expert: 3 x 2*T*D*F per weight matrix."""
    return 6.0 * tokens * d * f * (3 if act == "swiglu" else 2)


# ---- timing ------------------------------------------------------------------------------------


def cpu_clock() -> Callable[[], float]:
    """The clock of CPU measurements: thread CPU time with one torch thread, else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median time of fn in ms: CUDA events on a GPU; on a CPU the calling thread's CPU time when
    torch runs one thread (robust to other processes on a shared machine), else wall time."""
    for _ in range(warmup):
        fn()
    times = []
    clock = cpu_clock()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = clock()
            fn()
            times.append((clock() - t0) * 1e3)
    return statistics.median(times)


def measure_shape(
    d: int,
    f: int,
    act: str,
    tokens: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    reps: int,
) -> list[dict[str, float]]:
    """One table column: a row per token count."""
    weights, fwd = make_expert(d, f, act, device, dtype)
    rows = []
    for t in tokens:
        g = torch.Generator().manual_seed(t)
        x_TD = torch.randn(t, d, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
        dy_TD = torch.randn(t, d, generator=g).to(device=device, dtype=dtype)

        def forward(x_TD: torch.Tensor = x_TD) -> None:
            fwd(x_TD)  # as in training: autograd records, the graph is dropped

        def forward_backward(x_TD: torch.Tensor = x_TD, dy_TD: torch.Tensor = dy_TD) -> None:
            for p in (*weights, x_TD):
                p.grad = None
            fwd(x_TD).backward(dy_TD)

        fwd_ms = time_ms(forward, device, warmup, reps)
        fb_ms = time_ms(forward_backward, device, warmup, reps)
        rows.append(
            {
                "tokens": t,
                "fwd_ms": round(fwd_ms, 4),
                "fwd_bwd_ms": round(fb_ms, 4),
                "fwd_bwd_tflops": round(flops_fwd_bwd(t, d, f, act) / (fb_ms * 1e-3) / 1e12, 4),
            }
        )
    return rows


# ---- link figures (GPU) -----------------------------------------------------------------------


def link_figures(device: torch.device, warmup: int, reps: int) -> dict[str, float]:
    """Device copy and pinned host<->device bandwidth, and NCCL all_to_all_single at world size 1."""
    out: dict[str, float] = {}
    n = 1 << 28  # 256 MiB
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), device, warmup, reps)
    out["d2d_copy_GBps_read_plus_write"] = round(2 * n / (ms * 1e-3) / 1e9, 1)
    h = torch.empty(n, dtype=torch.uint8).pin_memory()
    ms = time_ms(lambda: a.copy_(h, non_blocking=True), device, warmup, reps)
    out["h2d_pinned_GBps"] = round(n / (ms * 1e-3) / 1e9, 1)
    ms = time_ms(lambda: h.copy_(a, non_blocking=True), device, warmup, reps)
    out["d2h_pinned_GBps"] = round(n / (ms * 1e-3) / 1e9, 1)
    import torch.distributed as dist

    if not dist.is_nccl_available():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group(
            "nccl", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
        )
        try:
            for nbytes in (4096, 64 << 20):
                src = torch.zeros(nbytes, dtype=torch.uint8, device=device)
                dst = torch.empty_like(src)
                ms = time_ms(
                    lambda dst=dst, src=src: dist.all_to_all_single(dst, src), device, warmup, reps
                )
                out[f"nccl_ws1_all_to_all_single_{nbytes}B_ms"] = round(ms, 4)
        finally:
            dist.destroy_process_group()
    return out


# ---- the table ---------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(
    device: torch.device,
    dtype: torch.dtype,
    shapes: Mapping[str, tuple[int, int, str]],
    tokens: Sequence[int],
    *,
    max_tokens: Mapping[str, int] | None = None,
    warmup: int = 3,
    reps: int = 10,
    links: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """The calibration table (calibration/README.md format) for ``shapes`` on ``device``."""
    if warmup < 0 or reps < 1:
        raise ValueError(f"warmup={warmup}, reps={reps}: pass warmup >= 0 and reps >= 1")
    if not tokens or any(t < 1 for t in tokens):
        raise ValueError(f"tokens {list(tokens)}: pass positive token counts")
    table: dict = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        table["device"] = props.name
        table["torch"] = torch.__version__
        table["sm_count"] = props.multi_processor_count
        table["memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        threads = torch.get_num_threads()
        table["device"] = f"CPU ({cpu_name()}, {threads} torch thread{'s' * (threads > 1)})"
        table["torch"] = torch.__version__
        table["threads"] = threads
        table["cpus"] = os.cpu_count()
        # a shared machine: the 1-minute load average when the measurement started
        table["load_average_1m"] = round(os.getloadavg()[0], 2)
    table["dtype"] = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        how = "CUDA events"
    elif cpu_clock() is time.thread_time:
        how = "thread_time: CPU time of the one compute thread"
    else:
        how = "perf_counter: wall time"
    table["method"] = f"one expert per call, median of {reps} runs after {warmup} warm-ups ({how})"
    table["measured"] = datetime.date.today().isoformat()
    table["shapes"] = {}
    for name, (d, f, act) in shapes.items():
        cap = (max_tokens or {}).get(name)
        ts = [t for t in tokens if cap is None or t <= cap]
        log(f"{name}: tokens {ts[0]}..{ts[-1]}")
        table["shapes"][name] = measure_shape(d, f, act, ts, device, dtype, warmup, reps)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if links and device.type == "cuda":
        table.update(link_figures(device, warmup, reps))
    return table


def validate_table(table: object) -> None:
    """Raises ValueError naming the field when ``table`` is not in the calibration format."""
    if not isinstance(table, dict):
        raise ValueError("calibration table: expected a JSON object")
    for key in ("device", "torch"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ValueError(f"calibration table: '{key}' must be a non-empty string")
    shapes = table.get("shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError("calibration table: 'shapes' must map 'NAME (dD fF act)' to rows")
    for name, rows in shapes.items():
        if not _SHAPE_RE.search(name):
            raise ValueError(f"calibration table: shape {name!r} must end in '(dD fF gelu|swiglu)'")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"calibration table: shape {name!r} has no rows")
        last = 0
        for i, row in enumerate(rows):
            for k in REQUIRED_ROW_KEYS:
                v = row.get(k) if isinstance(row, dict) else None
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise ValueError(
                        f"calibration table: shapes[{name!r}][{i}].{k} must be a number > 0"
                    )
            if row["tokens"] <= last:
                raise ValueError(
                    f"calibration table: shapes[{name!r}][{i}].tokens must increase row by row"
                )
            last = row["tokens"]


def default_out(table: dict) -> Path:
    if table["device"].startswith("CPU"):
        return REPO / "calibration" / "cpu-expert-ffn.json"
    m = re.search(r"\b([A-Z]\d{2,4}[A-Za-z]*)\b", table["device"])
    slug = (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", table["device"].lower())).lower()
    return REPO / "calibration" / f"{slug}-expert-ffn.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads on cpu")
    p.add_argument("--warmup", type=int, default=None, help="default: 3 (cuda), 2 (cpu)")
    p.add_argument("--reps", type=int, default=None, help="default: 10 (cuda), 9 (cpu)")
    p.add_argument("--tokens", default=None, help="comma-separated token counts")
    p.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    p.add_argument("--no-links", action="store_true", help="skip the GPU link figures")
    p.add_argument("--out", default=None, help="output JSON (default: calibration/...)")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible; run on a GPU or pass --device cpu")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if cpu:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    dtype = getattr(torch, args.dtype or ("float32" if cpu else "bfloat16"))
    all_shapes = CPU_SHAPES if cpu else GPU_SHAPES
    shapes = all_shapes
    if args.shapes:
        names = [s.strip() for s in args.shapes.split(",")]
        known = {**GPU_SHAPES, **CPU_SHAPES}
        bad = [n for n in names if n not in known]
        if bad:
            p.error(f"--shapes: unknown {bad}; choose from {sorted(known)}")
        shapes = {n: known[n] for n in names}
    try:
        tokens = (
            [int(t) for t in args.tokens.split(",")]
            if args.tokens
            else (CPU_TOKENS if cpu else GPU_TOKENS)
        )
    except ValueError:
        p.error(f"--tokens {args.tokens!r}: pass comma-separated integers")
    t0 = time.monotonic()
    table = calibrate(
        device,
        dtype,
        shapes,
        tokens,
        max_tokens=CPU_MAX_TOKENS if cpu and not args.tokens else None,
        warmup=args.warmup if args.warmup is not None else (2 if cpu else 3),
        reps=args.reps if args.reps is not None else (9 if cpu else 10),
        links=not args.no_links,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    validate_table(table)
    out = Path(args.out) if args.out else default_out(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {out} ({table['device']}, {time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
