"""The simulator's view of the engine's split: per-rank traffic sums, without the flow.

:func:`split_traffic` runs the engine's own split (``swiftmoe.engine.split``: the same amounts,
the same tiers) and sums, per rank and per tier, what the flow would send, which is all the cost
model (``swiftmoe.sim.model``) needs of it: linear in ranks x experts, no merge of the pieces.

Shape legend:
    Q  source ranks (Q = N)     E  experts     N  ranks; R = N for per-rank vectors
    S  slots per rank; K = N*S slots     H  experts holding a slot     D  demands (slots in
    (expert, slot) order)     G  (expert, node) groups     T  ranks of a node
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from swiftmoe.engine.split.demand import priced_demand
from swiftmoe.engine.split.plan_index import PlanIndex
from swiftmoe.engine.split.rank import planned_of
from swiftmoe.engine.split.tiers import (
    Tiers,
    check_routed,
    node_groups,
    node_pieces,
    supply_left,
    tier_amounts,
)

__all__ = ["SplitTraffic", "split_traffic"]


class SplitTraffic:
    """Per-rank traffic of a split, summed from its tiers without listing its pieces.

    Ranks r and q share a node when r // ranks_per_node == q // ranks_per_node (every rank shares
    one node when ranks_per_node is 0 or >= N). A source's tokens for its own slots do not
    travel. Fields (int64): x_K tokens each slot receives; si_Q / se_Q tokens each source sends
    to other ranks of its node / to other nodes; ri_R / re_R the same received per rank. They
    equal the sums over the pieces of the whole flow (the tests check them against it). ``sent_weighted(w_R)`` gives (si, se) with
    every piece weighted by w_R of its destination rank (float64), as the same sums would; it
    needs ``weighted`` (split_traffic's argument). ``planned``: the split's stage 1
    (``split.Planned``: demand, price and tier sums), which the burst decision on the same
    placement starts from (``burst.plan_bursts(planned=...)``); set by split_traffic.

    Sums, not pieces: the local tier keeps its tokens on their rank. After it, a (expert, rank)
    pair has either no tokens left or no slot demand left, so the node tier sends none of a
    source's tokens to its own rank: its traffic is the totals of its supplies and demands. After
    the node tier the same holds per (expert, node), so the last tier's pieces all leave their
    source's node (or, on one node, their source's rank), and its traffic is what is left of each
    supply and demand. No [N, E] array is made, except for ``weighted``.
    """

    def __init__(
        self, c_QE, plan, demand_K, ranks_per_node: int, weighted: bool, t: Tiers | None = None
    ) -> None:
        N = plan.N
        self._plan, self.N = plan, N
        self.nodes = 0 < ranks_per_node < N
        if t is None:  # else tier_amounts of these inputs (the priced split's)
            t = tier_amounts(c_QE, plan, demand_K, ranks_per_node)
        self.x_K = demand_K.astype(np.int64)
        if t.node is None:
            self.si_Q = np.zeros(N, dtype=np.int64)
            self.ri_R = np.zeros(N, dtype=np.int64)
        else:
            use_GT, use_D = t.node
            self.si_Q = _sum_by(node_groups(plan, ranks_per_node).q_GT, use_GT, N)
            self.ri_R = _sum_by(plan.d_r, use_D, N)
        # The last tier: every remaining token leaves its node (its rank, on one node).
        left_Q = c_QE.sum(axis=1) - _sum_by(t.cut_q, t.cut_C, N)
        left_R = _sum_by(plan.d_r, t.da_D, N)
        check_routed(int(left_Q.sum()), t.da_D)
        if self.nodes:
            self.se_Q, self.re_R = left_Q, left_R
        else:
            self.si_Q += left_Q
            self.ri_R += left_R
            self.se_Q = np.zeros(N, dtype=np.int64)
            self.re_R = np.zeros(N, dtype=np.int64)
        self._da = t.da_D
        # The split's stage 1 as the burst decision takes it (split.Planned), where
        # split_traffic made the split.
        self.planned = None
        self._weighting = self._weighting_of(c_QE, t, ranks_per_node) if weighted else None

    def _weighting_of(self, c_QE, t: Tiers, ranks_per_node: int):
        """What sent_weighted needs besides the weights: the node tier's pieces that leave their
        rank, (q, r, amount), and the last tier's line (len_D, gap, H) (None when it is empty).

        The last tier lays supplies (held expert, source) end to end against the demands in
        (expert, slot) order; a supply's weighted tokens are the integral of its destinations'
        weights over its interval. Supply boundary i (p_i tokens from the start) lies in demand
        j_i, the first that ends after it (at most the last): the boundaries run demand by
        demand, len_D of each, and gap_i = d_end[j_i] - p_i.
        """
        plan = self._plan
        small = None
        if t.node is not None:
            q, j, amt = node_pieces(plan, ranks_per_node, t.node)
            r = plan.d_r[j]
            away = q != r
            small = (q[away], r[away], amt[away])
        sup_HQ = supply_left(c_QE, plan, t, source_major=False)
        da = t.da_D
        if da.size == 0 or sup_HQ.size == 0:
            return small, None
        d_end = np.cumsum(da)
        p = np.zeros(sup_HQ.size + 1, dtype=np.int64)  # supply boundaries, increasing
        np.cumsum(sup_HQ.reshape(-1), out=p[1:])
        len_D = np.diff(np.searchsorted(p, d_end[:-1], side="left"), prepend=0, append=p.size)
        np.subtract(np.repeat(d_end, len_D), p, out=p)  # p becomes gap
        return small, (len_D, p, sup_HQ.shape[0])

    def sent_weighted(self, w_R) -> tuple[np.ndarray, np.ndarray]:
        """(si, se) float64 [N]: tokens sent within / across nodes, each weighted by w_R[dest]."""
        if self._weighting is None:
            raise ValueError("sent_weighted needs a split_traffic(..., weighted=True) result")
        small, line = self._weighting
        plan, N = self._plan, self.N
        w_R = np.asarray(w_R, dtype=np.float64)
        se = np.zeros(N)
        if small is None:
            si = np.zeros(N)
        else:
            q, r, amt = small
            si = np.bincount(q, amt * w_R[r], minlength=N).astype(np.float64)
        if line is not None:
            # F(x), the weights' integral from the line's start, at every supply boundary:
            # piecewise linear in the demands.
            len_D, gap, H = line
            w_D = w_R[plan.d_r]
            F = np.repeat(np.cumsum(self._da * w_D), len_D)
            wg = np.repeat(w_D, len_D)
            wg *= gap
            F -= wg  # F_i = F_end[j_i] - gap_i * w_D[j_i]
            last = np.subtract(F[1:], F[:-1], out=wg[:-1]).reshape(H, N).sum(axis=0)
            if self.nodes:
                se += last
            else:
                si += last
        return si, se


def _sum_by(idx: np.ndarray, amount: np.ndarray, n: int) -> np.ndarray:
    """int64 [n]: integer amounts summed by index."""
    return np.bincount(idx, amount, minlength=n).astype(np.int64)


def split_traffic(
    counts_QE,
    slots: Sequence[int] | torch.Tensor | PlanIndex,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
    weighted: bool = True,
    cost=None,
) -> SplitTraffic:
    """The engine's split as per-rank traffic sums (SplitTraffic), without the flow or its pieces.

    The arguments and checks of the engine's split (``slots``: the plan or its PlanIndex;
    ``method``: "auto", "fast" or "exact"), plus ``weighted``: prepare
    SplitTraffic.sent_weighted (one pass over the [N, E] supplies left for the last tier); pass
    False when only the sums are wanted; ``cost``: the job's cost parameters, with which
    "auto" is stage 1 chosen by the cost model, as the engine's (``swiftmoe.engine.split.priced``).
    What a cost model at cluster scale needs: linear in ranks x experts, no merge of the pieces.
    """
    c_QE, plan, demand_K, rpn, priced = priced_demand(
        counts_QE, slots, slots_per_rank, ranks_per_node, method, cost
    )
    t = None if priced is None else priced.tiers
    tr = SplitTraffic(c_QE, plan, demand_K, rpn, weighted, t)
    tr.planned = planned_of(demand_K, priced)
    return tr
