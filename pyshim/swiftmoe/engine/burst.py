"""Burst replicas: the decision, a pure and deterministic function of one layer's counts.

After a layer's counts are all-reduced, every rank knows counts_QE and the planned placement.
When the best split on that placement leaves the busiest rank above ``threshold`` x the mean,
:func:`plan_bursts` copies the weights of the most overloaded experts into up to B reserved
burst slots per rank, on the least loaded ranks, from a rank that holds them (the same node when
one does), and the layer splits its tokens over the enlarged placement. The step-time cost model
(``swiftmoe.engine.costmodel``) weighs the copies against what they save: a set of bursts that
does not lower the modelled step time is not made. Every rank computes the same plan from the
same inputs, without talking; the simulator calls the same function.

How it decides (all from the counts, the placement and the parameters):

1. the split's rank loads on the planned placement (``load_R``, or the split's stage 1 when not
   given); nothing more happens when their max over mean is at most ``threshold``;
2. a greedy list of bursts: the busiest rank gives part of one of its experts (the one that
   moves the most tokens) to a new replica on the rank that ends up least loaded, in the
   busiest rank's own node when one of its ranks can take the expert (the split sends a
   node's tokens to the node's replicas first), counting against the destination what its
   planned slots' compute leaves exposed of the copy (``costmodel.copy_exposed_ms``, within
   or across nodes), in tokens of compute; a rank never receives a burst of an expert it
   holds, nor more than B bursts; the list stops when the busiest rank is within 0.5% of the
   mean, or cannot be helped, or the next burst would move less than 0.5% of the mean;
3. the whole list, and the prefix the greedy's estimate prefers (the estimated busiest rank's
   compute with what the prefix's copies leave exposed, rank by rank), are priced with the
   engine's own split and the cost model: compute + all-to-all of the enlarged placement +
   what the planned slots' compute leaves exposed of the copies (``costmodel.copy_exposed_ms``:
   the engine runs the copy while the planned slots' GEMMs do); the cheaper is made if it
   beats the planned placement (ties: fewer bursts), else halves are tried, down to none. A
   burst the split leaves without tokens is dropped;
4. on more than one node, with the links between nodes priced, a second list for locality
   (:func:`_local`): a newly hot expert that the plan holds in one node makes the other nodes
   send it their tokens across. Each step puts a replica in the node whose tokens for an
   expert cross the most (beyond what its replicas there take), on that node's least loaded
   rank, while the tokens it keeps in the node outweigh the copy; an estimate of the
   all-to-all and the copies picks its prefix. That prefix alone, and it followed by the
   compute list's bursts that still fit, are priced like step 3; the cheapest of all the
   priced lists is made (ties: the one priced first). Up to two splits more. Two to four
   splits in the common case, a few more at most;
5. where the split's stage 1 is priced (method "auto" with the job's cost parameters on more
   than one node, ``swiftmoe.engine.split.priced``), every split above is the priced one, and
   steps 2-4 run twice: from the split on the planned placement, and from its other form (the
   min-max amounts' or the node-balanced ones'). Bursts that even out the node-balanced
   amounts' compute keep tokens in their node, which after a move of the hot set the min-max
   split's lists cannot. Twice the splits.

Shape legend:
    Q  source ranks (Q = N)      E  experts of the layer      N  ranks; R = N per-rank vectors
    S  planned slots per rank    B  burst slots per rank      K  slots, N*S (or N*S' enlarged)
    C  bursts (copies) made
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from swiftmoe._checks import is_int, is_number
from swiftmoe.engine import costmodel as cm
from swiftmoe.engine import native as _native
from swiftmoe.engine.split.amounts import amounts_fast
from swiftmoe.engine.split.demand import METHODS, priced_demand, slot_demand
from swiftmoe.engine.split.plan_index import check_counts, check_slots, index_plan
from swiftmoe.engine.split.priced import amounts_node_balanced, price, prices_split
from swiftmoe.engine.split.tiers import tier_sums

__all__ = ["BurstPlan", "pad_counts", "past_threshold", "plan_bursts"]

_GOAL_TOL = 5e-3  # the greedy list stops once the busiest rank is this close to the mean


@dataclass(frozen=True)
class BurstPlan:
    """The bursts of one layer and one iteration, and the placement the split then runs on.

    Attributes:
        num_experts: E. In ``slots_K`` the id E marks an empty burst slot (a virtual expert
            with no tokens): split with :func:`pad_counts` of the counts, and its slots
            receive nothing.
        slots_per_rank: S' = S + the most bursts any rank received (S when none were made).
        slots_K: int64 [N*S'], the enlarged placement: slot s of rank r is entry r*S'+s; the
            first S of each rank are the planned slots, in order; the rest its burst slots.
        expert_C, src_C, dst_C: int64 [C], burst c copies expert expert_C[c] from rank src_C[c]
            (its planned slot src_slot_C[c], 0..S-1, which holds that expert) to rank dst_C[c]
            (its slot dst_slot_C[c], S..S'-1, in ``slots_K``'s row of that rank), in the order
            they were chosen; dst_C[c] holds no other slot of expert_C[c].
        src_slot_C, dst_slot_C: int64 [C], see above.
        before_ms: the modelled step time of the layer on the planned placement (compute +
            all-to-all; ``swiftmoe.engine.costmodel``), 0 when the threshold was not passed.
        after_ms: the same on the enlarged placement plus ``copy_ms`` (= before_ms when none
            were made).
        copy_ms: what the copies add to the step once the planned slots' compute hides what
            it can (``costmodel.copy_exposed_ms``; at most ``costmodel.copy_ms``).
    """

    num_experts: int
    slots_per_rank: int
    slots_K: np.ndarray
    expert_C: np.ndarray
    src_C: np.ndarray
    src_slot_C: np.ndarray
    dst_C: np.ndarray
    dst_slot_C: np.ndarray
    before_ms: float = 0.0
    after_ms: float = 0.0
    copy_ms: float = 0.0

    @property
    def count(self) -> int:
        """C, the bursts made."""
        return int(self.expert_C.size)


def past_threshold(load_R, burst_slots_per_rank: int, threshold: float) -> bool:
    """Whether the decision runs: burst slots, two ranks or more, tokens, and the split's rank
    loads load_R [N] on the planned placement with max > threshold x mean. The engine's check
    per layer call (``burst_run.decide``), plan_bursts' own, and the simulator's."""
    # As Python ints: on these short vectors two tensor reductions cost several times the list.
    loads = load_R.tolist() if hasattr(load_R, "tolist") else list(load_R)
    N, total = len(loads), sum(loads)
    if burst_slots_per_rank == 0 or N <= 1 or total == 0:
        return False
    return max(loads) * N > threshold * total


def pad_counts(counts_QE) -> np.ndarray:
    """counts_QE [N, E] with a zero column for the empty burst slots' id E: int64 [N, E+1]."""
    c = check_counts(counts_QE)
    return np.concatenate((c, np.zeros((c.shape[0], 1), dtype=np.int64)), axis=1)


def _none(slots_K: np.ndarray, S: int, E: int, before_ms: float = 0.0) -> BurstPlan:
    z = np.zeros(0, dtype=np.int64)
    return BurstPlan(E, S, slots_K, z, z, z, z, z, before_ms, before_ms, 0.0)


def _check(
    counts_QE, slots_K, S, B, ranks_per_node, params, threshold, method, load_R, planned=None
):
    if not is_int(B, 0):
        raise ValueError(
            f"burst_slots_per_rank is {B!r}: pass an integer >= 0 (0 turns bursts off)"
        )
    if not is_number(threshold) or not math.isfinite(threshold) or threshold < 1.0:
        raise ValueError(
            f"burst_threshold is {threshold!r}: pass a number >= 1.0, the busiest rank's load "
            "over the mean above which bursts are considered"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not is_int(ranks_per_node, 0):
        raise ValueError(
            f"ranks_per_node is {ranks_per_node!r}: pass an integer >= 0 (0: one node)"
        )
    if not isinstance(params, cm.CostParams):
        raise ValueError(
            f"params is {type(params).__name__}: pass a swiftmoe.engine.costmodel.CostParams"
        )
    c_QE = check_counts(counts_QE)
    N, E = c_QE.shape
    if params.ranks != N:
        raise ValueError(
            f"params.ranks is {params.ranks} but counts_QE has {N} rows: pass the cost "
            "parameters of this job (one row of counts per rank)"
        )
    if params.ranks_per_node != ranks_per_node:
        raise ValueError(
            f"params.ranks_per_node is {params.ranks_per_node} but ranks_per_node is "
            f"{ranks_per_node}: the split and the cost model must see the same nodes"
        )
    slots = check_slots(slots_K, S, N, E)
    if load_R is not None:
        load_R = np.asarray(load_R, dtype=np.int64).reshape(-1)
        if load_R.shape != (N,):
            raise ValueError(
                f"load_R has shape {load_R.shape}, want ({N},): the split's rank loads on "
                "the planned placement, or None"
            )
    if planned is not None:
        d = np.asarray(planned.demand_K)
        sums = planned.sums
        if (
            d.shape != (N * S,)
            or (sums is None) != (planned.ms is None)
            or (sums is not None and [np.shape(v) for v in sums] != [(N,)] * 4)
        ):
            raise ValueError(
                "planned must be the split on the planned placement (RankSplit.planned: "
                f"demand_K [{N * S}], and ms with four tier sums [{N}] where it was priced), "
                "or None"
            )
    return c_QE, slots, load_R


def plan_bursts(
    counts_QE,
    slots_K,
    slots_per_rank: int,
    burst_slots_per_rank: int,
    ranks_per_node: int,
    params: cm.CostParams,
    threshold: float,
    method: str = "auto",
    load_R=None,
    native: bool | None = None,
    planned=None,
    gate: tuple[float, float] | None = None,
) -> BurstPlan:
    """The burst replicas of one layer in one iteration (see the module docstring).

    Args:
        counts_QE: int64 [N, E] (tensor or array), the all-reduced counts: tokens source rank
            q routes to expert e.
        slots_K: the planned placement, [N*S] expert ids (list, tensor or array).
        slots_per_rank: S.
        burst_slots_per_rank: B, burst slots per rank; 0 makes none.
        ranks_per_node: the split's node grouping (0: one node); must equal
            ``params.ranks_per_node``.
        params: the cost model's parameters (``swiftmoe.engine.costmodel.CostParams``), the same
            on every rank.
        threshold: >= 1.0; bursts are considered only when the split on the planned placement
            leaves max(load_R) > threshold * mean(load_R).
        method: the split's method ("auto", "fast", "exact"), as the layer splits.
        load_R: the split's rank loads on the planned placement when the caller has them
            (int64 [N]), else None (computed).
        planned: the split on the planned placement with this method and cost when the
            caller has it (``RankSplit.planned``, ``split.Planned``), else None (made here):
            a layer that has split its tokens need not split them again to decide.
        gate: None (the default), or (lo, hi) in ms: past the threshold, no list is built
            where the planned placement's modelled step (``before_ms``) is in [lo, hi]: none
            is made, at the cost of pricing that split alone. The engine's gate
            (``burst_run.DecisionGate``) is the lowest step its recent decisions reached and
            that plus the decision's own host time, so that a decision that cannot be
            expected to save more than it costs does not run.
        native: None (default) runs the C port (``swiftmoe.engine.native``, the same decision
            bit for bit) when its library is found and the method is "fast" or "auto", else
            this module's NumPy code; False always runs the NumPy code; True requires the C
            port (a RuntimeError names why it cannot run).

    Returns:
        A :class:`BurstPlan`; with no bursts (``count == 0``) its ``slots_K`` is the planned
        placement and ``slots_per_rank`` is S. Deterministic: the same inputs give the same
        plan on every rank and in the simulator.

    Raises:
        ValueError: a malformed argument; the message names it and the fix.
    """
    S, B = slots_per_rank, burst_slots_per_rank
    c_QE, slots, load_R = _check(
        counts_QE, slots_K, S, B, ranks_per_node, params, threshold, method, load_R, planned
    )
    if gate is not None and not (
        isinstance(gate, tuple)
        and len(gate) == 2
        and all(is_number(g) and not math.isnan(g) for g in gate)
    ):
        raise ValueError(
            f"gate is {gate!r}: pass None, or (lo, hi) in ms (the planned steps for which no "
            "burst list is built)"
        )
    N, E = c_QE.shape
    if _native.use(native, method, "burst decision"):
        got = _native.plan_bursts(
            c_QE, slots, S, B, params, threshold, method, load_R, planned, gate
        )
        return BurstPlan(E, *got)
    total = int(c_QE.sum())
    if B == 0 or N == 1 or total == 0:
        return _none(slots, S, E)
    plan0 = demand0 = before = sums0 = None

    def split_planned() -> None:
        """The split on the planned placement, with its price where stage 1 was priced."""
        nonlocal plan0, demand0, before, sums0
        _, plan0, demand0, _, priced0 = priced_demand(
            c_QE, slots, S, ranks_per_node, method, params
        )
        if priced0 is not None:
            before, sums0 = priced0.ms, priced0.sums

    if planned is not None:  # the caller's split on the planned placement: not made again
        demand0 = np.asarray(planned.demand_K, dtype=np.int64)
        plan0 = index_plan(slots, S, N, E)
        if planned.sums is not None:
            before, sums0 = planned.ms, tuple(planned.sums)
    elif load_R is None:
        split_planned()
    if load_R is None:
        load_R = demand0.reshape(N, S).sum(axis=1)
    if not past_threshold(load_R, B, threshold):
        return _none(slots, S, E)
    if demand0 is None:
        split_planned()
    if before is None:  # stage 1 not priced: the decision prices the split itself
        before, sums0 = _price(params, c_QE, plan0, demand0, ranks_per_node)
    if not params.prices_compute:
        return _none(slots, S, E, before)  # nothing to weigh a copy against
    if gate is not None and gate[0] <= before <= gate[1]:
        return _none(slots, S, E, before)  # the gate: a decision not expected to pay its time
    c_pad = pad_counts(c_QE)
    best = None
    # The lists start from the split on the planned placement; where the split's stage 1 is
    # priced (split.priced), from its other form too: bursts that even out the node-balanced
    # amounts' compute can beat the min-max split's cheaper start, and the other way round.
    for start, sums in _starts(c_QE, plan0, demand0, sums0, ranks_per_node, method, params):
        best = _best_of_lists(
            c_QE, c_pad, slots, start, sums, S, B, ranks_per_node, params, method, before, best
        )
    return _none(slots, S, E, before) if best is None else _with_before(best, before)


def _starts(c_QE, plan0, demand0, sums0, rpn: int, method: str, params: cm.CostParams):
    """The splits on the planned placement the lists start from, with their tier sums: the
    layer's own (demand0), and where stage 1 is priced its other form: the min-max amounts
    where demand0 keeps tokens in their node (the node-balanced amounts), else the
    node-balanced amounts."""
    yield demand0, sums0
    if method != "auto" or not prices_split(params, plan0, rpn):
        return
    L_E = c_QE.sum(axis=0)
    other = slot_demand(plan0, amounts_fast(c_QE, plan0, L_E))
    if np.array_equal(other, demand0):
        other = slot_demand(plan0, amounts_node_balanced(c_QE, plan0, L_E, rpn))
    if not np.array_equal(other, demand0):
        yield other, tier_sums(c_QE, plan0, other, rpn)


def _best_of_lists(
    c_QE, c_pad, slots, demand0, sums0, S, B, rpn, params, method, before, best
) -> BurstPlan | None:
    """The cheapest of ``best`` and the burst lists built from one start (module steps 2-4):
    ``best`` when none beats it, or None when nothing beats the planned placement."""
    E = c_QE.shape[1]
    N = c_QE.shape[0]
    bursts, n_est = _greedy(c_QE, slots, demand0, S, B, params)
    local, n_loc = _local(c_QE, slots, demand0, S, B, params, sums0)
    if not bursts and not local:
        return best
    # Price the whole list and the estimate's prefix with the split (the estimate sees compute
    # and copies, not the all-to-all a burst also spreads); then halves of the shorter while
    # neither beats the planned placement.
    found = False
    n = len(bursts)
    tried: set[int] = set()
    while n >= 1 and n not in tried:
        tried.add(n)
        cand = _evaluate(c_pad, slots, S, E, bursts[:n], rpn, params, method)
        if cand.count and cand.after_ms < (before if best is None else best.after_ms):
            best, found = cand, True
        if n == len(bursts) and 1 <= n_est < n:
            n = n_est
        elif not found:
            n //= 2
        else:
            break
    # The locality list (module step 4): the estimate's prefix, alone and followed by the
    # compute list's bursts that still fit.
    if local:
        local = local[:n_loc]
        cands = [local]
        both = _union(local, bursts, slots, S, B, N, E)
        if len(both) > len(local):
            cands.append(both)
        for cand_list in cands:
            cand = _evaluate(c_pad, slots, S, E, cand_list, rpn, params, method)
            if cand.count and cand.after_ms < (before if best is None else best.after_ms):
                best = cand
    return best


def _with_before(p: BurstPlan, before: float) -> BurstPlan:
    return BurstPlan(
        p.num_experts,
        p.slots_per_rank,
        p.slots_K,
        p.expert_C,
        p.src_C,
        p.src_slot_C,
        p.dst_C,
        p.dst_slot_C,
        before,
        p.after_ms,
        p.copy_ms,
    )


def _price(params: cm.CostParams, c_QE, plan, demand_K, rpn: int) -> tuple[float, tuple | None]:
    """compute_ms + a2a_ms of the split (``split.priced.price``; the a2a only when the network
    is priced), and the split's tier sums (si, ri, se, re; None when not priced)."""
    if params.prices_network:
        p = price(params, c_QE, plan, demand_K, rpn)
        return p.ms, p.sums
    return cm.compute_ms(params, demand_K.reshape(plan.N, plan.S).sum(axis=1)), None


def _greedy(
    c_QE, slots, demand_K, S: int, B: int, params: cm.CostParams
) -> tuple[list[tuple], int]:
    """The candidate bursts (expert, source, destination), most useful first, and how many of
    them the estimate says to make (module step 2).

    The estimate: each burst moves tokens of one expert from the busiest rank to its new
    replica (at most half their gap, less the copy's exposed cost in tokens); a prefix of the
    list is priced as the busiest rank's compute with what its copies leave exposed (rank r:
    its tokens' compute + _exposed of its copies' one-way time, as copy_exposed_ms weighs
    them), and the cheapest prefix wins (ties: the shorter). A copy priced whole would stop
    the list where the copies hide behind the planned slots' compute: on the simulator's E=32
    rows that left the busiest rank up to 12% over the mean.
    """
    N, E = c_QE.shape
    node_R = cm.node_of(params)
    rank_K = np.arange(N * S) // S
    held = np.zeros((N, E), dtype=bool)
    held[rank_K, slots] = True
    # A: tokens of expert e on rank r under the split.
    A = np.bincount(rank_K * E + slots, demand_K, minlength=N * E).reshape(N, E)
    est = A.sum(axis=1)
    goal = est.sum() / N * (1.0 + _GOAL_TOL)
    # A burst must move at least the goal's tolerance of the mean: with copies hidden, smaller
    # moves cost nothing in the estimate and would lengthen the list for no gain.
    least = max(1.0, est.sum() / N * _GOAL_TOL)
    # A copy's cost: what the planned slots' compute leaves exposed of it on its destination
    # (costmodel.copy_exposed_ms), in tokens of compute: the destination's score adds it, within
    # its node when a planned holder of e (a source) shares r's node, else across.
    ms_per_token = 1e3 * params.flops_per_token / params.flops_per_s
    one_intra = 1e3 * params.expert_bytes / params.intra_bw if params.intra_bw > 0 else 0.0
    one_inter = 1e3 * params.expert_bytes / params.inter_bw if params.inter_bw > 0 else 0.0
    in_node_EM = np.zeros((E, int(node_R.max()) + 1), dtype=bool)
    in_node_EM[slots, node_R[rank_K]] = True
    # Planned holders, the sources: expert e's are by_e[first_E[e]:first_E[e+1]] (by rank).
    by_e = rank_K[np.argsort(slots, kind="stable")]
    first_E = np.concatenate(([0], np.cumsum(np.bincount(slots, minlength=E))))
    free = np.full(N, B)
    sent = np.zeros(N, dtype=np.int64)  # copies each rank has sent: spread the sources
    planned_R = est.astype(np.float64)  # tokens on each rank's planned slots
    planned_NE = held.copy()
    # Copies each rank sends / receives within (intra) and across (inter) nodes, and a rank's
    # one-way copy time from them; got: one copy more received.
    intra_SR, inter_SR = np.zeros((2, N)), np.zeros((2, N))
    got = np.array([[0.0], [1.0]])

    def one_way(intra, inter):
        return np.maximum(intra.max(axis=0) * one_intra, inter.max(axis=0) * one_inter)

    out: list[tuple] = []
    best_n, best_ms = 0, ms_per_token * float(est.max())
    while len(out) < N * B:
        h = int(np.argmax(est))
        if est[h] <= goal:
            break
        e_C = np.flatnonzero(A[h] > 0)  # the busiest rank's experts
        pen_in = _exposed(one_way(intra_SR + got, inter_SR), planned_R, ms_per_token)
        pen_out = _exposed(one_way(intra_SR, inter_SR + got), planned_R, ms_per_token)
        pen_CR = np.where(in_node_EM[e_C][:, node_R], pen_in, pen_out) / ms_per_token
        ok_CR = (free > 0)[None, :] & ~held[:, e_C].T
        # In the busiest rank's node when it can take the expert: the split moves its tokens
        # to a replica in its own node before one across nodes.
        home_CR = ok_CR & (node_R == node_R[h])[None, :]
        ok_CR = np.where(home_CR.any(axis=1)[:, None], home_CR, ok_CR)
        score_CR = np.where(ok_CR, est[None, :] + pen_CR, np.inf)
        d_C = np.argmin(score_CR, axis=1)  # ties: the lowest rank
        move_C = np.minimum(A[h, e_C], (est[h] - score_CR[np.arange(e_C.size), d_C]) / 2.0)
        if e_C.size == 0 or not np.isfinite(move_C).any():
            break
        c = int(np.argmax(np.where(np.isfinite(move_C), move_C, -np.inf)))  # ties: lowest e
        move, e, d = float(move_C[c]), int(e_C[c]), int(d_C[c])
        if move < least:
            break
        cand = by_e[first_E[e] : first_E[e + 1]]
        same = cand[node_R[cand] == node_R[d]]
        pool = same if same.size else cand
        q = int(pool[np.argmin(sent[pool])])  # fewest copies sent so far, then the lowest rank
        sent[q] += 1
        out.append((e, q, d))
        tier = intra_SR if node_R[q] == node_R[d] else inter_SR
        tier[0, q] += 1
        tier[1, d] += 1
        if planned_NE[h, e]:
            planned_R[h] -= move
        A[h, e] -= move
        A[d, e] += move
        est[h] -= move
        est[d] += move
        held[d, e] = True
        free[d] -= 1
        c_R = one_way(intra_SR, inter_SR)
        t = float((ms_per_token * est + _exposed(c_R, planned_R, ms_per_token)).max())
        if t < best_ms:
            best_n, best_ms = len(out), t
    return out, best_n


def _exposed(c_R, planned_R, ms_per_token: float):
    """What a one-way copy time c_R (ms) per rank leaves exposed beside the planned slots'
    compute (planned_R tokens): costmodel.copy_exposed_ms's T_r - (P_r + B_r), per rank."""
    p = planned_R * ms_per_token
    f = cm.FORWARD_SHARE
    return np.maximum(c_R - f * p, 0.0) + np.maximum(c_R - (1.0 - f) * p, 0.0)


def _local(
    c_QE, slots, demand_K, S: int, B: int, params: cm.CostParams, sums
) -> tuple[list[tuple], int]:
    """The locality bursts (expert, source, destination), most traffic saved first, and how
    many of them the estimate says to make (module step 4); ([], 0) on one node, when the links
    between nodes are not priced or are not what the all-to-all waits for, or when no prefix
    of the list lowers the estimate.

    ``sums``: the planned split's tier sums (si, ri, se, re). The ranks whose traffic across
    nodes (max(se, re)) is at least half the busiest rank's set the all-to-all: only experts
    that such a rank holds, and nodes that hold such a rank, are considered. Tokens that node m
    sends to an expert beyond what its replicas in node m take cross nodes and land on the
    expert's other replicas (the split's routing prefers the own node). A replica takes about
    the expert's tokens over its replicas; so node m keeps min(T[m, e], share_e x its replicas
    of e) inside it, and the rest, X[m, e], crosses. Each step adds a replica where it keeps the
    most crossing tokens off the links, min(X[m, e], share_e after the copy), and only while
    that beats the copy (4 one-way token exchanges against the copy and its gradient's return:
    more than expert_bytes / (2 token_bytes) tokens). The destination is the rank of node m
    with a free burst slot that the split loads least; the source, the planned holder that has
    sent the fewest copies so far, in node m when one is (then the lowest rank). Ties: the
    lowest node, then the lowest expert.

    The estimate: each rank's traffic across nodes (from ``sums``) less what the list keeps
    in nodes (node m's senders share it; the expert's holders in other nodes share what they
    no longer receive), 4 one-way exchanges of it at inter_bw, plus copy_ms of the list's
    copies; the cheapest prefix wins. The list stops at N*B bursts, when no replica beats its
    copy, or 2 x ranks_per_node steps after the estimate last improved.
    """
    G = params.ranks_per_node
    N, E = c_QE.shape
    if params.nodes == 1 or params.inter_bw <= 0 or params.token_bytes <= 0 or sums is None:
        return [], 0
    si, ri, se, re_ = sums
    cross_R = np.maximum(se, re_)
    t_inter = float(cross_R.max()) / params.inter_bw
    t_intra = float(np.maximum(si, ri).max()) / params.intra_bw if params.intra_bw > 0 else 0.0
    if t_inter <= 0 or t_inter < t_intra:
        return [], 0  # the all-to-all waits for the links within nodes
    node_R = cm.node_of(params)
    rank_K = np.arange(N * S) // S
    held = np.zeros((N, E), dtype=bool)
    held[rank_K, slots] = True
    busy_R = cross_R >= 0.5 * cross_R.max()
    want_ME = np.zeros((params.nodes, E), dtype=bool)
    want_ME[node_R[busy_R]] = True  # nodes whose senders the all-to-all waits for
    want_ME[:, held[busy_R].any(axis=0)] = True  # experts whose holders it waits for
    reps_E = held.sum(axis=0).astype(np.float64)
    first_M = np.arange(0, N, G)
    in_ME = np.add.reduceat(held.astype(np.float64), first_M, axis=0)
    T_ME = np.add.reduceat(c_QE, first_M, axis=0).astype(np.float64)
    L_E = c_QE.sum(axis=0).astype(np.float64)
    floor = 0.5 * params.expert_bytes / params.token_bytes

    def gain(e_idx):
        share = L_E[e_idx] / np.maximum(reps_E[e_idx], 1.0)
        cross = np.maximum(T_ME[:, e_idx] - in_ME[:, e_idx] * share, 0.0)
        nxt = L_E[e_idx] / (reps_E[e_idx] + 1.0)
        ok = want_ME[:, e_idx] & (reps_E[e_idx] > 0)
        return np.where(ok, np.minimum(cross, nxt), 0.0)

    gain_ME = gain(slice(None))
    est = np.bincount(rank_K, demand_K, minlength=N).astype(np.float64)
    by_e = rank_K[np.argsort(slots, kind="stable")]
    first_E = np.concatenate(([0], np.cumsum(np.bincount(slots, minlength=E))))
    free = np.full(N, B)
    full_M = np.zeros(params.nodes, dtype=bool)
    # The estimate that picks the prefix: each rank's traffic across nodes less what the list
    # keeps in its node (the senders of node m share it, the expert's holders elsewhere share
    # what they no longer receive), plus the copies' time (as in _greedy).
    cross = cross_R.astype(np.float64)
    tok_ms = 4e3 * params.token_bytes / params.inter_bw
    intra = 2e3 * params.expert_bytes / params.intra_bw if params.intra_bw > 0 else 0.0
    inter = 2e3 * params.expert_bytes / params.inter_bw
    copies_SR = np.zeros((2, 2, N))  # [intra, inter] x [sent, received]
    most = np.zeros(2)
    best_n, best_ms = 0, tok_ms * float(cross.max())
    patience = 2 * G  # steps without a better estimate before the list stops
    out: list[tuple] = []
    while len(out) < N * B and len(out) - best_n < patience:
        gain_ME[full_M] = 0.0
        i = int(np.argmax(gain_ME))  # ties: the lowest node, then expert
        m, e = divmod(i, E)
        g = float(gain_ME[m, e])
        if g <= floor:
            break
        d_T = np.arange(m * G, min((m + 1) * G, N))
        d_T = d_T[(free[d_T] > 0) & ~held[d_T, e]]
        if d_T.size == 0:
            gain_ME[m, e] = 0.0
            full_M[m] = not (free[m * G : (m + 1) * G] > 0).any()
            continue
        d = int(d_T[np.argmin(est[d_T])])  # ties: the lowest rank
        pool = by_e[first_E[e] : first_E[e + 1]]
        away = pool[node_R[pool] != m]
        same = pool[node_R[pool] == m]
        src = same if same.size else pool
        q = int(src[np.argmin(copies_SR[:, 0, src].sum(axis=0))])  # fewest sent, lowest rank
        out.append((e, q, d))
        t = 0 if node_R[q] == m else 1
        copies_SR[t, 0, q] += 1
        copies_SR[t, 1, d] += 1
        most[t] = max(most[t], copies_SR[t, 0, q], copies_SR[t, 1, d])
        cross[m * G : (m + 1) * G] -= g / min(G, N - m * G)
        if away.size:
            cross[away] -= g / away.size
        np.maximum(cross, 0.0, out=cross)
        free[d] -= 1
        held[d, e] = True
        in_ME[m, e] += 1
        reps_E[e] += 1
        est[d] += L_E[e] / reps_E[e]
        gain_ME[:, e] = gain(e)
        t_ms = tok_ms * float(cross.max()) + max(most[0] * intra, most[1] * inter)
        if t_ms < best_ms:
            best_n, best_ms = len(out), t_ms
    return (out, best_n) if best_n else ([], 0)


def _union(first: list[tuple], then: list[tuple], slots, S: int, B: int, N: int, E: int):
    """``first``, then the bursts of ``then`` that still fit (a free burst slot on a
    destination that holds the expert in no slot yet)."""
    held = np.zeros((N, E), dtype=bool)
    held[np.arange(N * S) // S, slots] = True
    free = np.full(N, B)
    out = []
    for e, q, d in first:
        held[d, e] = True
        free[d] -= 1
        out.append((e, q, d))
    for e, q, d in then:
        if free[d] > 0 and not held[d, e]:
            held[d, e] = True
            free[d] -= 1
            out.append((e, q, d))
    return out


def _layout(slots, S: int, E: int, bursts, N: int):
    """The enlarged placement of a list of bursts and their slot positions."""
    e_C = np.array([b[0] for b in bursts], dtype=np.int64)
    q_C = np.array([b[1] for b in bursts], dtype=np.int64)
    d_C = np.array([b[2] for b in bursts], dtype=np.int64)
    per_R = np.bincount(d_C, minlength=N)
    Sx = S + int(per_R.max()) if d_C.size else S
    out = np.full((N, Sx), E, dtype=np.int64)
    out[:, :S] = slots.reshape(N, S)
    # Burst c is the j-th burst of its destination, in list order: slot S + j.
    order = np.argsort(d_C, kind="stable")
    first = np.concatenate(([0], np.cumsum(per_R)[:-1]))
    j_C = np.empty_like(d_C)
    j_C[order] = np.arange(d_C.size) - first[d_C[order]]
    out[d_C, S + j_C] = e_C
    # The source's planned slot holding the expert: its first one.
    sl = slots.reshape(N, S)
    s_C = np.argmax(sl[q_C] == e_C[:, None], axis=1).astype(np.int64)
    return out.reshape(-1), Sx, e_C, q_C, s_C, d_C, S + j_C


def _evaluate(c_pad, slots, S, E, bursts, rpn, params, method) -> BurstPlan:
    """The plan of a list of bursts, priced with the split; bursts left without tokens dropped."""
    N = c_pad.shape[0]
    while True:
        slots_x, Sx, e_C, q_C, s_C, d_C, j_C = _layout(slots, S, E, bursts, N)
        _, plan, demand_K, _, priced = priced_demand(c_pad, slots_x, Sx, rpn, method, params)
        used = demand_K[d_C * Sx + j_C] > 0
        if used.all():
            break
        bursts = [b for b, u in zip(bursts, used.tolist(), strict=True) if u]
    copies = cm.copy_traffic(params, q_C, d_C)
    load_RS = demand_K.reshape(N, Sx)
    planned_R, burst_R = load_RS[:, :S].sum(axis=1), load_RS[:, S:].sum(axis=1)
    c_ms = cm.copy_exposed_ms(params, planned_R, burst_R, *copies)
    ms = priced.ms if priced is not None else _price(params, c_pad, plan, demand_K, rpn)[0]
    after = ms + c_ms
    return BurstPlan(E, Sx, slots_x, e_C, q_C, s_C, d_C, j_C, 0.0, after, c_ms)
