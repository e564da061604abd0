"""Burst replicas inside the iteration: the layer's side of them.

The decision is ``swiftmoe.engine.burst.plan_bursts``, a pure function of the all-reduced counts;
this module runs it for an :class:`~swiftmoe.engine.layer.ExpertLayer` and carries it out:

* :class:`BurstPolicy`: what every layer's decision shares (burst slots per rank, threshold,
  split method); the cost model's parameters come from the engine's
  :class:`~swiftmoe.engine.step_costs.StepCosts`, identical on every rank;
* :func:`decide`: after the split on the planned placement, one cheap check (the busiest rank
  against ``threshold`` x the mean); past it, the decision and the split over the enlarged
  placement (:class:`LayerBursts`);
* :func:`copy_weights`: right after the tokens' dispatch, one ``all_to_all_single`` sends each
  burst's weights from its source slot to its burst slot, and the burst slots' weights are
  assembled for the slot GEMMs. It is autograd-aware: in backward the reverse
  ``all_to_all_single`` returns each burst replica's gradient to its source slot, whose gradient
  then reaches the shard owners like any slot's (``optim.reduce_grads``), so training stays the
  same computation. The copy also passes the dispatched tokens through, so on every rank its
  backward runs after the slot GEMMs' and before the dispatch's: the collectives keep one order
  on every rank, under activation checkpointing too (the recompute repeats the decision from
  the same counts).

Shape legend: N ranks, S planned slots per rank, S' = S + burst slots in use, B burst slots per
rank, C bursts, M rows (tokens, or one expert's flat weights per row), D model dim, P elements
of one expert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine import dispatch as dp
from swiftmoe.engine.burst import BurstPlan, pad_counts, plan_bursts
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.split import RankSplit

__all__ = [
    "BurstPolicy",
    "ExpertSlots",
    "LayerBursts",
    "copy_weights",
    "decide",
]


class ExpertSlots(Protocol):
    """What bursts need of a layer (``swiftmoe.engine.layer.ExpertLayer`` has it)."""

    index: int  # the layer's index
    comm: Comm
    S: int  # planned slots per rank
    P: int  # elements of one expert
    dtype: torch.dtype  # of the slot weights
    device: torch.device
    slots_t: torch.Tensor  # the planned placement, CPU int64 [N*S]
    split: Callable[..., RankSplit]  # the layer's SplitFn
    offsets: list[int]  # each weight's offset in the flat [P] row
    numels: list[int]
    shapes: tuple[torch.Size, ...]
    grouped: bool  # the slot weights are ``stacked`` [S, ...] leaves, else ``slot_params``
    stacked: tuple[torch.Tensor, ...]
    slot_params: list[tuple[torch.Tensor, ...]]


class BurstPolicy:
    """What every layer's burst decision shares; the same on every rank (from the config).

    Attributes: B, burst slots per rank (>= 1); threshold, the busiest rank's load over the
    mean above which bursts are considered; method, the split's.
    """

    def __init__(self, burst_slots_per_rank: int, threshold: float, method: str) -> None:
        self.B, self.threshold, self.method = burst_slots_per_rank, float(threshold), method


@dataclass(frozen=True)
class LayerBursts:
    """One layer call's bursts: the plan, this rank's split over the enlarged placement, and the
    send order of that placement (``dispatch.slot_order``)."""

    plan: BurstPlan
    split: RankSplit
    slots_per_rank: int
    perm_K: torch.Tensor
    inv_K: torch.Tensor


def decide(
    layer: ExpertSlots,
    policy: BurstPolicy,
    counts_NE: torch.Tensor,
    load_R: torch.Tensor,
    params: cm.CostParams,
) -> LayerBursts | None:
    """The layer's bursts this call, or None (the common case: one check of the split's loads).

    counts_NE: the all-reduced counts on the CPU; load_R: every rank's load under the split on
    the planned placement; params: the layer's cost parameters (``StepCosts.params``), those
    its split was given.
    """
    N = params.ranks
    if policy.B == 0 or N == 1 or int(load_R.max()) * N <= policy.threshold * int(load_R.sum()):
        return None
    plan = plan_bursts(
        counts_NE,
        layer.slots_t,
        layer.S,
        policy.B,
        params.ranks_per_node,
        params,
        policy.threshold,
        method=policy.method,
        load_R=load_R,
    )
    if plan.count == 0:
        return None
    Sx = plan.slots_per_rank
    slots_x = torch.from_numpy(plan.slots_K)
    rs = layer.split(torch.from_numpy(pad_counts(counts_NE)), slots_x, layer.index, Sx, cost=params)
    perm_K, inv_K = dp.slot_order(plan.slots_K.tolist())
    return LayerBursts(plan, rs, Sx, perm_K, inv_K)


class _BurstCopy(torch.autograd.Function):
    """The weights' ``all_to_all_single``, passing the dispatched tokens through.

    Backward: the tokens' gradient passes through, and the burst replicas' gradients go back to
    their sources by the reverse ``all_to_all_single`` (zeros for rows no token used).
    """

    @staticmethod
    def forward(ctx, tokens_MD, w_send, comm: Comm, out_splits, in_splits):  # noqa: D102
        ctx.comm, ctx.out_splits, ctx.in_splits = comm, out_splits, in_splits
        ctx.w_requires_grad = w_send.requires_grad
        return tokens_MD.view_as(tokens_MD), comm.all_to_all(w_send.detach(), out_splits, in_splits)

    @staticmethod
    def backward(ctx, g_tokens, g_recv):  # noqa: D102
        g = ctx.comm.all_to_all(g_recv.contiguous(), ctx.in_splits, ctx.out_splits)
        return g_tokens, (g if ctx.w_requires_grad else None), None, None, None


def _slot_flat(layer: ExpertSlots, s: int) -> torch.Tensor:
    """Slot s's weights as one flat [P] row, in the graph of the slot's leaves."""
    if layer.grouped:
        return torch.cat([t[s].reshape(-1) for t in layer.stacked])
    return torch.cat([t.reshape(-1) for t in layer.slot_params[s]])


def copy_weights(
    layer: ExpertSlots, bursts: LayerBursts, recv_MD: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Copy the bursts' weights (a collective) and assemble this rank's S' slots' weights.

    Returns the dispatched tokens (passed through the copy, see the module docstring) and the
    weights for ``ExpertLayer.run_slots``: per-slot tuples (None for an empty burst slot), or
    the stacked tensors grown by the burst slots on the grouped path.
    """
    plan, comm = bursts.plan, layer.comm
    N, r, S, Sx = comm.world_size, comm.rank, layer.S, bursts.slots_per_rank
    c_C = np.arange(plan.count)
    send = np.flatnonzero(plan.src_C == r)
    send = send[np.lexsort((c_C[send], plan.dst_C[send]))]  # by destination, then burst
    recv = np.flatnonzero(plan.dst_C == r)
    recv = recv[np.lexsort((c_C[recv], plan.src_C[recv]))]  # by source, then burst
    in_splits = np.bincount(plan.dst_C[send], minlength=N).tolist()
    out_splits = np.bincount(plan.src_C[recv], minlength=N).tolist()
    if send.size:
        w_send = torch.stack([_slot_flat(layer, int(s)) for s in plan.src_slot_C[send]])
    else:
        w_send = torch.zeros(0, layer.P, dtype=layer.dtype, device=layer.device)
    if torch.is_grad_enabled():
        recv_MD, w_recv = _BurstCopy.apply(recv_MD, w_send, comm, out_splits, in_splits)
    else:
        w_recv = comm.all_to_all(w_send, out_splits, in_splits)
    j_recv = plan.dst_slot_C[recv] - S  # burst slot of each received row, 0..S'-S-1
    shapes = list(zip(layer.offsets, layer.numels, layer.shapes, strict=True))
    if layer.grouped:
        idx = torch.from_numpy(j_recv).to(w_recv.device)
        block = w_recv.new_zeros(Sx - S, layer.P).index_copy(0, idx, w_recv)
        weights = tuple(
            torch.cat((t, block[:, o : o + n].reshape(Sx - S, *shape)))
            for t, (o, n, shape) in zip(layer.stacked, shapes, strict=True)
        )
        return recv_MD, weights
    slot_params: list = list(layer.slot_params) + [None] * (Sx - S)
    for i, j in enumerate(j_recv.tolist()):
        slot_params[S + j] = tuple(w_recv[i, o : o + n].view(shape) for o, n, shape in shapes)
    return recv_MD, slot_params
