"""Index math of the dispatch: pure, vectorised functions (no loop over tokens).

A rank's token assignments (token, expert) are first ordered by expert (a stable argsort), which
also gives the local counts. The split ``flow_QK`` says how many of rank q's assignments of
expert e go to each slot k holding e; a rank fills e's slots in increasing slot order. The
functions below turn that into a send order grouped by destination slot, and regroup what a rank
receives (grouped by source rank, then slot) into slot-major order for the expert GEMMs.

On a GPU the split (CPU) reaches the device in one asynchronous copy per layer call
(``dispatch_maps``), so the count matrix's copy to the host is the call's only wait, and the
row gathers whose index is a permutation take their backward as a gather by the inverse
(``permute_rows``, ``expand_rows``) rather than a scatter-add.

Shape legend:
    T  tokens of this rank        K  top-k (in ids_TK) or all slots N*S (in *_K vectors)
    A  token assignments, T*top_k E  experts
    N  ranks (Q when it is the source rank)
    S  slots per rank             G  segments
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "exclusive_cumsum",
    "slot_order",
    "order_by_expert",
    "DispatchMaps",
    "dispatch_maps",
    "inverse_permutation",
    "permute_rows",
    "expand_rows",
]


def exclusive_cumsum(x_G: torch.Tensor) -> torch.Tensor:
    """[0, x0, x0+x1, ...] (len G)."""
    return torch.cumsum(x_G, 0) - x_G


def slot_order(slots_K: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm_K, inv_perm_K): slots sorted by (expert, slot id), and its inverse permutation.

    Computed once per placement, not per iteration.
    """
    # In NumPy: a stable sort by expert is the order by (expert, slot id), and on these small
    # arrays its few calls cost a fraction of torch's (a burst layer call makes one).
    s_K = np.asarray(slots_K, dtype=np.int64)
    perm_K = np.argsort(s_K, kind="stable")
    inv_K = np.empty_like(perm_K)
    inv_K[perm_K] = np.arange(perm_K.size)
    return torch.from_numpy(perm_K), torch.from_numpy(inv_K)


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


def _upload(device: torch.device, flat: np.ndarray) -> torch.Tensor:
    """An int64 host array on ``device``: the array itself on the CPU; on CUDA through pinned
    memory in one copy that does not wait. A copy from pageable host memory waits for the
    device's stream to drain first, so a layer that moved its index vectors one by one stalled
    the GPU once per vector; packed into one pinned buffer they travel in one asynchronous copy
    (the pinned allocator keeps the buffer until the copy is done)."""
    if device.type != "cuda":  # pinned memory is CUDA's; elsewhere a plain copy
        return torch.from_numpy(flat).to(device)
    buf = torch.empty(flat.size, dtype=torch.long, pin_memory=True)
    buf.numpy()[:] = flat
    return buf.to(device, non_blocking=True)


def _excl(x: np.ndarray) -> np.ndarray:
    """NumPy exclusive_cumsum."""
    return np.cumsum(x) - x


def _segments(shift_G: torch.Tensor, lengths_G: torch.Tensor, total: int) -> torch.Tensor:
    """The concatenation over segments G of ``arange(start, start + length)``, from each
    segment's shift ``start - exclusive_cumsum(lengths)`` (``total``: the lengths' sum), on
    their device (no host wait). Gathering a buffer with it lays its segments out one after
    the other in order G."""
    if total == 0:
        return torch.zeros(0, dtype=torch.long, device=shift_G.device)
    return torch.repeat_interleave(shift_G, lengths_G, output_size=total) + torch.arange(
        total, device=shift_G.device
    )


@dataclass(frozen=True)
class DispatchMaps:
    """One layer call's index maps on the device (see :func:`dispatch_maps`).

    ``send_A``: assignment ids in send order; ``inv_A``: its inverse ([A], when every
    assignment is sent: dropless) or None; ``to_slot`` / ``from_slot``: the received rows to
    slot-major order and back (inverse permutations of each other); ``rows_S``: rows per slot
    (CPU); ``offs_S``: int32 cumulative ends of the first ``S_head`` slots' groups and then,
    restarting at 0, of the rest (the burst slots), on the device.
    """

    send_A: torch.Tensor
    inv_A: torch.Tensor | None
    to_slot: torch.Tensor
    from_slot: torch.Tensor
    rows_S: torch.Tensor
    offs_S: torch.Tensor


def dispatch_maps(
    order_M: torch.Tensor,
    my_flow_K: torch.Tensor,
    perm_K: torch.Tensor,
    inv_perm_K: torch.Tensor,
    flow_QS: torch.Tensor,
    assignments: int,
    S_head: int,
) -> DispatchMaps:
    """The send order and the received rows' slot-major order of one layer call, in one pass:
    the segment shifts are computed on the CPU from the split (CPU tensors, in NumPy, whose
    per-call cost on vectors this short is a fraction of torch's), travel to ``order_M``'s
    device in one asynchronous copy (:func:`_upload`), and the long index vectors are
    expanded there.

    ``assignments``: T*top_k, the size of the assignment space ``send_A`` indexes; ``S_head``:
    where the slot groups' offsets restart (the planned slots' count when burst slots follow).
    """
    flow_K = my_flow_K.numpy()
    fqs = flow_QS.numpy()
    Q, S = fqs.shape
    seg_len_G = flow_K[perm_K.numpy()]
    send_shift = _excl(seg_len_G)[inv_perm_K.numpy()] - _excl(flow_K)
    flow_SQ = fqs.T.reshape(-1)
    flow_flat = fqs.reshape(-1)
    start_flat = _excl(flow_flat)  # received order: source, then slot
    start_SQ = _excl(flow_SQ)  # slot-major order: slot, then source
    to_shift = start_flat.reshape(Q, S).T.reshape(-1) - start_SQ
    from_shift = start_SQ.reshape(S, Q).T.reshape(-1) - start_flat
    rows_S = fqs.sum(0)
    offs = np.concatenate((np.cumsum(rows_S[:S_head]), np.cumsum(rows_S[S_head:])))
    # The three segment sets expand as one: each set's shifts move by where its part of the
    # one arange starts (M, then M + total).
    M, total = order_M.numel(), int(fqs.sum())
    shifts = np.concatenate((send_shift, to_shift - M, from_shift - (M + total)))
    lengths = np.concatenate((flow_K, flow_SQ, flow_flat))
    flat = np.concatenate((shifts, lengths, offs)).astype(np.int64, copy=False)
    shifts, lengths, offs = _upload(order_M.device, flat).split([shifts.size] * 2 + [offs.size])
    pos_M, to_slot, from_slot = _segments(shifts, lengths, M + 2 * total).split([M, total, total])
    send_A = order_M[pos_M]
    inv_A = inverse_permutation(send_A) if send_A.numel() == assignments else None
    return DispatchMaps(
        send_A=send_A,
        inv_A=inv_A,
        to_slot=to_slot,
        from_slot=from_slot,
        rows_S=torch.from_numpy(rows_S),
        offs_S=offs.to(torch.int32),
    )


def inverse_permutation(idx_M: torch.Tensor) -> torch.Tensor:
    """inv with ``inv[idx_M[i]] = i`` (``idx_M`` a permutation of ``0..M-1``)."""
    inv = torch.empty_like(idx_M)
    inv[idx_M] = torch.arange(idx_M.numel(), device=idx_M.device)
    return inv


class _PermuteRows(torch.autograd.Function):
    """``x.index_select(0, idx)`` for a permutation idx; the backward gathers by its inverse
    instead of index_select's scatter-add, whose atomic adds are slow in bf16 on GPUs."""

    @staticmethod
    def forward(ctx, x_MD: torch.Tensor, idx_M: torch.Tensor, inv_M: torch.Tensor):
        ctx.save_for_backward(inv_M)
        return x_MD.index_select(0, idx_M)

    @staticmethod
    def backward(ctx, g_MD: torch.Tensor):
        (inv_M,) = ctx.saved_tensors
        return g_MD.index_select(0, inv_M), None, None


def permute_rows(x_MD: torch.Tensor, idx_M: torch.Tensor, inv_M: torch.Tensor) -> torch.Tensor:
    """``x_MD[idx_M]`` for a permutation ``idx_M`` whose inverse is ``inv_M``."""
    if torch.is_grad_enabled() and x_MD.requires_grad:
        return _PermuteRows.apply(x_MD, idx_M, inv_M)
    return x_MD.index_select(0, idx_M)


class _ExpandRows(torch.autograd.Function):
    """``x_TD[send_A // K]``: every token's row once per assignment, in send order. With every
    assignment sent (dropless) the backward gathers the rows back into assignment order and
    sums each token's K, rather than scatter-adding them."""

    @staticmethod
    def forward(ctx, x_TD: torch.Tensor, send_A: torch.Tensor, inv_A: torch.Tensor, top_k: int):
        ctx.save_for_backward(inv_A)
        ctx.top_k = top_k
        return x_TD.index_select(0, send_A // top_k)

    @staticmethod
    def backward(ctx, g_AD: torch.Tensor):
        (inv_A,) = ctx.saved_tensors
        g = g_AD.index_select(0, inv_A)
        return g.view(-1, ctx.top_k, g.shape[-1]).sum(1), None, None, None


def expand_rows(
    x_TD: torch.Tensor, send_A: torch.Tensor, inv_A: torch.Tensor | None, top_k: int
) -> torch.Tensor:
    """The expert input rows in send order: ``x_TD[send_A // top_k]``. ``inv_A``: the inverse
    of ``send_A`` when it holds every assignment, else None (the plain gather's backward)."""
    if inv_A is None or not (torch.is_grad_enabled() and x_TD.requires_grad):
        return x_TD.index_select(0, send_A // top_k)
    return _ExpandRows.apply(x_TD, send_A, inv_A, top_k)
