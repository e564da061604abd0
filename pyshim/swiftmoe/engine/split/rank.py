"""What one rank needs of a split, without the dense [N, N*S] flow: its row and slot columns.

This is what the engine runs on every rank, every layer, every step.

Shape legend (see ``swiftmoe.engine.split``): Q source ranks, E experts, N ranks, R = N, S
slots per rank, K = N*S slots, H experts holding a slot, D demands, G groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from swiftmoe._checks import is_int
from swiftmoe.engine import native as _native
from swiftmoe.engine.split import tiers
from swiftmoe.engine.split.demand import demand, load_R
from swiftmoe.engine.split.plan_index import PlanIndex, prepare
from swiftmoe.engine.split.priced import prices_split

__all__ = ["Planned", "RankSplit", "route_rank", "split_rank_loads", "split_tokens_for_rank"]


class Planned(NamedTuple):
    """The whole split's stage 1 on a placement, as a rank's split made it: what the burst
    decision on that placement starts from (``burst.plan_bursts(planned=...)``), so that it is
    not made twice. demand_K [N*S]: what every slot receives (int64); ms and sums: where stage 1
    was priced (``split.priced``), its price and tier sums (si, ri, se, re, int64 [N] each), else
    None."""

    demand_K: np.ndarray
    ms: float | None = None
    sums: tuple | None = None


def planned_of(demand_K: np.ndarray, priced) -> Planned:
    """The Planned of a split's stage 1: its demand, and its price and tier sums where
    ``priced`` (``split.priced.Priced``, or None) priced it."""
    if priced is None:
        return Planned(demand_K, None, None)
    return Planned(demand_K, priced.ms, tuple(priced.sums))


class RankSplit(NamedTuple):
    """One rank's part of a split (int64 CPU tensors, and a flag).

    send_K [N*S]: tokens this rank sends to each slot (flow_QK[rank]); recv_QS [N, S]: tokens each
    source rank sends to this rank's slots (flow_QK[:, rank*S:(rank+1)*S]); load_R [N]: tokens
    every rank's slots receive (flow_QK's column sums, summed per rank); node_local: stage 1
    kept tokens in their node (the node-balanced amounts, ``split.priced``; the same on every
    rank); planned: the whole split's stage 1 (:class:`Planned`), or None.
    """

    send_K: torch.Tensor
    recv_QS: torch.Tensor
    load_R: torch.Tensor
    node_local: bool = False
    planned: Planned | None = None


def _ranges(lo_G: np.ndarray, hi_G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, i) for every i in range(lo_G[g], hi_G[g]), segment by segment (empty ones skipped)."""
    n_G = np.maximum(hi_G - lo_G, 0)
    total = int(n_G.sum())
    g = np.repeat(np.arange(n_G.size), n_G)
    return g, np.arange(total) - (np.cumsum(n_G) - n_G - lo_G)[g]


def route_rank(
    c_QE: np.ndarray,
    plan: PlanIndex,
    demand_K: np.ndarray,
    ranks_per_node: int,
    r: int,
    t: tiers.Tiers | None = None,
):
    """Rank r's row and slot columns of _route's flow, without the dense [N, K] matrix.

    Returns (send_K, recv_QS): flow_QK[r] and flow_QK[:, r*S:(r+1)*S]. The small tiers' pieces
    are filtered. The last tier's pieces are the overlaps of intervals laid end to end (supplies
    (held expert, source) in expert-major order, demands in (expert, slot) order), which is
    what the north-west corner merge of _route computes: supply i gives demand j the length of
    their overlap. Only r's supplies and the supplies of r's slots' experts are placed on that
    line, from per-expert offsets and prefix sums over sources, never the whole [H, N] layout.
    """
    N, K, S = plan.N, plan.K, plan.S
    pieces, sup_QE, da = tiers.route_tiers(c_QE, plan, demand_K, ranks_per_node, True, r, t)
    send_K = np.zeros(K, dtype=np.int64)
    recv_QS = np.zeros(N * S, dtype=np.int64)
    lo_k, hi_k = r * S, (r + 1) * S
    for idx, amt in pieces:  # (source, slot) targets are distinct within a tier
        row = (idx >= r * K) & (idx < (r + 1) * K)
        send_K[idx[row] - r * K] += amt[row]
        k = idx % K
        col = (k >= lo_k) & (k < hi_k)
        recv_QS[(idx[col] // K) * S + (k[col] - lo_k)] += amt[col]
    if da.size == 0:
        return send_K, recv_QS.reshape(N, S)
    d_end = np.cumsum(da)
    d_start = d_end - da
    # Expert e's supplies start where its demands do: per-expert totals agree.
    e_H = np.arange(plan.E) if plan.held_H is None else plan.held_H
    off_H = d_start[np.concatenate(([0], plan.last_H[:-1] + 1))]
    off_E = np.zeros(plan.E, dtype=np.int64)
    off_E[e_H] = off_H
    # Row: supply (e, r) spans off_e + sum_{q<r} sup[q, e] onward.
    if 2 * r <= N:
        ss = off_H + sup_QE[:r].sum(axis=0)[e_H]
    else:  # the shorter way round: the expert's end less the sources from r on
        end_H = np.append(off_H[1:], d_end[-1])
        ss = end_H - sup_QE[r:].sum(axis=0)[e_H]
    se = ss + sup_QE[r][e_H]
    g, j = _ranges(np.searchsorted(d_end, ss, side="right"), np.searchsorted(d_start, se))
    amt = np.minimum(se[g], d_end[j]) - np.maximum(ss[g], d_start[j])
    pos = amt > 0
    send_K[plan.d_k[j[pos]]] += amt[pos]  # one piece per demand: distinct slots
    # Columns: each of r's slots is a demand; the supplies of its expert it overlaps.
    for s_, k in enumerate(range(lo_k, hi_k)):
        jd = int(plan.dpos_K[k])
        ds, de = int(d_start[jd]), int(d_end[jd])
        if de == ds:
            continue
        e = int(plan.slots_K[k])
        col_end = off_E[e] + np.cumsum(sup_QE[:, e])
        q0 = int(np.searchsorted(col_end, ds, side="right"))
        q1 = int(np.searchsorted(col_end - sup_QE[:, e], de))
        q = np.arange(q0, q1)
        amt = np.minimum(de, col_end[q0:q1]) - np.maximum(ds, col_end[q0:q1] - sup_QE[q0:q1, e])
        pos = amt > 0
        recv_QS[q[pos] * S + s_] += amt[pos]  # one piece per supply: distinct sources
    return send_K, recv_QS.reshape(N, S)


def split_tokens_for_rank(
    counts_QE,
    slots: Sequence[int] | torch.Tensor | PlanIndex,
    slots_per_rank: int,
    rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
    cost=None,
    native: bool | None = None,
) -> RankSplit:
    """What one rank needs of the split, without the dense [N, N*S] flow: its row and columns.

    Args:
        counts_QE: int64 [Q=N, E], tokens source rank q routes to expert e this iteration.
        slots: the plan, slots_K (len N*S) of expert ids (list or integer tensor), or its
            :class:`PlanIndex` (``index_plan``), for a plan in force over many calls.
        slots_per_rank: S.
        rank: the rank, 0..N-1.
        ranks_per_node: ranks per node for the same-node preference; 0 turns it off.
        method: "exact" (binary search on the rank cap with a max-flow check), "fast"
            (proportional rank scaling, within 2% of exact), "auto" (= "fast"), or "even" (the
            paper's split: each expert's tokens evenly over its slots, no node preference).
        cost: None, or the job's ``swiftmoe.engine.costmodel.CostParams`` (its nodes those of
            ``ranks_per_node``): with "auto" on several nodes, stage 1 is then the cheaper by
            the cost model of "fast" and the node-local amounts (``split.priced``).
        native: None (default) runs the C port (``swiftmoe.engine.native``, the same split to
            the token) when its library is loaded and the method is "fast" or "auto", else
            the NumPy code below; False always runs the NumPy code; True requires the C port
            (a RuntimeError names why it cannot run).

    Returns:
        The rank's row and slot columns of the flow flow_QK [N, N*S] (tokens source rank q sends
        to slot k): for every q and e the slots of e receive exactly counts_QE[q, e] of q's
        tokens and other slots none of them. Deterministic: the same inputs give the same flow on
        every rank, so ranks agree without talking. It costs a fraction of the whole flow at
        scale: the routing touches the rank's supplies and demands only, after the same
        per-expert prefix sums.

    Raises:
        ValueError: a malformed count matrix or plan, an expert with tokens but no slot, an
        unknown method or a bad rank; the message names the field and the fix.
    """
    if _native.use(native, method, "split"):
        return _native_split(counts_QE, slots, slots_per_rank, rank, ranks_per_node, method, cost)
    c_QE, plan, demand_K, rpn, priced = demand(
        counts_QE, slots, slots_per_rank, ranks_per_node, method, cost
    )
    if not is_int(rank, 0, plan.N - 1):
        raise ValueError(f"rank must be an integer in 0..{plan.N - 1}, got {rank!r}")
    t = None if priced is None else priced.tiers  # the priced split summed them already
    send_K, recv_QS = route_rank(c_QE, plan, demand_K, rpn, rank, t)
    local = priced is not None and priced.node_local
    planned = planned_of(demand_K, priced)
    return RankSplit(
        torch.from_numpy(send_K), torch.from_numpy(recv_QS), load_R(plan, demand_K), local, planned
    )


def _native_split(counts_QE, slots, S, rank, rpn, method, cost) -> RankSplit:
    """split_tokens_for_rank in C, after the checks the NumPy path makes (the same errors)."""
    if not is_int(rpn, 0):
        raise ValueError(f"ranks_per_node must be an integer >= 0 (0: no nodes), got {rpn!r}")
    c_QE, plan, _ = prepare(counts_QE, slots, S, totals=False, light=True)  # the C sums them
    if method == "auto":
        prices_split(cost, plan, rpn)  # a cost of another job or grouping: ValueError
    if not is_int(rank, 0, plan.N - 1):
        raise ValueError(f"rank must be an integer in 0..{plan.N - 1}, got {rank!r}")
    return from_native(
        _native.split_for_rank(c_QE, plan, S, rank, rpn, method, cost if method == "auto" else None)
    )


def from_native(got: tuple) -> RankSplit:
    """The RankSplit of a native split's tuple (``native.split_for_rank``'s: send_K, recv_QS,
    load_R, node_local, (demand_K, ms, sums)), its arrays shared with the tensors."""
    send_K, recv_QS, load, local, planned = got
    return RankSplit(
        torch.from_numpy(send_K),
        torch.from_numpy(recv_QS),
        torch.from_numpy(load),
        local,
        Planned(*planned),
    )


def split_rank_loads(
    counts_QE,
    slots: Sequence[int] | torch.Tensor | PlanIndex,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
    cost=None,
    native: bool | None = None,
) -> torch.Tensor:
    """Tokens each rank's slots receive under the split (int64 [N]); no routing in NumPy (the
    C port routes rank 0's part on the way, in less time than NumPy's stage 1 alone).

    The arguments of :func:`split_tokens_for_rank` without ``rank``; equals every rank's
    ``load_R`` of it, and is its C port's when that runs (``native`` as there).
    """
    if _native.use(native, method, "split"):
        return _native_split(counts_QE, slots, slots_per_rank, 0, ranks_per_node, method, cost)[2]
    plan, demand_K = demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost)[1:3]
    return load_R(plan, demand_K)
