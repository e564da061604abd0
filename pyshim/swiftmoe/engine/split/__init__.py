"""The token split: how many tokens each source rank sends to each slot this iteration.

Every rank routes its tokens with the model's router; the counts are all-reduced, so every rank
holds counts_QE (tokens source rank q routes to expert e). Under the current plan (slots_K, slot
k = r*S+s on rank r) each expert's tokens are divided among the slots holding it. The split
chooses the division that minimises the most loaded rank (a min-max transportation problem), and
among equally good divisions keeps tokens on their own rank, then on their own node. The result
is a pure function of its inputs: every rank computes the same flow without talking.

The engine calls :func:`split_tokens_for_rank` (its rank's row and slot columns of the flow) and
:func:`split_rank_loads` (every rank's load, without routing); it indexes a placement once
(:func:`index_plan`, :class:`PlanIndexCache`) for as long as it is in force. The modules, in the
order a split runs:

* ``plan_index``: the counts and the plan, checked, and the plan's index;
* ``amounts`` (fast) and ``exact`` (binary search with a max-flow check): stage 1, the tokens
  each (expert, rank) pair processes;
* ``priced``: on several nodes, given the job's cost parameters, stage 1 as the cheaper by the
  step-time cost model of the min-max amounts and amounts that keep tokens in their node;
* ``demand``: stage 1 spread over the slots (or the paper's even split), ``demand_K``;
* ``tiers``: stage 2, routing sources to slots local first, same node second, then the rest;
* ``rank``: one rank's part of the routing.

The simulator sums the same split per rank (``swiftmoe.sim.traffic``); the tests check every
form against the whole [N, N*S] flow (pyshim/tests/split_reference.py).

Shape legend:
    Q  source ranks (Q = N: every rank sends)
    E  experts of the layer
    N  ranks;  R = N for per-rank vectors
    S  slots per rank;  K = N*S slots, slot k on rank k // S
    P  distinct (expert, rank) pairs of the plan, sorted by expert then rank
    H  experts holding a slot (H = E unless an idle expert has none); M = H*N supplies
    D  demands: the K slots in (expert, slot) order;  G  (expert, node) groups;  T  ranks of a node
    C  (source, expert) supplies the local and node tiers take tokens from
"""

from __future__ import annotations

from swiftmoe.engine.split.demand import METHODS, RANK_METHODS
from swiftmoe.engine.split.plan_index import (
    PlanIndex,
    PlanIndexCache,
    SlotsIndex,
    index_plan,
    index_slots,
    negative_count,
    orphan_expert,
)
from swiftmoe.engine.split.priced import prices_split
from swiftmoe.engine.split.rank import Planned, RankSplit, split_rank_loads, split_tokens_for_rank

__all__ = [
    "METHODS",
    "RANK_METHODS",
    "PlanIndex",
    "PlanIndexCache",
    "SlotsIndex",
    "Planned",
    "RankSplit",
    "index_plan",
    "index_slots",
    "negative_count",
    "orphan_expert",
    "prices_split",
    "split_rank_loads",
    "split_tokens_for_rank",
]
