#!/usr/bin/env python3
"""Time one MoE training step of static expert parallelism, SwiftMoE and the balance bound.

A benchmark, not a test. It spawns 2 gloo ranks on 127.0.0.1 (one torch thread each) and trains
a model of L MoE blocks (SwiGLU experts, D -> F -> D, top-k) on T tokens per rank. The router is
controlled, not learned: a bench-only block (``ScheduledMoE``, handled by an adapter registered
through ``swiftmoe.adapters.register_adapter``) returns a scheduled top-k per iteration. The
schedule is deterministic given ``--seed`` and the same for every system.

Section "skew" (experts drawn from a Zipf popularity whose hot set is re-drawn every
``--shift-every`` iterations):
  static    E experts on N*S = E slots, one slot each, placement never changes (plan_source=None);
  swiftmoe  the same model with more slots per rank for replicas, placed every iteration from
            the previous iteration's loads (the sidecar's "swiftmoe" strategy when
            bin/swiftmoe-sidecar exists, else swiftmoe.planning.reference in-process: replicas
            proportional to load, LPT packing); optimizer state stays sharded 1/N;
  bound     the static layout fed perfectly uniform routing with the same token count: every
            rank gets exactly the mean load (perfect balance, the same total expert work).
Section "uniform" (each token picks top-k experts uniformly at random): static vs swiftmoe.
Section "moving" (the same Zipf popularity, its hot set re-drawn every ``--move-every`` = 3
iterations, so the step after a move runs on a placement planned for the old hot set):
  swiftmoe          SwiftMoE as configured by default, burst replicas included;
  swiftmoe-noburst  the same with burst_slots_per_rank=0;
  bound             as above.
"swiftmoe" is SwiftMoE's default configuration everywhere (``--burst-slots`` and
``--burst-threshold`` default to SwiftMoEConfig's); static and the bound never burst. Whether a
burst is made is the engine's cost model's call, with its CPU defaults (swiftmoe.engine.burst_run).

The systems run interleaved iteration by iteration (A B C A B C ...), so machine noise hits them
alike. Step time = forward + backward + handle.step() (expert optimizer step and remap), the
slowest rank's, median over the timed iterations.

    python3 scripts/bench_step.py [--iters 40] [--uniform-iters 30] [--json FILE]

Shape legend: T tokens per rank, D model dim, F expert hidden dim, E experts, K top-k,
L MoE layers, N ranks, S slots per rank, I iterations.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

# Imported before init_process_group: importing it afterwards (torch.optim does, at the first
# optimizer) keeps references to the default group, so destroy_process_group cannot join gloo's
# worker threads, and one that drops a finished collective's tensors during interpreter exit
# aborts the process ("terminate called without an active exception").
import torch._dynamo  # noqa: F401
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "pyshim"))
import swiftmoe  # noqa: E402
from swiftmoe import nn as smnn  # noqa: E402
from swiftmoe.adapters.base import RouteResult, register_adapter  # noqa: E402
from swiftmoe.adapters.native import NativeMoEAdapter  # noqa: E402
from swiftmoe.planning import reference  # noqa: E402
from swiftmoe.planning.sources import CallablePlanSource  # noqa: E402
from swiftmoe.sim import trace  # noqa: E402

WORLD_SIZE = 2
_CONFIG_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(swiftmoe.SwiftMoEConfig)
    if f.name in ("burst_slots_per_rank", "burst_threshold")
}
BUSY_LOAD = 1.0  # 1-minute load average above which the report warns that the figures are noisy

# ---------------------------------------------------------------------------- the bench block


class ScheduledMoE(smnn.MoE):
    """``swiftmoe.nn.MoE`` whose router returns a scheduled top-k (bench only).

    ``set_routing(ids_TK)`` sets the expert ids of the next forward; the combine weights are the
    router's softmax at those ids, renormalised, so gradients still reach the router.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheduled_ids_TK: torch.Tensor | None = None

    def set_routing(self, ids_TK: torch.Tensor) -> None:
        if ids_TK.dim() != 2 or ids_TK.shape[1] != self.top_k:
            raise ValueError(
                f"ScheduledMoE.set_routing: ids_TK must be [T, {self.top_k}], got "
                f"{tuple(ids_TK.shape)}"
            )
        self.scheduled_ids_TK = ids_TK.long()

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids_TK = self.scheduled_ids_TK
        if ids_TK is None or ids_TK.shape[0] != x_TD.shape[0]:
            raise ValueError(
                f"ScheduledMoE.route: {x_TD.shape[0]} tokens but the schedule holds "
                f"{None if ids_TK is None else ids_TK.shape[0]}; call set_routing(ids_TK) "
                "with one row per token before forward"
            )
        probs_TE = torch.softmax(self.router(x_TD).float(), dim=-1)
        weights_TK = probs_TE.gather(1, ids_TK)
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        return ids_TK, weights_TK.to(x_TD.dtype)


class ScheduledMoEAdapter(NativeMoEAdapter):
    """The adapter of ``ScheduledMoE``: the reference layer's weights, the scheduled router."""

    name = "bench.ScheduledMoE"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, ScheduledMoE)

    def route(self, block: nn.Module, x_TD: torch.Tensor) -> RouteResult:
        ids_TK, weights_TK = block.route(x_TD)
        return RouteResult(topk_ids_TK=ids_TK, topk_weights_TK=weights_TK)


ADAPTER = register_adapter(ScheduledMoEAdapter())


class BenchModel(nn.Module):
    """L residual ScheduledMoE blocks: h = h + moe_l(h).

    When ``marks`` is a list, forward appends the thread CPU time at the start of every block
    after the first, and backward appends it when a block's input gradient is ready (its
    backward is done): segment boundaries between the layers' collectives.
    """

    def __init__(self, L: int, D: int, F: int, E: int, K: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ScheduledMoE(D, F, E, K) for _ in range(L))
        self.marks: list[float] | None = None

    def _mark_grad(self, g: torch.Tensor) -> None:
        if self.marks is not None:
            self.marks.append(time.thread_time())

    def set_routing(self, ids_LTK: list[torch.Tensor]) -> None:
        for block, ids_TK in zip(self.blocks, ids_LTK, strict=True):
            block.set_routing(ids_TK)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        h_TD = x_TD
        for i, block in enumerate(self.blocks):
            if i > 0 and self.marks is not None:
                self.marks.append(time.thread_time())
                if h_TD.requires_grad:
                    h_TD.register_hook(self._mark_grad)
            h_TD = h_TD + block(h_TD)
        return h_TD


# ---------------------------------------------------------------------------- routing schedules


def routing(
    kind: str, it: int, layer: int, rank: int, T: int, E: int, K: int, args: argparse.Namespace
) -> torch.Tensor:
    """ids_TK of one rank, layer and iteration; deterministic in ``args.seed``.

    kind "skew": top-K without replacement from a Zipf popularity whose permutation (the hot
    set) is shared by all ranks and re-drawn every ``shift_every`` iterations; "moving": the
    same, re-drawn every ``move_every`` iterations; "uniform": top-K uniformly at random;
    "balanced": every expert gets exactly T*K/E of this rank's assignments.
    """
    base = (args.seed * 1_000_003 + layer * 7919) & 0x7FFFFFFF
    if kind == "balanced":
        g = torch.Generator().manual_seed(base + it * 31 + rank)
        t_T = torch.randperm(T, generator=g)
        return torch.stack([(t_T + j) % E for j in range(K)], dim=1)
    g = torch.Generator().manual_seed(base + 104729 * (it + 1) + rank)
    if kind == "uniform":
        p_E = torch.full((E,), 1.0 / E, dtype=torch.float64)
    elif kind in ("skew", "moving"):
        phase = it // (args.shift_every if kind == "skew" else args.move_every)
        gp = torch.Generator().manual_seed(base + 15485863 * (phase + 1))
        perm_E = torch.randperm(E, generator=gp).numpy()
        p_E = torch.from_numpy(trace.zipf_popularity(E, args.zipf, perm_E))
    else:
        raise ValueError(f"routing: kind must be skew, moving, uniform or balanced, got {kind!r}")
    return torch.multinomial(p_E.float().expand(T, E), K, replacement=False, generator=g)


# ---------------------------------------------------------------------------- the Python planner


def replica_counts(loads_E: list[int], N: int, S: int) -> list[int]:
    """Replicas per expert, proportional to load, at most N replicas each while there are slots
    for that (swiftmoe.planning.reference, the Python planner of the tests and benchmarks)."""
    return reference.replica_counts(loads_E, N, S, cap_at_ranks=True)


def python_plan(loads_LE: list[list[int]], N: int, S: int) -> list[list[int]]:
    """Per layer, replicas proportional to load and LPT packing (pure)."""
    return reference.plan_layers(loads_LE, N, S, cap_at_ranks=True)


# ---------------------------------------------------------------------------- one rank


def _plan_source(args: argparse.Namespace, rank: int, E: int, P: int, shared: dict) -> Any:
    """Rank 0's plan source for a SwiftMoE system (None elsewhere) and its label."""
    if rank != 0:
        return None
    S, L = args.swift_slots, args.layers
    if shared.get("kind") == "sidecar":
        from swiftmoe.planning.client import JobSpec
        from swiftmoe.planning.service import PlanService

        spec = JobSpec(
            world_size=WORLD_SIZE,
            slots_per_rank=S,
            experts_per_layer=[E] * L,
            expert_param_numel=[P] * L,
            strategy="swiftmoe",
        )
        first = shared.get("services", [])
        addr = first[0].sidecar.address if first and first[0].sidecar is not None else None
        svc = PlanService(spec, address=addr)
        svc.start()
        shared.setdefault("services", []).append(svc)
        return svc
    src = CallablePlanSource(
        lambda it, loads_LE: python_plan(loads_LE, WORLD_SIZE, S), name="python-planner"
    )
    shared.setdefault("callables", []).append(src)
    return src


def _choose_planner(args: argparse.Namespace, rank: int) -> tuple[str, str]:
    """("sidecar" | "python", why) on rank 0; both ranks learn it from the first plan source."""
    if args.planner == "python":
        return "python", "--planner python"
    from swiftmoe.planning.binaries import SidecarNotFoundError, find_sidecar_binary

    try:
        path = find_sidecar_binary()
    except SidecarNotFoundError as e:
        if args.planner == "sidecar":
            raise
        return "python", f"no sidecar binary ({str(e).split(':')[0]})"
    return "sidecar", f"sidecar {path}"


class System:
    """One trained model: its routing kind, handle, timings and per-iteration stats."""

    def __init__(
        self, name: str, routing_kind: str, slots: int, swift: bool, bursts: int = 0
    ) -> None:
        self.name, self.routing_kind, self.slots, self.swift = name, routing_kind, slots, swift
        self.bursts = bursts  # burst_slots_per_rank
        self.bursts_I: list[int] = []  # burst replicas made per iteration, all layers
        self.model: BenchModel | None = None
        self.handle: swiftmoe.SwiftMoEHandle | None = None
        self.times_I: list[float] = []
        self.phases_I: list[tuple[float, float, float]] = []  # forward, backward, step
        self.cpu_I: list[float] = []  # this rank's thread CPU time of the step
        self.seg_I: list[list[float]] = []  # CPU time per segment between the layers' collectives
        self.mom_I: list[float] = []
        self.events: dict[str, int] = {}
        self.changed = 0


def _build(sysm: System, args: argparse.Namespace, rank: int, shared: dict) -> None:
    torch.manual_seed(args.seed)  # the same initial weights for every system (rank 0's win)
    model = BenchModel(args.layers, args.dim, args.hidden, args.experts, args.top_k)
    P = 3 * args.dim * args.hidden
    src = _plan_source(args, rank, args.experts, P, shared) if sysm.swift else None
    cfg = swiftmoe.SwiftMoEConfig(
        slots_per_rank=sysm.slots,
        optimizer="AdamW",
        optimizer_kwargs={"lr": 1e-4},
        plan_source=src,
        plan_deadline_s=args.plan_deadline_ms / 1000.0,
        burst_slots_per_rank=sysm.bursts,
        burst_threshold=args.burst_threshold,
    )
    sysm.handle = swiftmoe.replicate_(model, cfg)
    sysm.model = model


def _sync() -> None:
    """A barrier through all_reduce (bounded by the group's timeout)."""
    dist.all_reduce(torch.zeros(1))


def _run_section(
    systems: list[System], iters: int, args: argparse.Namespace, rank: int, x_TD: torch.Tensor
) -> None:
    T, E, K, L = args.tokens, args.experts, args.top_k, args.layers
    for it in range(args.warmup + iters):
        sched = {
            kind: [routing(kind, it, layer, rank, T, E, K, args) for layer in range(L)]
            for kind in {s.routing_kind for s in systems}
        }
        for sysm in systems:
            model, handle = sysm.model, sysm.handle
            model.set_routing(sched[sysm.routing_kind])
            _sync()
            c0, t0 = time.thread_time(), time.perf_counter()
            marks = model.marks = [c0]
            loss = model(x_TD).square().mean()
            t1 = time.perf_counter()
            marks.append(time.thread_time())
            loss.backward()
            t2 = time.perf_counter()
            marks.append(time.thread_time())
            stats = handle.step()
            t3, c3 = time.perf_counter(), time.thread_time()
            marks.append(c3)
            model.marks = None
            handle.zero_grad()
            model.zero_grad(set_to_none=True)
            if it >= args.warmup:
                sysm.times_I.append(t3 - t0)
                sysm.cpu_I.append(c3 - c0)
                sysm.seg_I.append([b - a for a, b in zip(marks, marks[1:], strict=False)])
                sysm.phases_I.append((t1 - t0, t2 - t1, t3 - t2))
                sysm.mom_I.append(sum(stats.max_over_mean_L) / len(stats.max_over_mean_L))
                sysm.bursts_I.append(sum(stats.bursts_L))
                key = stats.plan_event.split(":", 1)[0]
                sysm.events[key] = sysm.events.get(key, 0) + 1
                sysm.changed += int(stats.placement_changed)


def _rank_main(rank: int, args: argparse.Namespace, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ["WORLD_SIZE"], os.environ["RANK"] = str(WORLD_SIZE), str(rank)
    store = dist.FileStore(os.path.join(tmp, "store"), WORLD_SIZE)
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=args.collective_timeout),
    )
    shared: dict[str, Any] = {}
    try:
        kind, why = _choose_planner(args, rank) if rank == 0 else ("", "")
        if rank == 0 and kind == "sidecar":
            shared["kind"] = "sidecar"
        B = args.burst_slots
        skew = [
            System("static", "skew", args.static_slots, False),
            System("swiftmoe", "skew", args.swift_slots, True, B),
            System("bound", "balanced", args.static_slots, False),
        ]
        uniform = [
            System("static", "uniform", args.static_slots, False),
            System("swiftmoe", "uniform", args.swift_slots, True, B),
        ]
        moving = [
            System("swiftmoe", "moving", args.swift_slots, True, B),
            System("swiftmoe-noburst", "moving", args.swift_slots, True, 0),
            System("bound", "balanced", args.static_slots, False),
        ]
        sections = {"skew": skew, "uniform": uniform, "moving": moving}
        sections = {k: v for k, v in sections.items() if k in args.sections}
        for sysm in [s for systems in sections.values() for s in systems]:
            try:
                _build(sysm, args, rank, shared)
            except Exception as e:
                if not (sysm.swift and shared.get("kind") == "sidecar" and args.planner == "auto"):
                    raise
                # The binary exists but the sidecar did not come up: say so, plan in Python.
                for svc in shared.pop("services", []):
                    svc.close()
                shared["kind"] = "python"
                kind, why = "python", f"the sidecar failed to start ({type(e).__name__}: {e})"
                _build(sysm, args, rank, shared)
        torch.manual_seed(1000 + rank)
        x_TD = torch.randn(args.tokens, args.dim)
        load0 = os.getloadavg()
        iters = {"skew": args.iters, "uniform": args.uniform_iters, "moving": args.moving_iters}
        wall: dict[str, float] = {}
        for section, systems in sections.items():
            t0 = time.monotonic()
            _run_section(systems, iters[section], args, rank, x_TD)
            wall[section] = time.monotonic() - t0
        load1 = os.getloadavg()
        # The step time of an iteration is the slowest rank's.
        result: dict[str, Any] = {}
        for section, systems in sections.items():
            for sysm in systems:
                t_I = torch.tensor(sysm.times_I, dtype=torch.float64)
                dist.all_reduce(t_I, op=dist.ReduceOp.MAX)
                sysm.times_I = t_I.tolist()
                c_I = torch.tensor(sysm.cpu_I, dtype=torch.float64)
                dist.all_reduce(c_I, op=dist.ReduceOp.MAX)
                sysm.cpu_I = c_I.tolist()
                # Critical path on dedicated cores: per segment the busier rank, summed.
                seg_IG = torch.tensor(sysm.seg_I, dtype=torch.float64)
                dist.all_reduce(seg_IG, op=dist.ReduceOp.MAX)
                sysm.seg_I = seg_IG.sum(1).tolist()
                ph_I3 = torch.tensor(sysm.phases_I, dtype=torch.float64)
                dist.all_reduce(ph_I3, op=dist.ReduceOp.MAX)
                sysm.phases_I = ph_I3.tolist()
            result[section] = systems
        if rank == 0:
            events = {}
            for svc in shared.get("services", []) + shared.get("callables", []):
                for k, v in dict(svc.events).items():
                    events[k] = events.get(k, 0) + v
            out = {
                "planner": kind,
                "planner_why": why,
                "planner_events": events,
                "loadavg_start": list(load0),
                "loadavg_end": list(load1),
                "wall_s": wall,
                "sections": {
                    sec: {
                        s.name: {
                            "routing": s.routing_kind,
                            "slots_per_rank": s.slots,
                            "burst_slots_per_rank": s.bursts,
                            "bursts": s.bursts_I,
                            "times_s": s.times_I,
                            "phases_s": s.phases_I,
                            "cpu_s": s.cpu_I,
                            "cpu_path_s": s.seg_I,
                            "max_over_mean": s.mom_I,
                            "plan_events": s.events,
                            "placement_changes": s.changed,
                        }
                        for s in systems
                    }
                    for sec, systems in result.items()
                },
            }
            with open(os.path.join(tmp, "result.json"), "w") as f:
                json.dump(out, f)
    except BaseException:
        with open(os.path.join(tmp, f"error_{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        for svc in shared.get("services", []) + shared.get("callables", []):
            svc.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(args: argparse.Namespace) -> dict[str, Any]:
    """Run both ranks; their rank-0 result. Raises with the failing rank's traceback."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo traffic over 127.0.0.1
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="swiftmoe-bench-") as tmp:
        ctx = mp.start_processes(
            _rank_main, args=(args, tmp), nprocs=WORLD_SIZE, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + args.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"bench_step: ranks still running after --timeout {args.timeout:.0f} s; "
                        "killed them (raise --timeout or lower --iters)"
                    )
                try:
                    if ctx.join(timeout=min(left, 1.0)):
                        break
                except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                    errs = [
                        Path(tmp, n).read_text()
                        for n in sorted(os.listdir(tmp))
                        if n.startswith("error_")
                    ]
                    msg = "\n".join(errs) or str(e)
                    raise RuntimeError(f"bench_step: a rank failed:\n{msg}") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
        return json.loads(Path(tmp, "result.json").read_text())


# ---------------------------------------------------------------------------- report


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarize(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures: per system median/p10/p90 ms and mean busiest/mean rank load; ratios of
    medians and paired (per-iteration) median ratios; targets met or not."""
    sections: dict[str, Any] = {}
    for sec, systems in raw["sections"].items():
        out: dict[str, Any] = {"systems": {}}
        for name, s in systems.items():
            t = s["times_s"]
            out["systems"][name] = {
                "routing": s["routing"],
                "slots_per_rank": s["slots_per_rank"],
                "burst_slots_per_rank": s["burst_slots_per_rank"],
                "bursts_per_iteration": statistics.fmean(s["bursts"]),
                "iterations_with_bursts": sum(1 for b in s["bursts"] if b),
                "median_ms": 1e3 * statistics.median(t),
                "p10_ms": 1e3 * _pct(t, 0.1),
                "p90_ms": 1e3 * _pct(t, 0.9),
                "cpu_median_ms": 1e3 * statistics.median(s["cpu_s"]),
                "cpu_path_median_ms": 1e3 * statistics.median(s["cpu_path_s"]),
                "iterations": len(t),
                "median_phase_ms": {
                    ph: 1e3 * statistics.median(p[i] for p in s["phases_s"])
                    for i, ph in enumerate(("forward", "backward", "step"))
                },
                "mean_max_over_mean": statistics.fmean(s["max_over_mean"]),
                "plan_events": s["plan_events"],
                "placement_changes": s["placement_changes"],
            }

        def ratio(a: str, b: str, systems=systems, out=out) -> dict[str, float]:
            ta, tb = systems[a]["times_s"], systems[b]["times_s"]
            sa, sb = out["systems"][a], out["systems"][b]
            return {
                "of_medians": sa["median_ms"] / sb["median_ms"],
                "paired_median": statistics.median(x / y for x, y in zip(ta, tb, strict=True)),
                "cpu_path_of_medians": sa["cpu_path_median_ms"] / sb["cpu_path_median_ms"],
            }

        if sec == "skew":
            out["ratios"] = {
                "swiftmoe_over_bound": ratio("swiftmoe", "bound"),
                "static_over_swiftmoe": ratio("static", "swiftmoe"),
                "static_over_bound": ratio("static", "bound"),
            }
            for key, tk in (("of_medians", "targets"), ("cpu_path_of_medians", "targets_cpu_path")):
                r1 = out["ratios"]["swiftmoe_over_bound"][key]
                r2 = out["ratios"]["static_over_swiftmoe"][key]
                out[tk] = {
                    "swiftmoe_within_10pct_of_bound": r1 <= 1.10,
                    "swiftmoe_at_least_25pct_faster_than_static": r2 >= 1.25,
                }
        elif sec == "moving":
            out["ratios"] = {
                "swiftmoe_over_bound": ratio("swiftmoe", "bound"),
                "noburst_over_swiftmoe": ratio("swiftmoe-noburst", "swiftmoe"),
                "noburst_over_bound": ratio("swiftmoe-noburst", "bound"),
            }
            for key, tk in (("of_medians", "targets"), ("cpu_path_of_medians", "targets_cpu_path")):
                r = out["ratios"]["noburst_over_swiftmoe"][key]
                out[tk] = {"bursts_not_slower": r >= 1.0}
        else:
            out["ratios"] = {"swiftmoe_over_static": ratio("swiftmoe", "static")}
            for key, tk in (("of_medians", "targets"), ("cpu_path_of_medians", "targets_cpu_path")):
                r = out["ratios"]["swiftmoe_over_static"][key]
                out[tk] = {"swiftmoe_at_most_3pct_slower_than_static": r <= 1.03}
        sections[sec] = out
    return {
        "benchmark": "bench_step",
        "config": {
            "world_size": WORLD_SIZE,
            "threads_per_rank": 1,
            "backend": "gloo",
            "layers": args.layers,
            "dim": args.dim,
            "hidden": args.hidden,
            "experts": args.experts,
            "top_k": args.top_k,
            "tokens_per_rank": args.tokens,
            "static_slots_per_rank": args.static_slots,
            "swiftmoe_slots_per_rank": args.swift_slots,
            "zipf_s": args.zipf,
            "shift_every": args.shift_every,
            "move_every": args.move_every,
            "burst_slots_per_rank": args.burst_slots,
            "burst_threshold": args.burst_threshold,
            "iters": args.iters,
            "uniform_iters": args.uniform_iters,
            "moving_iters": args.moving_iters,
            "sections": args.sections,
            "warmup": args.warmup,
            "seed": args.seed,
            "plan_deadline_ms": args.plan_deadline_ms,
        },
        "planner": raw["planner"],
        "planner_why": raw["planner_why"],
        "planner_events": raw["planner_events"],
        "loadavg_before": raw["loadavg_before"],
        "loadavg_start": raw["loadavg_start"],
        "loadavg_end": raw["loadavg_end"],
        "wall_s": raw["wall_s"],
        "sections": sections,
    }


def print_report(rep: dict[str, Any]) -> None:
    c = rep["config"]
    print(
        f"bench_step: {c['world_size']} gloo ranks x {c['threads_per_rank']} thread, "
        f"{c['layers']} MoE layers, D={c['dim']} F={c['hidden']} E={c['experts']} "
        f"top-{c['top_k']}, {c['tokens_per_rank']} tokens/rank, seed {c['seed']}"
    )
    label = {
        "sidecar": "the real sidecar (PlanService, strategy 'swiftmoe')",
        "python": "IN-PROCESS PYTHON PLANNER (replicas proportional to load + LPT packing), "
        "not the sidecar",
    }[rep["planner"]]
    print(f"swiftmoe placement planned by {label}: {rep['planner_why']}")
    print(
        f"swiftmoe holds {c['swiftmoe_slots_per_rank']} expert weight slots per rank vs "
        f"{c['static_slots_per_rank']} for static (more weight memory); optimizer state stays "
        "sharded 1/N in both"
    )
    la, la0, la1 = rep["loadavg_before"], rep["loadavg_start"], rep["loadavg_end"]
    print(
        f"load average (1/5/15 min): before spawning the ranks {la[0]:.2f}/{la[1]:.2f}/"
        f"{la[2]:.2f}, at the first timed step {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, at the "
        f"end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f} ({os.cpu_count()} CPUs)"
    )
    if la[0] > BUSY_LOAD:
        print(
            f"WARNING: the machine was busy (load {la[0]:.2f} > {BUSY_LOAD} before the ranks "
            "started). Ranks that share cores with other work hide imbalance (the core a "
            "waiting rank frees goes partly to the busy one), so wall-clock ratios understate "
            "what balance buys; rerun when the machine is quiet."
        )
    print(
        "median ms: forward + backward + handle.step() wall time of the slowest rank, median "
        "over iterations; cpu-path ms: per segment between collectives (each layer's forward "
        "and backward, the step) the CPU time of the busier rank, summed, median: the step on "
        "dedicated cores less communication waits, unaffected by other load; busiest/mean: busiest rank's tokens / mean under the "
        "split that ran, mean over layers and iterations; bursts: burst replicas made per "
        "iteration (all layers), mean, and the iterations with any"
    )
    print(
        f"burst replicas: {c['burst_slots_per_rank']} burst slot(s) per rank, threshold "
        f"{c['burst_threshold']}, decided by the engine's cost model (CPU defaults)"
    )
    for sec, title in (
        ("skew", f"skew: Zipf s={c['zipf_s']}, hot set re-drawn every {c['shift_every']} iters"),
        ("uniform", "uniform: top-k uniformly at random"),
        (
            "moving",
            f"moving: Zipf s={c['zipf_s']}, hot set re-drawn every {c['move_every']} iters",
        ),
    ):
        if sec not in rep["sections"]:
            continue
        s = rep["sections"][sec]
        n_it = c[{"skew": "iters", "uniform": "uniform_iters", "moving": "moving_iters"}[sec]]
        print(f"\n[{title}; {n_it} timed iterations]")
        print(
            f"{'system':<16} {'slots':>5} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} "
            f"{'fwd/bwd/step ms':>17} {'cpu-path ms':>11} {'busiest/mean':>12} "
            f"{'bursts':>11} {'plan events':<24}"
        )
        for name, v in s["systems"].items():
            ev = ", ".join(f"{k} {n}" for k, n in sorted(v["plan_events"].items()))
            ph = "/".join(f"{x:.0f}" for x in v["median_phase_ms"].values())
            bu = f"{v['bursts_per_iteration']:.1f} ({v['iterations_with_bursts']})"
            print(
                f"{name:<16} {v['slots_per_rank']:>5} {v['median_ms']:>10.1f} "
                f"{v['p10_ms']:>8.1f} {v['p90_ms']:>8.1f} {ph:>17} "
                f"{v['cpu_path_median_ms']:>11.1f} {v['mean_max_over_mean']:>12.3f} {bu:>11} "
                f"{ev:<24}"
            )
        for rname, r in s["ratios"].items():
            print(
                f"  {rname:<22} {r['of_medians']:.3f} (of medians)  "
                f"{r['paired_median']:.3f} (median of per-iteration ratios)  "
                f"{r['cpu_path_of_medians']:.3f} (cpu-path ms)"
            )
        for tname, ok in s["targets"].items():
            ok_cpu = s["targets_cpu_path"][tname]
            print(
                f"  target {tname}: {'met' if ok else 'NOT met'} (median ms), "
                f"{'met' if ok_cpu else 'NOT met'} (cpu-path ms)"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=40, help="timed iterations, skew section")
    ap.add_argument("--uniform-iters", type=int, default=30, help="timed iterations, uniform")
    ap.add_argument("--moving-iters", type=int, default=30, help="timed iterations, moving hot set")
    ap.add_argument(
        "--move-every",
        type=int,
        default=3,
        help="moving section: new hot set every N iterations (default 3)",
    )
    ap.add_argument(
        "--burst-slots",
        type=int,
        default=_CONFIG_DEFAULTS["burst_slots_per_rank"],
        help="burst slots per rank of the swiftmoe systems (default: SwiftMoEConfig's, "
        f"{_CONFIG_DEFAULTS['burst_slots_per_rank']}; 0 turns bursts off)",
    )
    ap.add_argument(
        "--burst-threshold",
        type=float,
        default=_CONFIG_DEFAULTS["burst_threshold"],
        help="busiest rank over mean above which bursts are considered (default: "
        f"SwiftMoEConfig's, {_CONFIG_DEFAULTS['burst_threshold']})",
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations per section")
    ap.add_argument(
        "--tokens",
        type=int,
        default=4096,
        help="tokens per rank (T; default 4096, the simulator's tokens per GPU: expert work "
        "dominates the step as in training, not the per-slot weight and gradient exchanges)",
    )
    ap.add_argument("--dim", type=int, default=256, help="model dim (D)")
    ap.add_argument("--hidden", type=int, default=512, help="expert hidden dim (F)")
    ap.add_argument("--experts", type=int, default=8, help="experts per layer (E)")
    ap.add_argument("--top-k", type=int, default=2, help="experts per token (K)")
    ap.add_argument("--layers", type=int, default=2, help="MoE layers (L)")
    ap.add_argument("--static-slots", type=int, default=0, help="static slots/rank (0: E/N)")
    ap.add_argument(
        "--swift-slots",
        type=int,
        default=5,
        help="SwiftMoE slots per rank (default 5: one replica slot per rank more than static; "
        "the gradient and remap exchanges grow with the slots, so 6 costs more here)",
    )
    trace.add_skew_arguments(ap, zipf=1.2, shift_every=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--planner",
        choices=("auto", "sidecar", "python"),
        default="auto",
        help="auto: the sidecar when bin/swiftmoe-sidecar exists, else the Python planner",
    )
    ap.add_argument("--plan-deadline-ms", type=float, default=5.0, help="engine's plan deadline")
    ap.add_argument("--collective-timeout", type=float, default=120.0, help="seconds")
    ap.add_argument("--timeout", type=float, default=900.0, help="whole run, seconds")
    ap.add_argument(
        "--sections",
        default="skew,uniform,moving",
        help="comma-separated sections to run (default: skew,uniform,moving)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.static_slots == 0:
        args.static_slots = -(-args.experts // WORLD_SIZE)
    checks = (
        ("--iters", args.iters, 1),
        ("--uniform-iters", args.uniform_iters, 1),
        ("--moving-iters", args.moving_iters, 1),
        ("--move-every", args.move_every, 1),
        ("--burst-slots", args.burst_slots, 0),
        ("--warmup", args.warmup, 0),
        ("--tokens", args.tokens, 1),
        ("--dim", args.dim, 1),
        ("--hidden", args.hidden, 1),
        ("--experts", args.experts, 1),
        ("--layers", args.layers, 1),
        ("--shift-every", args.shift_every, 1),
    )
    for flag, v, lo in checks:
        if v < lo:
            ap.error(f"{flag} must be >= {lo}, got {v}")
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in args.sections if x not in ("skew", "uniform", "moving")]
    if bad or not args.sections:
        ap.error(
            f"--sections takes skew, uniform and moving, comma-separated; got {bad or '(none)'}"
        )
    if not args.burst_threshold >= 1.0:
        ap.error(f"--burst-threshold must be >= 1.0, got {args.burst_threshold}")
    if not 1 <= args.top_k <= args.experts:
        ap.error(f"--top-k must be in 1..--experts={args.experts}, got {args.top_k}")
    if args.static_slots * WORLD_SIZE != args.experts:
        ap.error(
            f"--static-slots {args.static_slots} x {WORLD_SIZE} ranks must equal --experts "
            f"{args.experts} (one slot per expert); leave it at 0 with an even --experts"
        )
    if args.swift_slots < args.static_slots:
        ap.error(f"--swift-slots must be >= --static-slots ({args.static_slots})")
    try:
        trace.check_zipf(args.zipf, "--zipf")
    except ValueError as e:
        ap.error(str(e))
    if args.tokens % args.experts:
        ap.error("--tokens must be a multiple of --experts (so the bound's routing is exact)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    before = os.getloadavg()
    raw = _spawn(args)
    raw["loadavg_before"] = list(before)
    rep = summarize(raw, args)
    print_report(rep)
    if args.json is not None:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
