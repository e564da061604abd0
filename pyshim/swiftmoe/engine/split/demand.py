"""What every slot receives, demand_K: stage 1 of the split (amounts per (expert, rank) pair,
"fast" or "exact"; "auto" with the job's cost parameters, the cheaper of "fast" and the
node-local amounts, ``priced.py``) spread over each rank's slots of the expert, or the paper's
even split.

``min_max_demand`` and ``demand`` are what every form of the split starts from: this rank's part
(``rank.py``), the simulator's traffic sums (``swiftmoe.sim.traffic``) and the whole flow the
tests check them against.

Shape legend (see ``swiftmoe.engine.split``): Q source ranks, E experts, N ranks, S slots per
rank, K = N*S slots, P (expert, rank) pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from swiftmoe._checks import is_int
from swiftmoe.engine.split.amounts import amounts_fast
from swiftmoe.engine.split.exact import amounts_exact
from swiftmoe.engine.split.plan_index import PlanIndex, prepare
from swiftmoe.engine.split.priced import cheaper_demand, prices_split

__all__ = [
    "METHODS",
    "RANK_METHODS",
    "demand",
    "even_demand",
    "load_R",
    "min_max_demand",
    "priced_demand",
    "slot_demand",
]

METHODS = ("auto", "fast", "exact")
RANK_METHODS = (*METHODS, "even")


def slot_demand(plan: PlanIndex, x_P: np.ndarray) -> np.ndarray:
    """A rank's amount of an expert spread evenly over its slots of it, earlier slots first."""
    x_K = x_P[plan.pair_K]
    m_K = plan.mult_K
    return x_K // m_K + (plan.idx_K < x_K % m_K)


def min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost=None):
    """Checked inputs and stage 1 of the split: (c_QE, plan, demand_K, ranks_per_node).

    "fast" and "exact" are the min-max amounts. "auto" is "fast", except with ``cost`` (the
    job's ``swiftmoe.engine.costmodel.CostParams``, with the split's nodes) on more than one
    node: then the cheaper by the cost model of "fast" and the node-local amounts
    (``priced.py``)."""
    return priced_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost)[:4]


def priced_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost=None):
    """:func:`min_max_demand` and, where stage 1 was priced, how: (c_QE, plan, demand_K,
    ranks_per_node, priced), priced a ``priced.Priced`` or None."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not is_int(ranks_per_node, 0):
        raise ValueError(
            f"ranks_per_node must be an integer >= 0 (0: no nodes), got {ranks_per_node!r}"
        )
    c_QE, plan, L_E = prepare(counts_QE, slots, slots_per_rank)
    if method == "exact":
        x_P = amounts_exact(c_QE, plan, L_E)
    else:
        x_P = amounts_fast(c_QE, plan, L_E)
    demand_K = slot_demand(plan, x_P)
    priced = None
    if method == "auto" and prices_split(cost, plan, ranks_per_node):
        demand_K, priced = cheaper_demand(
            c_QE, plan, L_E, ranks_per_node, cost, demand_K, slot_demand
        )
    return c_QE, plan, demand_K, ranks_per_node, priced


def even_demand(plan: PlanIndex, L_E: np.ndarray) -> np.ndarray:
    """demand_K of the even split: L_E[e] over e's slots, remainders to its first slots."""
    slots_K = plan.slots_K
    reps_E = np.bincount(slots_K, minlength=plan.E)
    first_E = np.concatenate(([0], np.cumsum(reps_E)[:-1]))
    idx_K = plan.dpos_K - first_E[slots_K]  # slot k is the idx_K-th of its expert's, in order
    r_K = np.maximum(reps_E[slots_K], 1)
    return L_E[slots_K] // r_K + (idx_K < L_E[slots_K] % r_K)


def demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost=None):
    """(c_QE, plan, demand_K, ranks_per_node, priced) of any method, "even" included (cost and
    priced: see :func:`priced_demand`)."""
    if method not in RANK_METHODS:
        raise ValueError(f"method must be one of {', '.join(RANK_METHODS)}, got {method!r}")
    if method != "even":
        return priced_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method, cost)
    c_QE, plan, L_E = prepare(counts_QE, slots, slots_per_rank)
    return c_QE, plan, even_demand(plan, L_E), 0, None  # the paper's split has no node preference


def load_R(plan: PlanIndex, demand_K: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(demand_K.reshape(plan.N, plan.S).sum(axis=1).astype(np.int64))
