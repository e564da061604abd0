"""Stage 2 of the split, routing: which source sends how many of an expert's tokens to each slot.

Each rank's amount of an expert is spread evenly over its slots of it (``demand.py``), then
sources are matched to slots local first, same node second, then the rest, in a fixed order
(one vectorised merge of cumulative sums per tier; no loop over experts or ranks). The node
tier takes from a node's ranks and gives its slots in proportion to what the local tier left
them (:func:`proportional`), so what a node takes in from other nodes lands on all its replicas
of the expert by their room, and what it lacks leaves from all its ranks by what they have left,
rather than on and from its last ones. (In ``swiftmoe sim``, E=64 top-8 on 32 GPUs in 4 nodes,
an iteration after the hot set moved: the busiest rank's cross-node sends 19,606 -> 12,599
tokens against a mean of 11,637, its intake 20,911 -> 18,084.) :func:`route_tiers` gives the
local and node tiers' pieces and what is left for the last tier; each form of the split routes
that last tier its own way.

Shape legend (see ``swiftmoe.engine.split``): Q source ranks, E experts, N ranks, S slots per
rank, K = N*S slots, P (expert, rank) pairs, H experts holding a slot, M = H*N supplies,
D demands (slots in (expert, slot) order), G (expert, node) groups, T ranks of a node,
C (source, expert) supplies the local and node tiers take tokens from.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from swiftmoe.engine.split.plan_index import PlanIndex, local_tokens

__all__ = [
    "NodeGroups",
    "Tiers",
    "check_routed",
    "merge",
    "node_groups",
    "node_pieces",
    "route_tiers",
    "supply_left",
    "tier_amounts",
    "tier_sums",
    "transposed",
    "within",
]


def merge(sa_M: np.ndarray, da_D: np.ndarray, last_M: np.ndarray):
    """North-west-corner pieces between supplies and demands laid end to end.

    sa_M and da_D (int64, zeros allowed) have equal totals group by group; last_M is the last
    demand of supply i's group. Returns (i, j, amt): supply i gives amt to demand j, for every
    pair whose intervals overlap plus zero-amount pairs inside a group; no pair appears twice,
    so (source, slot) targets are distinct and a plain scatter is safe. Linear in M + D: supply i
    starts in demand j0[i] (the demands that end at or before its start, counted from D cut
    points), and each demand boundary strictly inside a supply adds one piece.
    """
    M, D = sa_M.size, da_D.size
    if M == 0 or D == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    s_end = np.cumsum(sa_M)
    s_start = s_end - sa_M
    d_end = np.cumsum(da_D)
    cut_D = np.searchsorted(s_start, d_end, side="left")
    j0_M = np.bincount(cut_D, minlength=M + 1)[:M].cumsum()
    np.minimum(j0_M, last_M, out=j0_M)  # an empty supply at a group's end stays in it
    amt_M = np.minimum(s_end, d_end[j0_M])
    amt_M -= s_start
    # Boundary b = d_end[j] strictly inside supply i: piece (i, j + 1).
    b = d_end[:-1]
    i_B = np.searchsorted(s_end, b, side="right")
    inside = np.nonzero(i_B < M)[0]
    inside = inside[s_start[i_B[inside]] < b[inside]]
    if inside.size == 0:
        return np.arange(M), j0_M, amt_M
    i_X = i_B[inside]
    j_X = inside + 1
    amt_X = np.minimum(s_end[i_X], d_end[j_X]) - b[inside]
    return (
        np.concatenate((np.arange(M), i_X)),
        np.concatenate((j0_M, j_X)),
        np.concatenate((amt_M, amt_X)),
    )


def within(groups: np.ndarray, a: np.ndarray, first_G: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum of a inside each run of equal (sorted) group ids."""
    cs = np.cumsum(a)
    cs -= a
    return cs - cs[first_G][groups]


def proportional(a, tot_G, m_G, groups, first_G):
    """m_G[g] of each group's amounts a, taken in proportion: floors of a * m / tot, then one
    more to the first members (in order) whose share had a fraction, until the group's sum is
    m_G[g]. Never above a (m <= tot); exact integers, the same on every rank."""
    m = m_G[groups]
    t = np.maximum(tot_G[groups], 1)
    num = a * m
    out = num // t
    frac = (num % t) > 0
    short_G = m_G - np.add.reduceat(out, first_G) if out.size else m_G
    nth = within(groups, frac.astype(np.int64), first_G)
    out += frac & (nth < short_G[groups])
    return out


def transposed(a_M: np.ndarray, H: int, N: int) -> np.ndarray:
    """a_M viewed [H, N], transposed to a C-ordered [N, H] and flattened (exact, a copy)."""
    out = torch.empty((N, H), dtype=torch.int64)
    out.copy_(torch.from_numpy(a_M.reshape(H, N)).t())
    return out.numpy().reshape(-1)


class NodeGroups(NamedTuple):
    """The node tier's groups under a plan: (expert, node) pairs holding a slot, in demand order.

    first_G / last_G: each group's first and last demand; gid_D: each demand's group; q0_G: each
    group's node's first rank. Supplies are the node's ranks, flattened group by group: q_GT their
    rank, g_GT their group, sfirst_G the first of each group; qe_GT and hq_GT their flat index in
    the counts [N, E] and in the expert-major layout [H, N]; pair_GT the plan pair (expert, rank)
    of each, or P when the rank holds no slot of the expert.
    """

    first_G: np.ndarray
    gid_D: np.ndarray
    q0_G: np.ndarray
    q_GT: np.ndarray
    g_GT: np.ndarray
    sfirst_G: np.ndarray
    last_G: np.ndarray
    qe_GT: np.ndarray
    hq_GT: np.ndarray
    pair_GT: np.ndarray


def node_groups(plan: PlanIndex, rpn: int) -> NodeGroups:
    """The node tier's groups under a plan, cached on it: they depend on the plan alone."""
    cache = plan.__dict__.setdefault("node_groups", {})
    hit = cache.get(rpn)
    if hit is not None:
        return hit
    N, E = plan.N, plan.E
    g_D = plan.d_e * N + (plan.d_r // rpn) * rpn  # expert and the node's first rank, sorted
    new_D = np.concatenate(([True], g_D[1:] != g_D[:-1]))
    first_G = np.flatnonzero(new_D)
    gid_D = np.cumsum(new_D) - 1
    e_G, q0_G = g_D[first_G] // N, g_D[first_G] % N
    q_GT = q0_G[:, None] + np.arange(rpn)
    e_GT = np.broadcast_to(e_G[:, None], q_GT.shape)
    if q0_G.size and int(q_GT[:, -1].max()) >= N:  # a short last node
        ok_GT = q_GT < N
        e_GT, q_GT = e_GT[ok_GT], q_GT[ok_GT]
        g_GT = np.broadcast_to(np.arange(q0_G.size)[:, None], ok_GT.shape)[ok_GT]
    else:
        e_GT, q_GT = e_GT.reshape(-1), q_GT.reshape(-1)
        g_GT = np.repeat(np.arange(q0_G.size), rpn)
    sfirst_G = np.searchsorted(g_GT, np.arange(first_G.size))
    last_G = np.concatenate((first_G[1:], [plan.d_k.size])) - 1
    key_P = plan.e_P * N + plan.r_P  # increasing: pairs run by expert, then rank
    key_GT = e_GT * N + q_GT
    pos_GT = np.minimum(np.searchsorted(key_P, key_GT), key_P.size - 1)
    pair_GT = np.where(key_P[pos_GT] == key_GT, pos_GT, key_P.size)
    out = NodeGroups(
        *(
            np.ascontiguousarray(a)
            for a in (
                first_G,
                gid_D,
                q0_G,
                q_GT,
                g_GT,
                sfirst_G,
                last_G,
                q_GT * E + e_GT,
                plan.h_E[e_GT] * N + q_GT,
                pair_GT,
            )
        )
    )
    for a in out:
        a.setflags(write=False)
    cache[rpn] = out
    return out


class Tiers(NamedTuple):
    """The amounts of the local and node tiers (see tier_amounts); pieces come from them.

    take_D: tokens the local tier gives each demand (from its own rank); node: (use_GT, use_D),
    tokens the node tier takes from each of its supplies (NodeGroups order) and gives each
    demand, None without a node tier; cut_*: tokens both tiers took from each (source, expert)
    supply they touched, cut_C, at its source cut_q, at its flat index cut_qe in the counts
    [N, E] and cut_hq in the expert-major layout [H, N] (distinct positions); da_D: what is left
    of each demand for the last tier.
    """

    take_D: np.ndarray
    node: tuple[np.ndarray, np.ndarray] | None
    cut_q: np.ndarray
    cut_qe: np.ndarray
    cut_hq: np.ndarray
    cut_C: np.ndarray
    da_D: np.ndarray


def tier_amounts(
    c_QE: np.ndarray, plan: PlanIndex, demand_K: np.ndarray, ranks_per_node: int
) -> Tiers:
    """How many tokens the local tier and the node tier route, per supply and per demand.

    Demands are slots in (expert, slot) order and supplies (expert, source rank). Each tier
    matches within its groups: (expert, rank) pairs for the local tier, which fills a rank's
    slots of the expert in order, (expert, node) for the node tier, which takes min(supply,
    demand) of every group in proportion from each side (:func:`proportional`), experts for the
    last. The matched supplies and demands have equal totals group by group, so one end-to-end
    merge over the whole tier gives its pieces. Only the supplies the small tiers
    touch are read (a node's ranks of the experts it holds): no [N, E] array is made.
    """
    d_pair = plan.d_pair
    da = demand_K[plan.d_k].astype(np.int64)
    # Local: the pair (e, r)'s local tokens counts[r, e] fill r's own slots of e in slot order.
    take = np.clip(local_tokens(c_QE, plan)[d_pair] - within(d_pair, da, plan.d_first_P), 0, da)
    da -= take
    took_P = np.add.reduceat(take, plan.d_first_P)
    rpn = ranks_per_node
    if not (rpn and 0 < rpn < plan.N):
        return Tiers(take, None, plan.r_P, plan.qe_P, plan.hq_P, took_P, da)
    # Same node: groups (expert, node) that hold a slot; supplies are the node's ranks, less what
    # the local tier took from them.
    g = node_groups(plan, rpn)
    cut = np.append(took_P, 0)[g.pair_GT]
    sa_GT = c_QE.reshape(-1)[g.qe_GT] - cut
    dtot_G = np.add.reduceat(da, g.first_G)
    stot_G = np.add.reduceat(sa_GT, g.sfirst_G)
    m_G = np.minimum(stot_G, dtot_G)
    use_GT = proportional(sa_GT, stot_G, m_G, g.g_GT, g.sfirst_G)
    use_D = proportional(da, dtot_G, m_G, g.gid_D, g.first_G)
    da -= use_D
    cut += use_GT
    return Tiers(take, (use_GT, use_D), g.q_GT, g.qe_GT, g.hq_GT, cut, da)


def node_pieces(plan: PlanIndex, rpn: int, node: tuple[np.ndarray, np.ndarray], rank=None):
    """The node tier's pieces (q, j, amount): source rank q gives demand j that many tokens.

    With rank, only the groups holding that rank's tokens or slots (every piece from or to the
    rank): whole groups, whose totals agree.
    """
    g = node_groups(plan, rpn)
    use_GT, use_D = node
    if rank is None:
        i, j, amt = merge(use_GT, use_D, g.last_G[g.g_GT])
        return g.q_GT[i], j, amt
    sel_G = g.q0_G == (rank // rpn) * rpn
    sel_G[g.gid_D[plan.dpos_K[rank * plan.S : (rank + 1) * plan.S]]] = True
    iS, jD = np.flatnonzero(sel_G[g.g_GT]), np.flatnonzero(sel_G[g.gid_D])
    last_sel_G = np.zeros(g.first_G.size, dtype=np.int64)
    last_sel_G[sel_G] = np.cumsum((g.last_G - g.first_G + 1)[sel_G]) - 1
    i, j, amt = merge(use_GT[iS], use_D[jD], last_sel_G[g.g_GT[iS]])
    return g.q_GT[iS[i]], jD[j], amt


def supply_left(c_QE: np.ndarray, plan: PlanIndex, t: Tiers, source_major: bool) -> np.ndarray:
    """What the small tiers left of every supply, a fresh array: the counts' layout sup_QE
    [N, E] (source_major), else expert-major over the held experts, sup_HQ [H, N]."""
    if source_major:
        sup = c_QE.copy()
        sup.reshape(-1)[t.cut_qe] -= t.cut_C
        return sup
    N, E = plan.N, plan.E
    if plan.held_H is None:
        sup = transposed(c_QE.reshape(-1), N, E).reshape(E, N)
    else:
        sup = np.ascontiguousarray(c_QE.T[plan.held_H])
    sup.reshape(-1)[t.cut_hq] -= t.cut_C
    return sup


def check_routed(supply_left: int, da_D: np.ndarray) -> None:
    """The last tier's supplies and demands must have the same total."""
    if supply_left != int(da_D.sum()):
        raise RuntimeError(
            "token split left tokens unrouted; this is a bug in swiftmoe.engine.split"
        )


def tier_sums(
    c_QE: np.ndarray,
    plan: PlanIndex,
    demand_K: np.ndarray,
    ranks_per_node: int,
    t: Tiers | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(si_Q, ri_R, se_Q, re_R), int64 [N] each: the tokens each rank sends to / receives from
    other ranks of its node, and sends to / receives from other nodes, under the split.

    Sums, not pieces: the local tier keeps its tokens on their rank; after it, a (expert, rank)
    pair has either no tokens or no slot demand left, so the node tier sends none of a source's
    tokens to its own rank and its traffic is the totals of its supplies and demands; after the
    node tier the same holds per (expert, node), so every token of the last tier leaves its
    source's node (on one node, its rank). Ranks share a node as in :func:`tier_amounts`;
    ``t``: its result for these inputs, when the caller has it.
    """
    N = plan.N
    if t is None:
        t = tier_amounts(c_QE, plan, demand_K, ranks_per_node)
    if t.node is None:
        si_Q = np.zeros(N, dtype=np.int64)
        ri_R = np.zeros(N, dtype=np.int64)
    else:
        use_GT, use_D = t.node
        si_Q = _sum_by(node_groups(plan, ranks_per_node).q_GT, use_GT, N)
        ri_R = _sum_by(plan.d_r, use_D, N)
    left_Q = c_QE.sum(axis=1) - _sum_by(t.cut_q, t.cut_C, N)
    left_R = _sum_by(plan.d_r, t.da_D, N)
    check_routed(int(left_Q.sum()), t.da_D)
    if t.node is not None:
        return si_Q, ri_R, left_Q, left_R
    zero = np.zeros(N, dtype=np.int64)
    return si_Q + left_Q, ri_R + left_R, zero, zero


def _sum_by(idx: np.ndarray, amount: np.ndarray, n: int) -> np.ndarray:
    """int64 [n]: integer amounts summed by index."""
    return np.bincount(idx, amount, minlength=n).astype(np.int64)


def route_tiers(
    c_QE: np.ndarray,
    plan: PlanIndex,
    demand_K: np.ndarray,
    ranks_per_node: int,
    source_major: bool = False,
    rank: int | None = None,
    t: Tiers | None = None,
):
    """Routing from per-slot demands: local slots first, then same node, then any, in order.

    The small tiers' amounts are tier_amounts'; the last tier matches what is left expert by
    expert in fixed order (per-expert totals agree, so one merge over it).

    Returns (pieces, sup, da): the small tiers' (flat index q*K + k, amount) pieces, what is left
    of each supply, and of each demand (in (expert, slot) order) for the last tier. sup is
    expert-major over the held experts, sup_HQ [H, N], or with source_major the counts' own
    layout sup_QE [N, E] (no transposed copy). With rank, the node tier's pieces are only those
    of the groups holding that rank's tokens or slots (every piece from or to the rank). ``t``:
    tier_amounts of these inputs, when the caller has it (the priced split, which summed them).
    """
    if t is None:
        t = tier_amounts(c_QE, plan, demand_K, ranks_per_node)
    K = plan.K
    pieces = [(plan.d_r * K + plan.d_k, t.take_D)]
    if t.node is not None:
        q, j, amt = node_pieces(plan, ranks_per_node, t.node, rank)
        pieces.append((q * K + plan.d_k[j], amt))
    sup = supply_left(c_QE, plan, t, source_major)
    check_routed(int(sup.sum()), t.da_D)
    return pieces, sup, t.da_D
