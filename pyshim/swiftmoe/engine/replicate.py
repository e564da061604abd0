"""``replicate_``: take over the MoE blocks of a model in place, and build what trains them.

    handle = replicate_(model, config, filter_fn, plan_sources=factory)

It checks everything before the first collective (bad input raises ValueError naming the
field), finds the blocks through their adapters, agrees on the plan source (rank 0 asks
``plan_sources``, the factory of ``swiftmoe.planning``, when ``config.strategy`` is set), then
builds the pieces and hands them to :class:`~swiftmoe.engine.handle.SwiftMoEHandle`:

* replicate mode: expert weights from rank 0 (a broadcast), one
  :class:`~swiftmoe.engine.layer.ExpertLayer` per block with its
  :class:`~swiftmoe.engine.layer.LayerContext`, the sharded expert optimizer, the first
  placement installed;
* observe mode: one :class:`~swiftmoe.engine.observed.ObservedLayer` per block.

``swiftmoe.replicate_`` is this function with the planning wing's factory; the engine itself
never imports the planning wing.

Shape legend: L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots, P elements of
one expert.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from swiftmoe.adapters import ExpertSpec
from swiftmoe.engine import native
from swiftmoe.engine import plan as planlib
from swiftmoe.engine.blocks import MoEBlock, find_moe_blocks
from swiftmoe.engine.burst_run import BurstPolicy
from swiftmoe.engine.config import AUTO_SLOTS, SwiftMoEConfig
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.handle import SwiftMoEHandle
from swiftmoe.engine.layer import ExpertLayer, LayerContext
from swiftmoe.engine.modes import ObserveRun, ReplicateRun
from swiftmoe.engine.observed import ObservedLayer
from swiftmoe.engine.optim import ShardedExpertOptimizer
from swiftmoe.engine.plan_source import (
    JobShape,
    PlanSourceFactory,
    StartedPlanSource,
    as_plan,
)
from swiftmoe.engine.plans import PlanChannel
from swiftmoe.engine.splitter import RankSplitter
from swiftmoe.engine.stats import LOADS_BUFFER
from swiftmoe.engine.step_costs import StepCosts, default_flops_per_s

__all__ = ["replicate_"]

log = logging.getLogger("swiftmoe")


def replicate_(
    model: nn.Module,
    config: SwiftMoEConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *,
    plan_sources: PlanSourceFactory | None = None,
) -> SwiftMoEHandle:
    """Take over the MoE blocks of ``model`` in place and return the handle that trains them.

    Replicate mode moves the expert parameters out of the model (the user's optimizer and DDP
    no longer see them) into slot weights and a sharded expert optimizer; initial weights come
    from rank 0. Observe mode leaves the model's math and parameters alone and records loads.
    ``plan_sources`` starts the plan source ``config.strategy`` names (rank 0 only).
    Every check runs before the first collective; bad input raises ValueError naming the field.
    """
    if not isinstance(config, SwiftMoEConfig):
        raise ValueError(f"config: expected swiftmoe.SwiftMoEConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    config.validate()
    if config.strategy is not None and plan_sources is None:
        raise ValueError(
            f"strategy: {config.strategy!r} needs a planner to start; call swiftmoe.replicate_, "
            "which plans through the sidecar, or give plan_source instead of strategy"
        )
    rank, N = config.world()
    blocks = find_moe_blocks(model, filter_fn)
    if not blocks:
        raise ValueError(
            "replicate_: found no MoE block in the model; use swiftmoe.nn.MoE, import the "
            "adapter of your block type, or register one with register_adapter"
        )
    comm = Comm(rank, N, config.process_group)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for fqn, block, _ in blocks:
        if LOADS_BUFFER in block._buffers:
            raise ValueError(
                f"replicate_: block {fqn!r} is already handled by swiftmoe.replicate_; "
                "apply it once per model (build a fresh model to change the mode)"
            )
    fqns = [f for f, _, _ in blocks]
    E_L = [a.num_experts(b) for _, b, a in blocks]
    rpn = config.ranks_per_node or _local_world_size(N)
    auto = config.slots_per_rank == AUTO_SLOTS
    # With "auto" the planner chooses the slots when the job registers, from the static start.
    slots_L = None if auto else _initial_slots(config, E_L, fqns, N)
    source, owns = config.plan_source, False
    bandwidths = (config.intra_node_bandwidth, config.inter_node_bandwidth)
    if config.strategy is not None:
        job = _job_shape(blocks, E_L, slots_L, config, N, rpn)
        started = _start_plan_source(plan_sources, config, job, comm, device)
        source, chosen, owns = started.source, started.slots_per_rank, True
        if auto:
            config = replace(config, slots_per_rank=chosen)
            slots_L = _initial_slots(config, E_L, fqns, N)
        # The topology in force (rank 0's; the burst policy broadcasts what it uses).
        bandwidths = tuple(
            t if t > 0 else c
            for t, c in zip(
                (started.intra_node_bandwidth, started.inter_node_bandwidth),
                bandwidths,
                strict=True,
            )
        )
    if config.mode == "observe":
        run = _observe(blocks, E_L, slots_L, config, comm, source, rpn, device, bandwidths)
    else:
        run = _replicate(blocks, E_L, slots_L, config, comm, source, rpn, bandwidths)
    return SwiftMoEHandle(model, config, comm, run, source, owns, rpn)


def _observe(blocks, E_L, slots_L, config, comm, source, rpn, device, bandwidths) -> ObserveRun:
    layers = []
    for i, (where, E, slots) in enumerate(zip(blocks, E_L, slots_L, strict=True)):
        layer = ObservedLayer(i, where, E, device)
        layer.slots = list(slots)
        layers.append(layer)
    channel = _channel(source, comm, blocks, E_L, config, device)
    splitter = RankSplitter(config.slots_per_rank, comm.rank, rpn, config.split_method)
    log.info("swiftmoe: native split %s", native.why())  # loaded now, not in the first step
    # The logged max_over_mean uses the split replicate mode would run: on several nodes its
    # stage 1 is priced, with the cost parameters replicate mode would agree on.
    costs = None
    if _priced_split(config, rpn, comm.world_size):
        dtype = torch.float32
        for layer in layers:
            sizes = _expert_size(layer)
            if sizes is not None:
                layer.expert_numel, dtype = sizes
                layer.weight_bytes = torch.empty((), dtype=dtype).element_size()
        costs = StepCosts.agree(comm, device, dtype, rpn, bandwidths, config.expert_flops_per_s)
    return ObserveRun(layers, channel, comm, splitter, device, costs)


def _priced_split(config: SwiftMoEConfig, rpn: int, N: int) -> bool:
    """The split's stage 1 can be priced (split "auto" on more than one node): the layers then
    need the job's cost parameters (``StepCosts``), in replicate and observe mode alike."""
    return config.split_method == "auto" and 0 < rpn < N


def _expert_size(layer: ObservedLayer) -> tuple[int, torch.dtype] | None:
    """(elements, dtype) of one expert of an observed block, or None where its adapter cannot
    give the expert weights (observe mode then logs the min-max split for that block)."""
    try:
        first = layer.adapter.get_expert_params(layer.block)[0]
    except (ValueError, NotImplementedError, TypeError, AttributeError, IndexError) as e:
        log.info(
            "swiftmoe observe: %s: expert sizes unknown (%s); its split is unpriced", layer.fqn, e
        )
        return None
    return sum(t.numel() for t in first), first[0].dtype


def _replicate(blocks, E_L, slots_L, config, comm, source, rpn, bandwidths) -> ReplicateRun:
    N, r, S = comm.world_size, comm.rank, config.slots_per_rank
    specs, params_L = [], []
    for (fqn, block, adapter), E in zip(blocks, E_L, strict=True):
        spec = adapter.expert_spec(block)
        params = adapter.get_expert_params(block)
        _check_params(fqn, spec, params, E)
        specs.append(spec)
        params_L.append(params)
    first = params_L[0][0][0]
    device, dtype = first.device, first.dtype
    for (fqn, _, _), params in zip(blocks, params_L, strict=True):
        for t in params[0]:
            if t.device != device or t.dtype != dtype:
                raise ValueError(
                    f"replicate_: expert weights of {fqn!r} are {t.dtype} on {t.device}, "
                    f"others {dtype} on {device}; move the model to one device and dtype"
                )
    # Every check passed: from here on collectives run.
    full_L = _broadcast_weights(params_L, comm)
    channel = _channel(source, comm, blocks, E_L, config, device)
    scale = config.expert_grad_scale
    optimizer = ShardedExpertOptimizer(
        full_L,
        S,
        comm,
        config.optimizer_class,
        dict(config.optimizer_kwargs),
        1.0 / N if scale is None else float(scale),
    )
    layers: list[ExpertLayer] = []
    anchor = torch.zeros((), device=device, requires_grad=True)
    run = ReplicateRun(layers, optimizer, channel, dtype, anchor)
    # The cost model prices burst replicas, and the split's stage 1 on several nodes
    # (swiftmoe.engine.split.priced); rank 0's figures, so every rank prices alike.
    bursts = costs = None
    if config.burst_slots_per_rank > 0 and config.split_method != "even" and N > 1:
        bursts = BurstPolicy(
            config.burst_slots_per_rank,
            config.burst_threshold,
            config.split_method,
            config.burst_decision_ms,
            measure=r == 0,  # every rank gates with rank 0's figure
        )
        run.bursts = bursts
    if bursts is not None or _priced_split(config, rpn, N):
        costs = StepCosts.agree(comm, device, dtype, rpn, bandwidths, config.expert_flops_per_s)
    ctx = LayerContext(
        split=RankSplitter(S, r, rpn, config.split_method),
        capacity_factor=config.capacity_factor,
        anchor=anchor,
        on_loads=run.on_loads,
        eval_timeout_s=config.eval_forward_timeout_s,
        bursts=bursts,
        costs=costs,
    )
    for i, (where, spec, E) in enumerate(zip(blocks, specs, E_L, strict=True)):
        top_k = where.adapter.top_k(where.module)
        layers.append(ExpertLayer(i, where, spec, E, top_k, comm, S, ctx, device, dtype))
    for layer, full, slots in zip(layers, full_L, slots_L, strict=True):
        mine = torch.tensor(slots[r * S : (r + 1) * S], dtype=torch.long, device=device)
        layer.set_slots(slots, full.index_select(0, mine).to(dtype))
        layer.adapter.remove_expert_params(layer.block)
        layer.install()
    log.info(
        "swiftmoe: replicating %d MoE blocks on %d ranks x %d slots (rank %d)", len(layers), N, S, r
    )
    # Load the C split and decision now, not in the first layer call of the first step.
    log.info("swiftmoe: native split and burst decision %s", native.why())
    return run


def _broadcast_weights(params_L, comm: Comm) -> list[torch.Tensor]:
    """Every layer's expert weights as full_EP [E, P] (flattened in spec order), rank 0's."""
    full_L = [
        torch.stack([torch.cat([t.detach().reshape(-1) for t in ps]) for ps in params]).contiguous()
        for params in params_L
    ]
    flat = torch.cat([f.reshape(-1) for f in full_L])
    comm.broadcast_(flat)
    off = 0
    for i, f in enumerate(full_L):
        full_L[i] = flat[off : off + f.numel()].view_as(f)
        off += f.numel()
    return full_L


def _channel(source, comm, blocks, E_L, config, device) -> PlanChannel:
    layers = [(fqn, E) for (fqn, _, _), E in zip(blocks, E_L, strict=True)]
    return PlanChannel(source, comm, layers, config.slots_per_rank, config.plan_deadline_s, device)


def _job_shape(
    blocks: list[MoEBlock],
    E_L: list[int],
    slots_L: list[list[int]] | None,
    config: SwiftMoEConfig,
    N: int,
    rpn: int,
) -> JobShape:
    numel, elem, width = [], 4, 0
    param = None
    for _fqn, block, adapter in blocks:
        spec = adapter.expert_spec(block)
        numel.append(spec.numel)
        param = adapter.get_expert_params(block)[0][0]
        elem = param.element_size()
        width = max(width, expert_input_width(spec, adapter.get_expert_params(block)[0]))
    bursts = config.mode != "observe" and config.split_method != "even" and N > 1
    flops = config.expert_flops_per_s
    if flops <= 0 and param is not None:
        flops = default_flops_per_s(param.device, param.dtype)
    return JobShape(
        world_size=N,
        slots_per_rank=0 if slots_L is None else config.slots_per_rank,
        experts_per_layer=tuple(E_L),
        expert_param_numel=tuple(numel),
        bytes_per_param=elem,
        ranks_per_node=rpn if 0 < rpn < N and N % rpn == 0 else 0,
        initial_slots=None if slots_L is None else tuple(tuple(s) for s in slots_L),
        intra_node_bandwidth=float(config.intra_node_bandwidth),
        inter_node_bandwidth=float(config.inter_node_bandwidth),
        token_bytes=float(width * elem),
        flops_per_second=float(flops),
        burst_slots_per_rank=config.burst_slots_per_rank if bursts else 0,
        burst_threshold=float(config.burst_threshold) if bursts else 0.0,
    )


def expert_input_width(spec: ExpertSpec, params: tuple[torch.Tensor, ...]) -> int:
    """D, the width of one token's row an expert takes (and returns): the expert's forward
    run on two rows of zeros with one expert's own parameters (``params``), for each
    dimension its parameter shapes have, without autograd. 0 when none fits (the cost model
    then prices compute alone)."""
    p = params[0]
    with torch.no_grad():
        for d in sorted({int(d) for shape in spec.shapes for d in shape}):
            try:
                y = spec.forward(torch.zeros(2, d, dtype=p.dtype, device=p.device), *params)
            except Exception:  # a width the expert cannot take: try the next
                continue
            if isinstance(y, torch.Tensor) and tuple(y.shape) == (2, d):
                return d
    return 0


def _start_plan_source(
    factory: PlanSourceFactory,
    config: SwiftMoEConfig,
    job: JobShape,
    comm: Comm,
    device: torch.device,
) -> StartedPlanSource:
    """Rank 0 starts the plan source; all ranks agree on the outcome, so a failure raises
    everywhere instead of hanging the other ranks.

    Returns the source (rank 0; None elsewhere) with the slots per rank in force, which the
    planner chooses when ``job.slots_per_rank`` is 0, on every rank, and the link bandwidths in
    force (rank 0's; 0 elsewhere). A factory's ValueError (the planner refused the
    configuration, e.g. a strategy option's value) is a ValueError on every rank; any other
    failure a RuntimeError."""
    started, err, chosen, status = None, "", 0, _STARTED
    if comm.rank == 0:
        try:
            started = factory(config, job)
            chosen = started.slots_per_rank
        except ValueError as e:
            err, status = str(e), _BAD_CONFIG
        except Exception as e:
            err, status = f"{type(e).__name__}: {e}", _FAILED
    ok = torch.tensor([status, chosen], dtype=torch.long, device=device)
    comm.broadcast_(ok)
    status = int(ok[0].item())
    if status == _BAD_CONFIG:
        raise ValueError(err or "strategy: rank 0's planner refused the configuration; see its log")
    if status != _STARTED:
        raise RuntimeError(
            f"strategy: could not start the {config.strategy!r} planner: "
            f"{err or 'rank 0 failed, see its log'}"
        )
    if started is None:
        return StartedPlanSource(None, int(ok[1].item()))  # type: ignore[arg-type]
    return started


# How rank 0's attempt to start the plan source ended (broadcast to every rank).
_FAILED, _STARTED, _BAD_CONFIG = 0, 1, 2


def _initial_slots(
    config: SwiftMoEConfig, E_L: list[int], fqns: list[str], N: int
) -> list[list[int]]:
    S = config.slots_per_rank
    for fqn, E in zip(fqns, E_L, strict=True):
        if S * N < E:
            raise ValueError(
                f"slots_per_rank: {S} slots per rank x world size {N} = {S * N} slots cannot "
                f"hold the {E} experts of {fqn!r}; set slots_per_rank >= {math.ceil(E / N)}"
            )
    if config.initial_slots is None:
        return [planlib.static_slots(E, N, S) for E in E_L]
    try:
        plan = as_plan(config.initial_slots)
    except ValueError as e:
        raise ValueError(f"initial_slots: {e}") from e
    if len(plan) != len(E_L):
        raise ValueError(
            f"initial_slots: {len(plan)} layers given, the model has {len(E_L)} MoE blocks; "
            "give one slot list per block"
        )
    for li, (slots, E) in enumerate(zip(plan, E_L, strict=True)):
        try:
            planlib.validate_slots(slots, E, N, S)
        except ValueError as e:
            raise ValueError(f"initial_slots[{li}] ({fqns[li]!r}): {e}") from e
    return plan


def _local_world_size(world_size: int) -> int:
    """Ranks per node from torchrun's LOCAL_WORLD_SIZE when it divides the world, else 0."""
    try:
        n = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    except ValueError:
        return 0
    return n if 0 < n < world_size and world_size % n == 0 else 0


def _check_params(fqn: str, spec: ExpertSpec, params, E: int) -> None:
    if len(params) != E:
        raise ValueError(
            f"replicate_: adapter returned weights of {len(params)} experts for {fqn!r}, "
            f"which has {E}; fix the adapter's get_expert_params"
        )
    for e, ps in enumerate(params):
        if len(ps) != len(spec.shapes):
            raise ValueError(
                f"replicate_: expert {e} of {fqn!r} has {len(ps)} tensors, its spec names "
                f"{spec.names}; fix the adapter"
            )
        for name, t, shape in zip(spec.names, ps, spec.shapes, strict=True):
            if tuple(t.shape) != tuple(shape):
                raise ValueError(
                    f"replicate_: expert {e} {name} of {fqn!r} has shape {tuple(t.shape)}, "
                    f"spec says {tuple(shape)}; fix the adapter"
                )
