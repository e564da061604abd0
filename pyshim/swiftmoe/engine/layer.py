"""One MoE block under replicate mode: its slot weights, its placement and the dispatch.

Rank r of N with S slots (DESIGN.md "One training iteration"): route -> local counts ->
all_reduce of the [N, E] count matrix -> this rank's part of the split of every expert's tokens
over its replicas, from these actual counts -> send order by destination slot ->
all_to_all_single -> S slot GEMMs over contiguous groups -> reverse all_to_all_single ->
the adapter's combine (its dtypes and order of additions). Router scores a block applies to
the expert input (``RouteResult.input_scale_TK``) are applied on the token's own rank, before
the first all_to_all, so the router's gradient is computed where the router ran. The slot
weights are leaf tensors that require grad and are not registered on the model, so the user's
optimizer and DDP never see them.

A layer sees the engine around it only through its :class:`LayerContext`: the split function,
the capacity factor, the autograd anchor of its collectives and the callback that takes its
loads. Training-mode forwards add to the block's load buffers (``swiftmoe.engine.stats``),
except activation checkpointing's recompute, whose tokens the first forward counted. A forward
in eval mode waits at most ``eval_timeout_s`` for the other ranks' matching forward (a forward
on one rank alone would otherwise wait for the process group's timeout).

Shape legend:
    T  tokens of this rank   D  model dim    A  assignments, T*top_k   M  rows of a group
    E  experts               N  ranks (Q: source rank)    S  slots per rank
    K  slots of the layer, N*S (or top-k in ids_TK / weights_TK)      P  elements of one expert
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swiftmoe.adapters import ExpertSpec, MoEAdapter
from swiftmoe.adapters.base import weighted_sum
from swiftmoe.engine import burst_run
from swiftmoe.engine import dispatch as dp
from swiftmoe.engine.blocks import MoEBlock
from swiftmoe.engine.burst_run import BurstPolicy
from swiftmoe.engine.dist import Comm, all_to_all_rows
from swiftmoe.engine.plan import max_over_mean
from swiftmoe.engine.split import RankSplit
from swiftmoe.engine.splitter import RankSplitter
from swiftmoe.engine.stats import add_stat_buffers, dropped_of, in_recompute, loads_of
from swiftmoe.engine.step_costs import StepCosts

__all__ = ["ExpertLayer", "LayerContext", "SplitFn", "use_grouped_mm"]

#: ``split(counts_NE, slots_K, layer_index, slots_per_rank=None, cost=None) -> RankSplit``:
#: this rank's part of a layer's token split (counts_NE: all-reduced int64 [N, E] on the CPU;
#: slots_K: the placement, CPU int64 [N*S]; slots_per_rank: None, or the S' of a placement
#: enlarged by burst slots; cost: the layer's cost parameters, with which the split's stage 1
#: is priced on several nodes), checked so that it cannot misroute
#: (``swiftmoe.engine.splitter.RankSplitter``).
SplitFn = Callable[..., RankSplit]


@dataclass(frozen=True)
class LayerContext:
    """What an expert layer needs of the engine around it, and nothing more.

    Attributes:
        split: this rank's part of the token split (:data:`SplitFn`).
        capacity_factor: None (dropless) or the DeepSpeed-style capacity factor.
        anchor: a scalar that requires grad, shared by the layers: it keeps every
            all_to_all in the autograd graph on every rank, so all ranks run the backward one.
        on_loads: ``on_loads(layer_index)`` once the layer's global loads of a training
            forward are in its buffers.
        eval_timeout_s: the longest an eval-mode forward waits for the other ranks.
        bursts: the burst replicas' shared policy (``swiftmoe.engine.burst_run``), or None
            when they are off.
        costs: the cost model's parameters shared by the layers
            (``swiftmoe.engine.step_costs``), or None when nothing is priced (no bursts, and
            one node or a split method other than "auto").
    """

    split: SplitFn
    capacity_factor: float | None
    anchor: torch.Tensor
    on_loads: Callable[[int], None]
    eval_timeout_s: float = 60.0
    bursts: BurstPolicy | None = None
    costs: StepCosts | None = None


def use_grouped_mm(
    adapter: MoEAdapter, spec: ExpertSpec, device: torch.device, dtype: torch.dtype
) -> bool:
    """Run a rank's slots with ``torch._grouped_mm`` (one grouped GEMM per weight)?

    Only where it is fast and supported (shared/calibration/README.md): the adapter provides
    ``grouped_forward``, CUDA on Hopper or newer, bf16/fp16 weights, and every weight dim a
    multiple of 8 (16-byte aligned rows). Elsewhere the slots run as per-slot matmuls.
    """
    if getattr(adapter, "grouped_forward", None) is None or not hasattr(torch, "_grouped_mm"):
        return False
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if any(int(d) % 8 for shape in spec.shapes for d in shape):
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


class ExpertLayer:
    """One MoE block under replicate mode: slot weights, placement and the dispatch."""

    def __init__(
        self,
        index: int,
        where: MoEBlock,
        spec: ExpertSpec,
        num_experts: int,
        top_k: int,
        comm: Comm,
        slots_per_rank: int,
        ctx: LayerContext,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.index, self.spec = index, spec
        self.fqn, self.block, self.adapter = where
        self.E, self.top_k, self.S = num_experts, top_k, slots_per_rank
        self.comm, self.ctx = comm, ctx
        self.device, self.dtype = device, dtype
        self.numels = [math.prod(s) for s in spec.shapes]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.numels))]
        self.P = sum(self.numels)
        self.elem_bytes = torch.empty((), dtype=dtype).element_size()  # of the slot weights
        self.shapes = spec.shapes
        self.split = ctx.split
        self.grouped = use_grouped_mm(self.adapter, spec, device, dtype)
        self.slots: list[int] = []
        self.slot_params: list[tuple[torch.Tensor, ...]] = []
        self.stacked: tuple[torch.Tensor, ...] = ()
        self.last_max_over_mean = 1.0
        self.bursts_made = 0  # bursts of this iteration's training forwards
        self.node_local_calls = 0  # of them, those split keeping tokens in their node
        add_stat_buffers(self.block, num_experts, device)

    # ---- slot weights -------------------------------------------------------------------------

    def slots_on_device(self, slots_K: list[int]) -> torch.Tensor:
        """slots_K as an int64 tensor on the layer's device (the one in force if unchanged)."""
        if slots_K == self.slots:
            return self.slots_dev
        return torch.tensor(slots_K, dtype=torch.long, device=self.device)

    def set_slots(self, slots_K: list[int], flat_SP: torch.Tensor) -> None:
        """Install a placement and its slot weights flat_SP [S, P] (this rank's slots)."""
        if slots_K != self.slots:  # what derives from the placement changes with it only
            self.slots = list(slots_K)
            self.perm_K, self.inv_K = dp.slot_order(self.slots)
            self.slots_t = torch.tensor(self.slots, dtype=torch.long)
            self.slots_dev = self.slots_t.to(self.device)
            # What the split takes: the placement's checked index, looked up once per
            # placement rather than once per layer call, where the split is the engine's own.
            sp = self.ctx.split
            self.split_slots = (
                sp.index(self.slots_t, self.comm.world_size, self.E)
                if isinstance(sp, RankSplitter)
                else self.slots_t
            )
        flat_SP = flat_SP.detach()
        if self.grouped:
            self.stacked = tuple(
                flat_SP[:, o : o + n].reshape(self.S, *shape).contiguous().requires_grad_()
                for o, n, shape in zip(self.offsets, self.numels, self.spec.shapes, strict=True)
            )
            self.slot_params = []
        else:
            self.slot_params = [
                tuple(
                    flat_SP[s, o : o + n].view(shape).detach().requires_grad_()
                    for o, n, shape in zip(self.offsets, self.numels, self.spec.shapes, strict=True)
                )
                for s in range(self.S)
            ]
            self.stacked = ()

    def leaves(self) -> list[torch.Tensor]:
        if self.grouped:
            return list(self.stacked)
        return [p for ps in self.slot_params for p in ps]

    def slot_grads(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gradients of this rank's slots as grad_SP [S, P] in ``dtype`` (zero where none)."""
        every = all(t.grad is not None for t in self.leaves())  # then each element is written
        make = torch.empty if every else torch.zeros
        g_SP = make(self.S, self.P, dtype=dtype, device=self.device)
        if self.grouped:
            for o, n, t in zip(self.offsets, self.numels, self.stacked, strict=True):
                if t.grad is not None:
                    g_SP[:, o : o + n] = t.grad.reshape(self.S, n)
        else:
            for s, ps in enumerate(self.slot_params):
                for o, n, t in zip(self.offsets, self.numels, ps, strict=True):
                    if t.grad is not None:
                        g_SP[s, o : o + n] = t.grad.reshape(n)
        return g_SP

    def zero_grad(self) -> None:
        for t in self.leaves():
            t.grad = None

    # ---- forward ------------------------------------------------------------------------------

    def install(self) -> None:
        layer = self

        def forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return layer.forward(*args, **kwargs)

        self.block.forward = types.MethodType(forward, self.block)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        block, adapter = self.block, self.adapter
        x = args[0] if args else kwargs["hidden_states"]
        x_TD = adapter.flatten_input(block, args, kwargs)
        route = adapter.route(block, x_TD)
        y_TD = self.run(
            x_TD,
            route.topk_ids_TK,
            route.topk_weights_TK,
            input_scale_TK=route.input_scale_TK,
            combine=lambda y_TKD: adapter.combine(block, y_TKD, route, x_TD),
        )
        return adapter.block_output(block, y_TD, route, x)

    def run(
        self,
        x_TD: torch.Tensor,
        ids_TK: torch.Tensor,
        weights_TK: torch.Tensor,
        *,
        input_scale_TK: torch.Tensor | None = None,
        combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """y_TD of x_TD routed to ids_TK. ``combine(y_TKD) -> y_TD`` sums each token's K
        expert outputs (default: weighted by weights_TK); ``input_scale_TK`` multiplies each
        assignment's expert input."""
        comm, S, E = self.comm, self.S, self.E
        N, r = comm.world_size, comm.rank
        T, top_k = ids_TK.shape
        e_A = ids_TK.reshape(-1).long()
        cap = dp.capacity_of(self.ctx.capacity_factor, e_A.numel(), E)
        order_M, counts_E, dropped = dp.order_by_expert(e_A, E, cap)

        counts_NE = torch.zeros(N, E, dtype=torch.long, device=x_TD.device)
        counts_NE[r] = counts_E
        if self.block.training:
            comm.all_reduce_(counts_NE)
        else:
            comm.all_reduce_within_(counts_NE, self.ctx.eval_timeout_s, f"MoE block {self.fqn!r}")
        counts_cpu = counts_NE.cpu()
        cost = None
        if self.ctx.costs is not None:
            row_bytes = x_TD.shape[-1] * x_TD.element_size()
            cost = self.ctx.costs.params(self.P, self.elem_bytes, row_bytes)
        perm_K, inv_K = self.perm_K, self.inv_K
        bursts = None
        if self.ctx.bursts is None:
            rs = self.ctx.split(counts_cpu, self.split_slots, self.index, cost=cost)
        else:  # the split, and past the threshold the bursts: one C call where it can
            record = self.block.training and not in_recompute()  # the gate takes it in
            rs, bursts = burst_run.split_and_decide(
                self, self.ctx.bursts, counts_cpu, self.split_slots, cost, record=record
            )
            if bursts is not None:
                rs, S, perm_K, inv_K = (
                    bursts.split,
                    bursts.slots_per_rank,
                    bursts.perm_K,
                    bursts.inv_K,
                )

        flow_QS = rs.recv_QS
        maps = dp.dispatch_maps(
            order_M, rs.send_K, perm_K, inv_K, flow_QS, T * top_k, self.S
        )  # fmt: skip
        x_send = dp.expand_rows(x_TD, maps.send_A, maps.inv_A, top_k)
        if input_scale_TK is not None:
            scale_A = input_scale_TK.reshape(-1).index_select(0, maps.send_A)
            x_send = x_send * scale_A.unsqueeze(-1)
        in_splits = rs.send_K.numpy().reshape(N, S).sum(1).tolist()
        out_splits = flow_QS.numpy().sum(1).tolist()
        anchor = self.ctx.anchor
        recv = all_to_all_rows(x_send, anchor, comm, out_splits, in_splits)
        pending = None
        if bursts is not None:  # the burst slots' weights travel while the planned slots run
            recv, pending = burst_run.start_copy(self, bursts, recv)

        rows_S, offs_S = maps.rows_S, maps.offs_S
        xs = dp.permute_rows(recv, maps.to_slot, maps.from_slot)
        if pending is None:
            ys = self.run_slots(xs, rows_S, offs_S=offs_S)
        else:
            planned = int(rows_S[: self.S].sum())
            ys = self.run_slots(xs[:planned], rows_S[: self.S], offs_S=offs_S[: self.S])
            ys, weights = burst_run.finish_copy(self, bursts, pending, ys)
            burst_rows = rows_S[self.S :]
            ys_burst = self.run_slots(
                xs[planned:], burst_rows, weights, offs_S=offs_S[self.S :]
            )  # fmt: skip
            ys = torch.cat((ys, ys_burst))
        y_recv = dp.permute_rows(ys, maps.from_slot, maps.to_slot)
        back = all_to_all_rows(y_recv, anchor, comm, in_splits, out_splits)

        if maps.inv_A is not None:  # dropless: every assignment came back, a permutation
            y_AD = dp.permute_rows(back, maps.inv_A, maps.send_A)
        else:
            y_AD = back.new_zeros(T * top_k, back.shape[-1]).index_copy(0, maps.send_A, back)
        y_TKD = y_AD.view(T, top_k, y_AD.shape[-1])
        y_TD = weighted_sum(y_TKD, weights_TK) if combine is None else combine(y_TKD)

        # statistics of training iterations only, each token once under checkpointing
        if self.block.training and not in_recompute():
            with torch.no_grad():
                loads_of(self.block).add_(counts_NE.sum(0))
                dropped_of(self.block).add_(dropped)
                self.last_max_over_mean = max_over_mean(rs.load_R)
                self.bursts_made += 0 if bursts is None else bursts.plan.count
                self.node_local_calls += rs.node_local
            self.ctx.on_loads(self.index)
        return y_TD

    def run_slots(
        self,
        xs_MD: torch.Tensor,
        rows_S: torch.Tensor,
        weights: list | tuple | None = None,
        *,
        offs_S: torch.Tensor,
    ) -> torch.Tensor:
        """This rank's slots over their contiguous token groups of xs_MD (slot-major).

        ``weights``: None for the planned slots' own (rows_S [S]); else the burst slots'
        (rows_S [S' - S]; ``burst_run.finish_copy``: per-slot tuples, or stacked tensors).
        ``offs_S``: the groups' int32 cumulative ends on xs_MD's device
        (``dispatch.DispatchMaps``), which the grouped GEMMs take.
        """
        if xs_MD.shape[0] == 0:
            return xs_MD
        if self.grouped:
            stacked = self.stacked if weights is None else weights
            return self.adapter.grouped_forward(self.block, xs_MD, offs_S, stacked)
        slot_params = self.slot_params if weights is None else weights
        outs = []
        start = 0
        for s, n in enumerate(rows_S.tolist()):
            if n:
                outs.append(self.spec.forward(xs_MD[start : start + n], *slot_params[s]))
            start += n
        return torch.cat(outs)
