"""``swiftmoe.replicate_``: take over the experts of a model in place; the handle that trains them.

    import swiftmoe, swiftmoe.nn
    handle = swiftmoe.replicate_(model, swiftmoe.SwiftMoEConfig(slots_per_rank=4,
                                 optimizer="AdamW", optimizer_kwargs={"lr": 1e-3}))
    dense_opt = torch.optim.AdamW(handle.dense_parameters(), lr=1e-3)
    for batch in data:
        loss = model(batch).mean(); loss.backward()        # DDP/FSDP averages dense grads
        dense_opt.step(); handle.step()                     # expert step + remap
        dense_opt.zero_grad(); handle.zero_grad()

Shape legend: L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots, P elements of
one expert.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

import swiftmoe.nn  # noqa: F401  (registers the adapter of swiftmoe.nn.MoE)
from swiftmoe.adapters.base import MoEAdapter, find_adapter
from swiftmoe.engine import checkpoint as ckpt
from swiftmoe.engine import layer as rt
from swiftmoe.engine import plan as planlib
from swiftmoe.engine import split as splitlib
from swiftmoe.engine.config import AUTO_SLOTS, SwiftMoEConfig
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.optim import ShardedExpertOptimizer
from swiftmoe.engine.plan_source import as_plan

__all__ = ["replicate_", "SwiftMoEHandle", "StepStats", "find_moe_blocks"]

log = logging.getLogger("swiftmoe")

_MOE_CHILD_NAMES = ("experts",)
_ROUTER_CHILD_NAMES = ("gate", "router")
_EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")


@dataclass
class StepStats:
    """What one ``step()`` saw. Lists have one entry per MoE layer.

    Attributes:
        iteration: the iteration the stats are for.
        loads_LE: global token assignments per expert.
        max_over_mean_L: busiest rank / mean rank load under the placement in force (replicate:
            the split that ran; observe: the placement the job started with).
        dropped_L: assignments dropped by the capacity factor (0 when dropless).
        plan_event: "accepted", "kept" (no plan arrived), "none" (no plan source),
            "rejected: <reason>" or "error: <reason>".
        placement_changed: the placement differs from the one before.
        predicted_max_over_mean_L: observe mode: the ratio the plan received at the previous
            step would have given on this iteration's loads (None before the first plan).
    """

    iteration: int
    loads_LE: list[list[int]]
    max_over_mean_L: list[float]
    dropped_L: list[int]
    plan_event: str
    placement_changed: bool = False
    predicted_max_over_mean_L: list[float] | None = None
    plan_events: dict[str, int] = field(default_factory=dict)


def _looks_like_moe(module: nn.Module) -> bool:
    children = dict(module.named_children())
    if any(n in children for n in _MOE_CHILD_NAMES):
        return True
    has_router = any(n in children for n in _ROUTER_CHILD_NAMES)
    has_count = any(isinstance(getattr(module, a, None), int) for a in _EXPERT_COUNT_ATTRS) or any(
        isinstance(getattr(children.get(n), a, None), int)
        for n in _ROUTER_CHILD_NAMES
        for a in _EXPERT_COUNT_ATTRS
    )
    return has_router and has_count


def find_moe_blocks(
    model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> list[tuple[str, nn.Module, MoEAdapter]]:
    """(fqn, block, adapter) of every MoE block, outermost first; raises on unsupported ones.

    A module an adapter matches is a block and its children are not searched. A module no
    adapter matches but that looks like an MoE block (an ``experts`` child, or a ``gate`` /
    ``router`` child with an expert count) raises ValueError naming it, unless ``filter_fn``
    excludes it.
    """
    found: list[tuple[str, nn.Module, MoEAdapter]] = []
    unsupported: list[str] = []

    def walk(module: nn.Module, fqn: str) -> None:
        adapter = find_adapter(module)
        keep = filter_fn is None or filter_fn(module, fqn)
        if adapter is not None:
            if keep:
                found.append((fqn, module, adapter))
            return
        if keep and _looks_like_moe(module):
            unsupported.append(f"{fqn or '<root>'} ({type(module).__name__})")
            return
        for name, child in module.named_children():
            walk(child, f"{fqn}.{name}" if fqn else name)

    walk(model, "")
    if unsupported:
        raise ValueError(
            "replicate_: these modules look like MoE blocks but no adapter handles them: "
            f"{', '.join(unsupported)}; register an adapter with "
            "swiftmoe.adapters.base.register_adapter(...) or exclude them with filter_fn"
        )
    return found


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


def replicate_(
    model: nn.Module,
    config: SwiftMoEConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> SwiftMoEHandle:
    """Take over the MoE blocks of ``model`` in place and return the handle that trains them.

    Replicate mode moves the expert parameters out of the model (the user's optimizer and DDP
    no longer see them) into slot weights and a sharded expert optimizer; initial weights come
    from rank 0. Observe mode leaves the model's math and parameters alone and records loads.
    Every check runs before the first collective; bad input raises ValueError naming the field.
    """
    if not isinstance(config, SwiftMoEConfig):
        raise ValueError(f"config: expected swiftmoe.SwiftMoEConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    config.validate()
    rank, N = config.world()
    blocks = find_moe_blocks(model, filter_fn)
    if not blocks:
        raise ValueError(
            "replicate_: found no MoE block in the model; use swiftmoe.nn.MoE, import the "
            "adapter of your block type, or register one with register_adapter"
        )
    return SwiftMoEHandle(model, config, blocks, Comm(rank, N, config.process_group))


class SwiftMoEHandle:
    """What ``replicate_`` returns: the expert optimizer, placement, stats and checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        config: SwiftMoEConfig,
        blocks: list[tuple[str, nn.Module, MoEAdapter]],
        comm: Comm,
    ) -> None:
        self.model, self.config, self.comm = model, config, comm
        self.iteration = 0
        self.last_stats: StepStats | None = None
        self.plan_events: dict[str, int] = {}
        self._reported: set[int] = set()
        self._submitted = False
        self._pending_plan: list[list[int]] | None = None
        self._device = next((p.device for p in model.parameters()), torch.device("cpu"))
        N = comm.world_size
        self.ranks_per_node = config.ranks_per_node or _local_world_size(N)
        fqns = [f for f, _, _ in blocks]
        for fqn, block, _ in blocks:
            if rt.LOADS_BUFFER in block._buffers:
                raise ValueError(
                    f"replicate_: block {fqn!r} is already handled by swiftmoe.replicate_; "
                    "apply it once per model (build a fresh model to change the mode)"
                )
        E_L = [a.num_experts(b) for _, b, a in blocks]
        auto = config.slots_per_rank == AUTO_SLOTS
        # With "auto" the sidecar chooses the slots at registration, from the static start.
        slots_L = None if auto else _initial_slots(config, E_L, fqns, N)
        self._owns_source = config.strategy is not None
        self.plan_source = config.plan_source
        if self._owns_source:
            self.plan_source, chosen = self._start_plan_source(blocks, E_L, slots_L)
            if auto:
                self.config = config = replace(config, slots_per_rank=chosen)
                slots_L = _initial_slots(config, E_L, fqns, N)
        S = config.slots_per_rank
        if config.mode == "observe":
            self._init_observe(blocks, E_L, slots_L)
            return
        specs, params_L = [], []
        for (fqn, block, adapter), E in zip(blocks, E_L, strict=True):
            spec = adapter.expert_spec(block)
            params = adapter.get_expert_params(block)
            _check_params(fqn, spec, params, E)
            specs.append(spec)
            params_L.append(params)
        first = params_L[0][0][0]
        device, dtype = first.device, first.dtype
        for fqn, params in zip(fqns, params_L, strict=True):
            for t in params[0]:
                if t.device != device or t.dtype != dtype:
                    raise ValueError(
                        f"replicate_: expert weights of {fqn!r} are {t.dtype} on {t.device}, "
                        f"others {dtype} on {device}; move the model to one device and dtype"
                    )
        # Every check passed: from here on collectives run.
        full_L = [
            torch.stack(
                [torch.cat([t.detach().reshape(-1) for t in ps]) for ps in params]
            ).contiguous()
            for params in params_L
        ]
        flat = torch.cat([f.reshape(-1) for f in full_L])
        comm.broadcast_(flat)
        off = 0
        for i, f in enumerate(full_L):
            full_L[i] = flat[off : off + f.numel()].view_as(f)
            off += f.numel()
        self.anchor = torch.zeros((), device=device, requires_grad=True)
        self.dtype = dtype
        self.layers: list[rt.ExpertLayer] = []
        for i, ((fqn, block, adapter), spec, E) in enumerate(zip(blocks, specs, E_L, strict=True)):
            layer = rt.ExpertLayer(
                i, fqn, block, adapter, spec, E, adapter.top_k(block), comm, S, self, device, dtype
            )
            self.layers.append(layer)
        scale = config.expert_grad_scale
        self._optimizer = ShardedExpertOptimizer(
            full_L,
            S,
            comm,
            config.optimizer_class,
            dict(config.optimizer_kwargs),
            1.0 / N if scale is None else float(scale),
        )
        r = comm.rank
        for layer, full, slots in zip(self.layers, full_L, slots_L, strict=True):
            mine = torch.tensor(slots[r * S : (r + 1) * S], dtype=torch.long, device=device)
            layer.set_slots(slots, full.index_select(0, mine).to(dtype))
            layer.adapter.remove_expert_params(layer.block)
            layer.install()
        log.info(
            "swiftmoe: replicating %d MoE blocks on %d ranks x %d slots (rank %d)",
            len(self.layers),
            N,
            S,
            r,
        )

    def _init_observe(self, blocks, E_L, slots_L) -> None:
        self._optimizer = None
        self.layers = []
        for i, ((fqn, block, adapter), E, slots) in enumerate(
            zip(blocks, E_L, slots_L, strict=True)
        ):
            layer = rt.ObservedLayer(i, fqn, block, adapter, E, self, self._device)
            layer.slots = list(slots)
            self.layers.append(layer)

    def _start_plan_source(self, blocks, E_L: list[int], slots_L: list[list[int]] | None):
        """Rank 0 starts (or attaches to) the sidecar and registers the job; all ranks agree
        on the outcome, so a failure raises everywhere instead of hanging the other ranks.

        Returns the plan service (rank 0; None elsewhere) and the slots per rank in force, which
        the sidecar chooses when slots_L is None (slots_per_rank="auto")."""
        cfg, comm = self.config, self.comm
        svc, err, chosen = None, "", 0
        if comm.rank == 0:
            try:
                from swiftmoe.planning.client import JobSpec
                from swiftmoe.planning.service import PlanService

                numel, elem, rpn = [], 4, self.ranks_per_node
                for _fqn, block, adapter in blocks:
                    numel.append(adapter.expert_spec(block).numel)
                    elem = adapter.get_expert_params(block)[0][0].element_size()
                spec = JobSpec(
                    world_size=comm.world_size,
                    slots_per_rank=0 if slots_L is None else cfg.slots_per_rank,
                    experts_per_layer=list(E_L),
                    expert_param_numel=numel,
                    strategy=cfg.strategy,
                    strategy_options=dict(cfg.strategy_options),
                    ranks_per_node=rpn
                    if 0 < rpn < comm.world_size and comm.world_size % rpn == 0
                    else 0,
                    bytes_per_param=elem,
                    current_slots=slots_L,
                )
                svc = PlanService(spec, address=cfg.sidecar_address, plugins_dir=cfg.plugins_dir)
                svc.start()  # logs each value the sidecar filled in, with its source
                chosen = svc.spec.slots_per_rank
                if slots_L is None:
                    log.info("swiftmoe: the sidecar chose %d slots per rank", chosen)
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
                if svc is not None:
                    svc.close()
                svc = None
        ok = torch.tensor([0 if err else 1, chosen], dtype=torch.long, device=self._device)
        comm.broadcast_(ok)
        if int(ok[0].item()) != 1:
            raise RuntimeError(
                f"strategy: could not start the {cfg.strategy!r} planner through the sidecar: "
                f"{err or 'rank 0 failed, see its log'}; check `swiftmoe doctor`, or set "
                "sidecar_address to a running sidecar"
            )
        if svc is not None:
            log.info("swiftmoe: strategy %r planning through the sidecar", cfg.strategy)
        return svc, int(ok[1].item())

    def close(self) -> None:
        """Stop the sidecar-backed planner this handle started (idempotent)."""
        if self._owns_source and self.plan_source is not None:
            self.plan_source.close()
            self.plan_source = None

    # ---- properties -------------------------------------------------------------------------

    @property
    def placement(self) -> list[list[int]]:
        """The placement in force, per layer slots_K."""
        return [list(layer.slots) for layer in self.layers]

    @property
    def mode(self) -> str:
        return self.config.mode

    # ---- engine callbacks ---------------------------------------------------------------------

    def split(self, counts_NE: torch.Tensor, layer_index: int) -> splitlib.RankSplit:
        """This rank's part of one layer's split under its placement; checked so it cannot
        misroute.

        split_tokens_for_rank fixes the shapes and checks that every token is routed; the checks
        here cover what the rank uses: it sends each expert's tokens exactly, it receives no more
        of a source's tokens of an expert than the source has, and its load is what it receives.
        """
        cfg, S, r = self.config, self.config.slots_per_rank, self.comm.rank
        slots_t = self.layers[layer_index].slots_t  # CPU int64 [N*S]
        rs = splitlib.split_tokens_for_rank(
            counts_NE, slots_t, S, r, ranks_per_node=self.ranks_per_node, method=cfg.split_method
        )
        N, E = counts_NE.shape
        got_QE = torch.zeros(N, E, dtype=torch.long).index_add_(
            1, slots_t[r * S : (r + 1) * S], rs.recv_QS
        )
        if (
            bool((rs.send_K < 0).any())
            or bool((rs.recv_QS < 0).any())
            or not torch.equal(
                torch.zeros(E, dtype=torch.long).index_add_(0, slots_t, rs.send_K), counts_NE[r]
            )
            or bool((got_QE > counts_NE).any())
            or int(rs.load_R[r]) != int(rs.recv_QS.sum())
        ):
            raise RuntimeError(
                f"swiftmoe: the token split for layer {layer_index} does not conserve the counts "
                "(a bug in swiftmoe.split); report it with the counts and the placement"
            )
        return rs

    def split_loads(self, counts_NE: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Tokens each rank would process under ``slots`` (int64 [N]), without routing."""
        return splitlib.split_rank_loads(
            counts_NE,
            slots,
            self.config.slots_per_rank,
            ranks_per_node=self.ranks_per_node,
            method=self.config.split_method,
        )

    def on_layer_loads(self, index: int) -> None:
        """A layer has this iteration's global loads: submit them once all layers have."""
        self._reported.add(index)
        if self._submitted or len(self._reported) < len(self.layers):
            return
        self._submitted = True
        self._submit()

    def _loads_LE(self) -> list[list[int]]:
        return [getattr(layer.block, rt.LOADS_BUFFER).tolist() for layer in self.layers]

    def _submit(self, loads_LE: list[list[int]] | None = None) -> None:
        """Rank 0 hands this iteration's loads (by default its layers' load buffers) to the plan
        source; other ranks read none."""
        src = self.plan_source
        if self.comm.rank != 0 or src is None:
            return
        try:
            src.submit(self.iteration, self._loads_LE() if loads_LE is None else loads_LE)
        except Exception as e:  # a plan source must never stop training
            self._event(f"error: submit raised {type(e).__name__}: {e}")

    def _event(self, event: str) -> str:
        key = event.split(":", 1)[0]
        self.plan_events[key] = self.plan_events.get(key, 0) + 1
        if key in ("rejected", "error"):
            log.warning("swiftmoe: plan %s (iteration %d)", event, self.iteration)
        return event

    def _poll_plan(self) -> tuple[str, list[list[int]] | None]:
        """Rank 0: the next placement from the plan source, validated, or None."""
        src = self.plan_source
        if src is None:
            return "none", None
        try:
            raw = src.poll(self.config.plan_deadline_s)
        except Exception as e:
            return f"error: poll raised {type(e).__name__}: {e}", None
        if raw is None:
            return "kept", None
        try:
            plan = as_plan(raw)
            if len(plan) != len(self.layers):
                raise ValueError(f"{len(plan)} layers, the model has {len(self.layers)} MoE blocks")
            for li, (slots, layer) in enumerate(zip(plan, self.layers, strict=True)):
                try:
                    planlib.validate_slots(
                        slots, layer.E, self.comm.world_size, self.config.slots_per_rank
                    )
                except ValueError as e:
                    raise ValueError(f"layer {li} ({layer.fqn}): {e}") from e
        except ValueError as e:
            return f"rejected: {e}", None
        return "accepted", plan

    def _agree_on_plan(self) -> tuple[str, list[list[int]] | None]:
        """Rank 0 polls; the decision is broadcast so that every rank adopts the same plan."""
        K = self.comm.world_size * self.config.slots_per_rank
        L = len(self.layers)
        event, plan = ("", None)
        device = self.anchor.device if self.mode == "replicate" else self._device
        buf = torch.zeros(1 + L * K, dtype=torch.long, device=device)
        if self.comm.rank == 0:
            event, plan = self._poll_plan()
            if plan is not None:
                buf[0] = 1
                buf[1:] = torch.tensor(plan, dtype=torch.long).reshape(-1)
        self.comm.broadcast_(buf)
        if self.comm.rank != 0:
            if int(buf[0]) == 1:
                plan = buf[1:].view(L, K).tolist()
                event = "accepted"
            else:
                event = "kept"
        return self._event(event), plan

    # ---- the step -----------------------------------------------------------------------------

    def step(self) -> StepStats:
        """Expert optimizer step, then the remap to the next placement (a collective)."""
        if self.mode == "observe":
            return self._step_observe()
        opt = self._optimizer
        grads_L = [layer.slot_grads() for layer in self.layers]
        opt.reduce_grads(grads_L, [layer.slots_t for layer in self.layers])
        opt.step()
        event, plan = self._agree_on_plan()
        old = self.placement
        new = plan if plan is not None else old
        loads = self._loads_LE()
        stats = StepStats(
            iteration=self.iteration,
            loads_LE=loads,
            max_over_mean_L=[layer.last_max_over_mean for layer in self.layers],
            dropped_L=[int(getattr(layer.block, rt.DROPPED_BUFFER)) for layer in self.layers],
            plan_event=event,
            placement_changed=new != old,
            plan_events=dict(self.plan_events),
        )
        self._install_placement(new)
        self._end_iteration()
        self.last_stats = stats
        return stats

    def _install_placement(self, slots_L: list[list[int]]) -> None:
        """Remap the master shards to ``slots_L`` (a collective) and make it current."""
        slots_t = [layer.slots_on_device(s) for layer, s in zip(self.layers, slots_L, strict=True)]
        flats = self._optimizer.remap(slots_t, self.dtype)
        for layer, slots, flat in zip(self.layers, slots_L, flats, strict=True):
            layer.set_slots(slots, flat)

    def _end_iteration(self) -> None:
        for layer in self.layers:
            getattr(layer.block, rt.LOADS_BUFFER).zero_()
            getattr(layer.block, rt.DROPPED_BUFFER).zero_()
        self._reported.clear()
        self._submitted = False
        self.iteration += 1

    def _step_observe(self) -> StepStats:
        N, r = self.comm.world_size, self.comm.rank
        parts = []
        for layer in self.layers:
            m = torch.zeros(N, layer.E, dtype=torch.long, device=self._device)
            m[r] = getattr(layer.block, rt.LOADS_BUFFER)
            parts.append(m.reshape(-1))
        flat = self.comm.all_reduce_(torch.cat(parts)).cpu()
        counts_L, off = [], 0
        for layer in self.layers:
            counts_L.append(flat[off : off + N * layer.E].view(N, layer.E))
            off += N * layer.E
        loads = [c.sum(0).tolist() for c in counts_L]

        def mom(slots_L):
            return [
                planlib.max_over_mean(self.split_loads(c, s))
                for c, s in zip(counts_L, slots_L, strict=True)
            ]

        predicted = mom(self._pending_plan) if self._pending_plan is not None else None
        stats = StepStats(
            iteration=self.iteration,
            loads_LE=loads,
            max_over_mean_L=mom(self.placement),
            dropped_L=[0] * len(self.layers),
            plan_event="",
            predicted_max_over_mean_L=predicted,
        )
        self._submit(loads)
        event, plan = self._agree_on_plan()
        if plan is not None:
            self._pending_plan = plan
        stats.plan_event = event
        stats.plan_events = dict(self.plan_events)
        if r == 0:
            log.info(
                "swiftmoe observe: iteration %d max_over_mean %s, with the planned placement %s",
                self.iteration,
                [round(x, 3) for x in stats.max_over_mean_L],
                None if predicted is None else [round(x, 3) for x in predicted],
            )
        self._end_iteration()
        self.last_stats = stats
        return stats

    def zero_grad(self) -> None:
        """Clear the slot gradients (the expert half of ``optimizer.zero_grad``)."""
        if self.mode == "replicate":
            for layer in self.layers:
                layer.zero_grad()

    # ---- the user's dense side ----------------------------------------------------------------

    def dense_parameters(self, model: nn.Module | None = None) -> Iterator[nn.Parameter]:
        """The parameters the user's optimizer and DDP keep (in replicate mode, all that remain
        on the model; in observe mode, all of them, experts included)."""
        return (model or self.model).parameters()

    def ddp_ignore(self, model: nn.Module | None = None) -> list[str]:
        """Make DDP leave SwiftMoE's per-rank statistics buffers alone; call before wrapping.

        Expert parameters are no longer on the model in replicate mode, so DDP never sees them;
        what remains is the load buffers, which differ per rank and must not be broadcast.
        Returns the names set to be ignored.
        """
        model = model or self.model
        names = [
            name
            for name, _ in model.named_buffers()
            if name.rsplit(".", 1)[-1] in (rt.LOADS_BUFFER, rt.DROPPED_BUFFER)
        ]
        prior = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, sorted(set(prior) | set(names))
        )
        return names

    # ---- checkpoints --------------------------------------------------------------------------

    def _require_replicate(self, what: str) -> None:
        if self.mode != "replicate":
            raise ValueError(
                f"{what}: observe mode keeps the expert weights in the model; use "
                "model.state_dict() (mode='replicate' gives the sharded checkpoint)"
            )

    def state_dict(self) -> dict[str, Any]:
        """This rank's sharded expert weights, optimizer state, placement and iteration."""
        self._require_replicate("state_dict")
        return ckpt.sharded_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` of the same rank (a collective: every rank calls it)."""
        self._require_replicate("load_state_dict")
        ckpt.load_sharded_state(self, state)

    def export_expert_weights(self) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        """Full fp32 expert weights, {block fqn: per expert, tensors in expert_spec order}.
        A collective: every rank calls it and gets the same."""
        self._require_replicate("export_expert_weights")
        return ckpt.consolidated(self)

    def export_to(self, model: nn.Module) -> None:
        """Write the full expert weights into an unpatched model of the same architecture."""
        ckpt.export_to(self.export_expert_weights(), self, model)


def _local_world_size(world_size: int) -> int:
    """Ranks per node from torchrun's LOCAL_WORLD_SIZE when it divides the world, else 0."""
    try:
        n = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    except ValueError:
        return 0
    return n if 0 < n < world_size and world_size % n == 0 else 0


def _check_params(fqn: str, spec, params, E: int) -> None:
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
