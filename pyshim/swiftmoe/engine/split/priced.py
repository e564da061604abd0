"""Stage 1 chosen by the step-time cost model: the min-max amounts, or the node-balanced ones.

The min-max amounts (``amounts.py``, ``exact.py``) even out the ranks' compute. On several nodes
with slow links between them that can cost more in all-to-all than it saves: to even the
compute, the split moves an expert's tokens to its replicas in other nodes. The node-local
amounts (:func:`amounts_node_local`) keep every token in its node where the node holds the
expert, and do no compute balancing at all. The node-balanced amounts
(:func:`amounts_node_balanced`) give each node as many tokens of each expert as the node-local
ones, so as many cross nodes, and even out the compute inside each node with the min-max
amounts over the node's own replicas. Neither they nor the min-max amounts are better
everywhere: in ``swiftmoe sim`` keeping tokens in their node took moving-hot E=64 on 32 H200s
at 12.5 GB/s from 1.02 to 0.94 of the bound, and the min-max amounts win on E=32 at 50 GB/s,
where compute is most of the step.

:func:`cheaper_demand` makes both and prices each with ``swiftmoe.engine.costmodel``: compute
(the busiest rank) plus the all-to-all of the split's tiers (``tiers.tier_sums``). The cheaper
wins; ties keep the min-max amounts. Only integers and order-fixed float sums go in, so every
rank makes the same choice from the same counts, and so do the burst decision and the
simulator, which call the same function. (The node-local amounts were the other candidate
before; evened inside the nodes they are never dearer in compute, and a third candidate,
priced beside them, cost the burst decision more host time than it saved.)

Shape legend (see ``swiftmoe.engine.split``): Q source ranks, E experts, N ranks, R = N,
S slots per rank, K = N*S slots, P (expert, rank) pairs, M nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine.split.amounts import FAST_TOL, amounts_fast, lower_bound, round_amounts
from swiftmoe.engine.split.plan_index import PlanIndex, local_tokens, node_plans
from swiftmoe.engine.split.tiers import Tiers, tier_amounts, tier_sums

__all__ = [
    "Priced",
    "amounts_node_balanced",
    "amounts_node_local",
    "cheaper_demand",
    "price",
    "prices_split",
]


class Priced(NamedTuple):
    """A split as the cost model priced it: ms (compute_ms + a2a_ms), its tier sums (si, ri,
    se, re), whether its stage 1 keeps tokens in their node (the node-balanced amounts), and
    its tier amounts (what routing it reuses, ``tiers.route_tiers``)."""

    ms: float
    sums: tuple
    node_local: bool
    tiers: Tiers


def prices_split(cost: cm.CostParams | None, plan: PlanIndex, ranks_per_node: int) -> bool:
    """Is stage 1 chosen by the cost model? With cost parameters that price compute and the
    links between nodes, on more than one node of ``ranks_per_node`` (equal to the cost
    model's), and a plan that holds some expert more than once."""
    if cost is None:
        return False
    if cost.ranks != plan.N or _grouping(cost.ranks_per_node, plan.N) != _grouping(
        ranks_per_node, plan.N
    ):
        raise ValueError(
            f"cost has ranks={cost.ranks}, ranks_per_node={cost.ranks_per_node} but the split "
            f"has {plan.N} ranks and ranks_per_node={ranks_per_node}: pass the cost parameters "
            "of this job, with the split's node grouping"
        )
    return (
        cost.nodes > 1
        and cost.prices_compute
        and cost.inter_bw > 0
        and cost.token_bytes > 0
        and plan.deg_E.size > 0
        and int(plan.deg_E.max()) > 1
    )


def _grouping(G: int, N: int) -> int:
    """ranks_per_node as the split uses it: 0 when every rank is on one node."""
    return G if 0 < G < N else 0


def amounts_node_local(
    c_QE: np.ndarray, plan: PlanIndex, L_E: np.ndarray, ranks_per_node: int
) -> np.ndarray:
    """Stage 1 that keeps tokens in their node: x_P, the tokens each (expert, rank) pair takes.

    Pair (e, r) takes its own rank's tokens of e, plus an equal share (over node m's replicas
    of e) of what node m's other ranks send e, plus an equal share (over all e's replicas) of
    what nodes without a replica of e send it. No compute balancing: the busiest rank can be
    far above the mean. Integer amounts with the expert totals L_E (largest remainders).
    ``ranks_per_node`` must split the ranks into two nodes or more.
    """
    e_P, r_P, E, N = plan.e_P, plan.r_P, plan.E, plan.N
    G = ranks_per_node
    if not 0 < G < N:
        raise ValueError(
            f"ranks_per_node is {G!r} for {N} ranks: node-local amounts need two nodes or "
            f"more, 0 < ranks_per_node < {N}"
        )
    if e_P.size == 0:
        return np.zeros(0, dtype=np.int64)
    M = -(-N // G)
    local_P = local_tokens(c_QE, plan).astype(np.float64)
    L_f = L_E.astype(np.float64)
    deg_f = np.maximum(plan.deg_E, 1).astype(np.float64)
    d_GE = np.add.reduceat(c_QE, np.arange(0, N, G), axis=0)  # [M, E]: node m's tokens of e
    d_G = d_GE.T.reshape(-1).astype(np.float64)  # group g = e*M + m
    g_P = e_P * M + r_P // G
    cnt_G = np.bincount(g_P, minlength=E * M).astype(np.float64)
    loc_G = np.bincount(g_P, local_P, minlength=E * M)
    node_rest_P = (d_G - loc_G)[g_P] / cnt_G[g_P]
    held_d_E = np.bincount(np.arange(E * M) // M, np.where(cnt_G > 0, d_G, 0.0), minlength=E)
    x_P = local_P + node_rest_P + ((L_f - held_d_E) / deg_f)[e_P]
    return round_amounts(plan, L_E, np.maximum(x_P, 0.0))


def amounts_node_balanced(
    c_QE: np.ndarray, plan: PlanIndex, L_E: np.ndarray, ranks_per_node: int
) -> np.ndarray:
    """Stage 1 that keeps tokens in their node and evens out each node's ranks: x_P.

    Node m takes the tokens of each expert the node-local amounts give it
    (:func:`amounts_node_local`), T[e, m], so as many of each expert's tokens cross nodes (the
    node's own tokens of e stay in it, since T[e, m] holds them); inside the node they go to
    its replicas of e by the min-max amounts (``amounts.amounts_fast`` on node m's ranks and
    the experts it holds, with T[., m] as the experts' totals and node m's sources' own tokens
    kept on their ranks first). A node whose busiest rank is already within the min-max
    amounts' tolerance of their lower bound keeps the node-local amounts (the min-max amounts
    would stop about there too), which spares the split most of its work where the nodes are
    even. The busiest rank is then at most the node-local amounts' (up to that tolerance), and
    the ranks of a node whose replicas can share its load are about even: the node-local
    amounts leave the ranks of a hot expert's replicas above the rest of the node whenever its
    load differs from the plan's prediction. The nodes are :func:`plan_index.node_plans`,
    indexed once per plan. Integer amounts with the expert totals L_E."""
    x_P = amounts_node_local(c_QE, plan, L_E, ranks_per_node)
    G = ranks_per_node
    for m, (pairs, experts, sub) in enumerate(node_plans(plan, G)):
        # The node's experts alone (renamed 0..): the split's work follows its pairs, not E.
        T_E = np.bincount(sub.e_P, x_P[pairs], minlength=sub.E).astype(np.int64)
        y_max = int(np.bincount(sub.r_P, x_P[pairs], minlength=sub.N).max(initial=0))
        if y_max <= lower_bound(sub, T_E) * (1.0 + FAST_TOL) + 0.5:
            continue
        c_sub = np.ascontiguousarray(c_QE[m * G : m * G + sub.N, experts])
        x_P[pairs] = amounts_fast(c_sub, sub, T_E)
    return x_P


def price(
    cost: cm.CostParams,
    c_QE: np.ndarray,
    plan: PlanIndex,
    demand_K: np.ndarray,
    rpn: int,
    node_local: bool = False,
) -> Priced:
    """compute_ms + a2a_ms of a split's demand, with its tier sums and amounts."""
    load_R = demand_K.reshape(plan.N, plan.S).sum(axis=1)
    t = tier_amounts(c_QE, plan, demand_K, rpn)
    sums = tier_sums(c_QE, plan, demand_K, rpn, t)
    return Priced(cm.compute_ms(cost, load_R) + cm.a2a_ms(cost, *sums), sums, node_local, t)


def cheaper_demand(
    c_QE: np.ndarray,
    plan: PlanIndex,
    L_E: np.ndarray,
    ranks_per_node: int,
    cost: cm.CostParams,
    demand_K: np.ndarray,
    to_demand: Callable[[PlanIndex, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, Priced]:
    """The cheaper split by the cost model: ``demand_K`` (the min-max amounts' demand) or the
    node-balanced amounts' (:func:`amounts_node_balanced`), with its :func:`price`.
    ``to_demand(plan, x_P)`` spreads amounts over the slots as the split does, so each is priced
    as it would route. Ties, and identical demands, keep ``demand_K``."""
    bal_K = to_demand(plan, amounts_node_balanced(c_QE, plan, L_E, ranks_per_node))
    mm = price(cost, c_QE, plan, demand_K, ranks_per_node)
    if np.array_equal(bal_K, demand_K):
        return demand_K, mm
    # The node-balanced split's compute alone bounds its price from below: where it is no
    # cheaper than the min-max split's whole price, its all-to-all need not be summed.
    if cm.compute_ms(cost, bal_K.reshape(plan.N, plan.S).sum(axis=1)) >= mm.ms:
        return demand_K, mm
    bal = price(cost, c_QE, plan, bal_K, ranks_per_node, node_local=True)
    if bal.ms < mm.ms:
        return bal_K, bal
    return demand_K, mm
