"""The whole flow of the engine's split, dense [N, N*S] and sparse: the reference the tests check
the engine's per-rank part and the simulator's traffic sums against (and scripts/bench_split.py
times). A helper module of the tests, not of the package: the engine computes only its rank's
part (``swiftmoe.engine.split.rank``), the simulator only per-rank sums (``swiftmoe.sim.traffic``).

Both forms take the engine's stage 1 and its local and node tiers (``swiftmoe.engine.split``
``demand`` and ``tiers.route_tiers``) and route the last tier over the whole [N, H] supply
layout. Large temporaries come from per-thread scratch buffers.

Shape legend:
    Q  source ranks (Q = N: every rank sends)
    E  experts of the layer
    N  ranks;  R = N for per-rank vectors
    S  slots per rank;  K = N*S slots, slot k on rank k // S
    H  experts holding a slot (H = E unless an idle expert has none); M = H*N supplies
    D  demands: the K slots in (expert, slot) order;  F  nonzero entries of the flow
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from swiftmoe._checks import is_int
from swiftmoe.engine.split import tiers
from swiftmoe.engine.split.demand import even_demand, min_max_demand
from swiftmoe.engine.split.plan_index import PlanIndex, prepare
from swiftmoe.engine.split.tiers import transposed

__all__ = ["even_split_tokens", "rank_load_from_flow", "split_tokens", "split_tokens_sparse"]


_WORK = threading.local()


def _work(name: str, size: int) -> np.ndarray:
    """A per-thread int64 scratch array of the given size, reused across calls.

    Large temporaries otherwise come fresh from the allocator on every call and cost more in page
    faults than in arithmetic. Contents are undefined; every user overwrites what it reads.
    """
    buf = getattr(_WORK, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=np.int64)
        setattr(_WORK, name, buf)
    return buf[:size]


def _last_tier(sup_HQ: np.ndarray, da_D: np.ndarray, plan: PlanIndex, flat_index: bool = True):
    """merge for the last tier with scratch buffers: the pieces of both output forms.

    Supplies are sup_HQ in expert-major order (M = H*N, the big tier), demands da_D; totals agree
    expert by expert. Returns None when there is nothing to merge, else (amt_M, idx_M, i_X, j_X,
    amt_X, j0_M): main piece i (supply i = h*N + q) gives amt_M[i] to demand j0_M[i], flat index
    idx_M[i] = q*K + slot (None unless flat_index; the M-long arrays are scratch buffers, overwritten by the next call),
    and extra piece x gives amt_X[x] from supply i_X[x] to demand j_X[x]. Every (source, slot)
    target is distinct.
    """
    H, N = sup_HQ.shape
    M = H * N
    if M == 0 or da_D.size == 0:
        return None
    sa = sup_HQ.reshape(-1)
    s_end = np.cumsum(sa, out=_work("end", M))
    s_start = np.subtract(s_end, sa, out=_work("start", M))
    d_end = np.cumsum(da_D)
    # j0: demands that end at or before each supply's start, capped inside the expert.
    cut_D = np.searchsorted(s_start, d_end, side="left")
    cnt = _work("cnt", M + 1)
    cnt.fill(0)
    np.add.at(cnt, cut_D, 1)
    j0 = np.cumsum(cnt[:M], out=_work("j0", M))
    np.minimum(j0.reshape(H, N), plan.last_H[:, None], out=j0.reshape(H, N))
    # Boundaries strictly inside a supply: extra pieces (i, j + 1), at most D of them.
    b = d_end[:-1]
    i_B = np.searchsorted(s_end, b, side="right")
    inside = np.flatnonzero(i_B < M)
    inside = inside[s_start[i_B[inside]] < b[inside]]
    i_X, j_X = i_B[inside], inside + 1
    amt_X = np.minimum(s_end[i_X], d_end[j_X]) - b[inside]
    # Main pieces (i, j0[i]); amt overwrites cnt, the target index overwrites s_end.
    amt = np.take(d_end, j0, out=cnt[:M])
    np.minimum(amt, s_end, out=amt)
    amt -= s_start
    idx = None
    if flat_index:
        idx = np.take(plan.d_k, j0, out=s_end)
        idx.reshape(H, N)[:] += plan.qK_Q
    return amt, idx, i_X, j_X, amt_X, j0


def _merge_last(sup_HQ: np.ndarray, da_D: np.ndarray, plan: PlanIndex, flat: np.ndarray) -> None:
    """The last tier written into flat (zeros) in place; (source, slot) targets are distinct."""
    tier = _last_tier(sup_HQ, da_D, plan)
    if tier is None:
        return
    amt, idx, i_X, j_X, amt_X, _ = tier
    H, N = sup_HQ.shape
    # Scatter source-major: expert-major targets walk down columns 8*K bytes apart and miss the
    # cache on every write, row by row they stay within a row (about 4x faster, transposes
    # included; torch's blocked transpose is the fastest at hand).
    flat[transposed(idx, H, N)] = transposed(amt, H, N)
    flat[plan.qK_Q[i_X % N] + plan.d_k[j_X]] += amt_X


def _sparse_last(sup_HQ: np.ndarray, da_D: np.ndarray, plan: PlanIndex):
    """The last tier's nonzero pieces as fresh (q, k, amount) arrays."""
    tier = _last_tier(sup_HQ, da_D, plan, flat_index=False)
    if tier is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    amt, _, i_X, j_X, amt_X, j0 = tier
    N = plan.N
    nz = np.flatnonzero(amt)
    nz_X = np.flatnonzero(amt_X)
    i_X, j_X = i_X[nz_X], j_X[nz_X]
    q_M = _source_of_supply(amt.size // N, N)  # i % N by lookup: int64 division is slow
    return (
        np.concatenate((q_M[nz], q_M[i_X])),
        np.concatenate((plan.d_k[j0[nz]], plan.d_k[j_X])),
        np.concatenate((amt[nz], amt_X[nz_X])),
    )


_SOURCES: dict[tuple[int, int], np.ndarray] = {}


def _source_of_supply(H: int, N: int) -> np.ndarray:
    """q of supply i = h*N + q for the last tier's H*N supplies (cached, read-only)."""
    key = (H, N)
    q_M = _SOURCES.get(key)
    if q_M is None:
        q_M = np.tile(np.arange(N, dtype=np.int64), H)
        q_M.setflags(write=False)
        if len(_SOURCES) >= 8:
            _SOURCES.clear()
        _SOURCES[key] = q_M
    return q_M


def _route(c_QE: np.ndarray, plan: PlanIndex, demand_K: np.ndarray, ranks_per_node: int):
    """flow_QK (dense int64 [N, K] tensor) from per-slot demands; see route_tiers."""
    pieces, sup_HQ, da = tiers.route_tiers(c_QE, plan, demand_K, ranks_per_node)
    N, K = plan.N, plan.K
    flat = np.zeros(N * K, dtype=np.int64)
    _merge_last(sup_HQ, da, plan, flat)
    for idx, amt in pieces:  # (source, slot) targets are distinct within a tier
        flat[idx] += amt
    return torch.from_numpy(flat.reshape(N, K))


def _route_sparse(c_QE: np.ndarray, plan: PlanIndex, demand_K: np.ndarray, ranks_per_node: int):
    """_route's nonzero entries: (q_F, k_F, amount_F), each (source, slot) once, tier by tier.

    Tiers never overlap: after the local tier either a source's tokens of an expert or its own
    slots' demand for it are exhausted, and likewise per (expert, node) after the node tier; so a
    later tier never sends a source's tokens to its own rank, nor (with the node tier) to its
    node. That is checked on every call and overlapping pieces are summed regardless, so this is
    the dense flow's support and values by construction.
    """
    N, K, S = plan.N, plan.K, plan.S
    pieces, sup_HQ, da = tiers.route_tiers(c_QE, plan, demand_K, ranks_per_node)
    q_L, k_L, amt_L = _sparse_last(sup_HQ, da, plan)
    rank_K = np.arange(K, dtype=np.int64) // S
    overlap = False
    qs, ks, amts = [], [], []
    for t, (idx, amt) in enumerate(pieces):
        nz = np.flatnonzero(amt)
        q, k = idx[nz] // K, idx[nz] % K
        overlap |= t > 0 and bool((q == rank_K[k]).any())  # tier 0 is the local one
        qs.append(q)
        ks.append(k)
        amts.append(amt[nz])
    if ranks_per_node and 0 < ranks_per_node < N:  # the last tier leaves every node
        node_Q = np.arange(N, dtype=np.int64) // ranks_per_node
        overlap |= bool((node_Q[q_L] == (rank_K // ranks_per_node)[k_L]).any())
    else:
        overlap |= bool((q_L == rank_K[k_L]).any())
    q_F = np.concatenate(qs + [q_L])
    k_F = np.concatenate(ks + [k_L])
    amt_F = np.concatenate(amts + [amt_L])
    if overlap:
        uniq, inv = np.unique(q_F * K + k_F, return_inverse=True)
        if uniq.size != q_F.size:
            amt_F = np.bincount(inv.reshape(-1), amt_F, minlength=uniq.size).astype(np.int64)
            q_F, k_F = uniq // K, uniq % K
    return q_F, k_F, amt_F


def split_tokens(
    counts_QE,
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
    cost=None,
) -> torch.Tensor:
    """Split each expert's tokens over its slots so the most loaded rank is as light as possible.

    Args:
        counts_QE: int64 [Q=N, E], tokens source rank q routes to expert e this iteration.
        slots: the plan, slots_K (len N*S) of expert ids, list or integer tensor.
        slots_per_rank: S.
        ranks_per_node: ranks per node for the same-node preference; 0 turns it off.
        method: "exact" (binary search on the rank cap with a max-flow check), "fast" (proportional
            rank scaling, within 2% of exact), or "auto" (= "fast"; with ``cost``, stage 1
            chosen by the cost model, ``swiftmoe.engine.split.priced``).

    Returns:
        flow_QK: int64 [N, N*S], tokens source rank q sends to slot k. For every q and e the
        slots of e receive exactly counts_QE[q, e] of q's tokens and other slots none of them.
        Deterministic: the same inputs give the same flow on every rank.

    Raises:
        ValueError: a malformed count matrix or plan, an expert with tokens but no slot, or an
        unknown method; the message names the field and the fix.
    """
    return _route(*min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost))


def split_tokens_sparse(
    counts_QE,
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """split_tokens' flow as its nonzero entries, without the dense [N, N*S] matrix.

    Same arguments, checks and stages (amounts and routing) as split_tokens, so for every input
    flow_QK[q_F, k_F] == amount_F and every other entry of flow_QK is 0.

    Returns:
        (q_F, k_F, amount_F): int64 arrays of equal length F, source rank, slot and tokens (> 0)
        of every nonzero entry, each (q, k) once; the order is fixed (local pieces, same-node
        pieces, then the rest) but not sorted.
    """
    return _route_sparse(*min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method))


def even_split_tokens(
    counts_QE, slots: Sequence[int] | torch.Tensor, slots_per_rank: int
) -> torch.Tensor:
    """The paper's split: each expert's total tokens divided evenly over its slots.

    counts_QE int64 [N, E], slots_K (len N*S) -> flow_QK int64 [N, N*S]. An expert's remainder
    tokens go one each to its first slots in slot order; sources are matched to slots local first,
    then in a fixed order.
    """
    c_QE, plan, L_E = prepare(counts_QE, slots, slots_per_rank)
    return _route(c_QE, plan, even_demand(plan, L_E), 0)


def rank_load_from_flow(flow_QK: torch.Tensor, slots_per_rank: int) -> torch.Tensor:
    """Tokens each rank processes: flow_QK int64 [Q, N*S] -> load_R int64 [N]."""
    if not isinstance(flow_QK, torch.Tensor) or flow_QK.dim() != 2:
        raise ValueError("flow_QK must be a 2-D tensor [source ranks, slots]")
    if not is_int(slots_per_rank, 1):
        raise ValueError(f"slots_per_rank must be an integer >= 1, got {slots_per_rank!r}")
    K = flow_QK.shape[1]
    if K % slots_per_rank:
        raise ValueError(
            f"flow_QK has {K} slots, not a multiple of slots_per_rank={slots_per_rank}"
        )
    return flow_QK.sum(dim=0).reshape(K // slots_per_rank, slots_per_rank).sum(dim=1)
