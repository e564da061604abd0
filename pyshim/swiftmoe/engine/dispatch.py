"""Index math of the dispatch: pure, vectorised functions (no loop over tokens).

A rank's token assignments (token, expert) are first ordered by expert (a stable argsort), which
also gives the local counts. The split ``flow_QK`` says how many of rank q's assignments of
expert e go to each slot k holding e; a rank fills e's slots in increasing slot order. The
functions below turn that into a send order grouped by destination slot, and regroup what a rank
receives (grouped by source rank, then slot) into slot-major order for the expert GEMMs.

Shape legend:
    T  tokens of this rank        K  top-k (in ids_TK) or all slots N*S (in *_K vectors)
    A  token assignments, T*top_k E  experts
    N  ranks (Q when it is the source rank)
    S  slots per rank             G  segments
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "exclusive_cumsum",
    "segment_gather_index",
    "slot_order",
    "order_by_expert",
    "send_index",
    "regroup_received",
]


def exclusive_cumsum(x_G: torch.Tensor) -> torch.Tensor:
    """[0, x0, x0+x1, ...] (len G)."""
    return torch.cumsum(x_G, 0) - x_G


def segment_gather_index(
    starts_G: torch.Tensor, lengths_G: torch.Tensor, total: int
) -> torch.Tensor:
    """Concatenation of ``arange(start, start+len)`` over segments; ``total`` = sum of lengths.

    Gathering a buffer with this index lays its segments out one after the other in order G.
    """
    if total == 0:
        return torch.zeros(0, dtype=torch.long, device=starts_G.device)
    shift_G = starts_G - exclusive_cumsum(lengths_G)
    return torch.repeat_interleave(shift_G, lengths_G, output_size=total) + torch.arange(
        total, device=starts_G.device
    )


def slot_order(slots_K: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm_K, inv_perm_K): slots sorted by (expert, slot id), and its inverse permutation.

    Computed once per placement, not per iteration.
    """
    s_K = torch.tensor(slots_K, dtype=torch.long)
    K = s_K.numel()
    perm_K = torch.argsort(s_K * K + torch.arange(K))
    inv_K = torch.empty_like(perm_K)
    inv_K[perm_K] = torch.arange(K)
    return perm_K, inv_K


def order_by_expert(
    e_A: torch.Tensor, num_experts: int, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Assignments grouped by expert: (order_M, counts_E, dropped).

    ``order_M`` indexes ``e_A`` (stable within an expert, so earlier tokens come first).
    With ``capacity`` each expert keeps its first ``capacity`` assignments and drops the rest;
    ``dropped`` counts them.
    """
    order_A = torch.argsort(e_A, stable=True)
    counts_E = torch.bincount(e_A, minlength=num_experts)
    if capacity is None or e_A.numel() == 0:
        return order_A, counts_E, 0
    start_E = exclusive_cumsum(counts_E)
    pos_A = torch.arange(e_A.numel(), device=e_A.device) - start_E[e_A[order_A]]
    keep_A = pos_A < capacity
    kept_E = counts_E.clamp(max=capacity)
    dropped = int(e_A.numel() - int(kept_E.sum()))
    return order_A[keep_A], kept_E, dropped


def capacity_of(capacity_factor: float | None, assignments: int, num_experts: int) -> int | None:
    """DeepSpeed-style per-expert capacity of one rank, or None when dropless."""
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * assignments / num_experts))


def send_index(
    order_M: torch.Tensor, my_flow_K: torch.Tensor, perm_K: torch.Tensor, inv_perm_K: torch.Tensor
) -> torch.Tensor:
    """Assignment ids (into ``e_A``) in send order: grouped by destination slot k.

    ``order_M`` groups assignments by expert; within expert e they fill e's slots in increasing
    k with ``my_flow_K[k]`` each, so segment k starts where ``perm_K`` puts it.
    """
    seg_len_G = my_flow_K[perm_K]
    start_K = exclusive_cumsum(seg_len_G)[inv_perm_K]
    pos_M = segment_gather_index(
        start_K.to(order_M.device), my_flow_K.to(order_M.device), order_M.numel()
    )
    return order_M[pos_M]


def regroup_received(flow_QS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index maps between the received order (source q, then slot s) and slot-major order.

    Returns (to_slot_M, from_slot_M, rows_S): ``recv[to_slot_M]`` is slot-major with ``rows_S``
    rows per slot; ``slot_major[from_slot_M]`` is back in received order.
    """
    Q, S = flow_QS.shape
    total = int(flow_QS.sum())
    start_QS = exclusive_cumsum(flow_QS.reshape(-1)).view(Q, S)
    to_slot = segment_gather_index(start_QS.t().reshape(-1), flow_QS.t().reshape(-1), total)
    start_SQ = exclusive_cumsum(flow_QS.t().reshape(-1)).view(S, Q)
    from_slot = segment_gather_index(start_SQ.t().reshape(-1), flow_QS.reshape(-1), total)
    return to_slot, from_slot, flow_QS.sum(0)
