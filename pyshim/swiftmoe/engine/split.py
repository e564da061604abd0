"""The token split: how many tokens each source rank sends to each slot this iteration.

Every rank routes its tokens with the model's router; the counts are all-reduced, so every rank
holds counts_QE (tokens source rank q routes to expert e). Under the current plan (slots_K, slot
k = r*S+s on rank r) each expert's tokens are divided among the slots holding it. split_tokens
chooses the division that minimises the most loaded rank (a min-max transportation problem), and
among equally good divisions keeps tokens on their own rank, then on their own node. The result is
a pure function of its inputs: every rank computes the same flow without talking.

Two stages:
1. amounts x_P: tokens each (expert, rank) pair P processes. "exact" binary-searches the integer
   rank cap with a max-flow check (Dinic on source -> expert -> rank -> sink), starting each check
   from a flow that keeps local tokens local. "fast" starts from the all-local assignment and
   runs proportional rank scaling with momentum (every rank's weight divided by its load,
   experts split over their ranks in proportion to the weights, all experts at once) until the
   max is within 0.75% of a lower bound certified from the loads' level sets, then integer
   rounding and a repair that moves tokens off ranks above the target.
2. routing: each rank's amount is spread evenly over its slots of that expert, then sources are
   matched to slots local first, same node second, then the rest, in a fixed order (north-west
   corner per tier, one vectorised merge of cumulative sums; no loop over experts or ranks).

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

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from swiftmoe._checks import is_int

__all__ = [
    "RankSplit",
    "even_split_tokens",
    "rank_load_from_flow",
    "split_rank_loads",
    "split_tokens",
    "split_tokens_for_rank",
    "split_tokens_sparse",
    "split_traffic",
    "SplitTraffic",
]

_METHODS = ("auto", "fast", "exact")
_RANK_METHODS = (*_METHODS, "even")
_FAST_MAX_ITERS = 32  # scaling rounds at most
_FAST_FIRST_CHECK = 7  # the first round that certifies a level-set lower bound (when still needed)
_FAST_CHECK_EVERY = 4  # rounds between level-set lower bounds
_FAST_TOL = 7.5e-3  # stop once the best max is this close to a certified lower bound


# ---------------------------------------------------------------- inputs


def _counts(counts_QE) -> np.ndarray:
    if isinstance(counts_QE, torch.Tensor):
        if counts_QE.is_floating_point() or counts_QE.is_complex() or counts_QE.dtype == torch.bool:
            raise ValueError(
                f"counts_QE must be an integer tensor of token counts, got dtype {counts_QE.dtype}; "
                "pass the all-reduced per-expert counts as int64"
            )
        arr = counts_QE.detach().cpu().to(torch.int64).numpy()
    else:
        arr = np.asarray(counts_QE)
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(
                f"counts_QE must hold integer token counts, got dtype {arr.dtype}; pass int64 counts"
            )
        # The split never writes to the counts, so a caller's int64 array is used as it is;
        # a read-only one is copied, since torch.from_numpy of a view of it would warn.
        arr = arr.astype(np.int64, copy=not arr.flags.writeable)
    if arr.ndim != 2:
        raise ValueError(
            f"counts_QE must be 2-D [source ranks, experts], got shape {tuple(arr.shape)}"
        )
    if arr.size and arr.min() < 0:
        q, e = np.argwhere(arr < 0)[0]
        raise ValueError(f"counts_QE[{q}, {e}] is {arr[q, e]}; token counts cannot be negative")
    return np.ascontiguousarray(arr)


def _slots(slots, slots_per_rank: int, num_ranks: int, num_experts: int) -> np.ndarray:
    if not is_int(slots_per_rank, 1):
        raise ValueError(f"slots_per_rank must be an integer >= 1, got {slots_per_rank!r}")
    if isinstance(slots, torch.Tensor):
        if slots.is_floating_point() or slots.is_complex():
            raise ValueError(f"slots must hold integer expert ids, got dtype {slots.dtype}")
        arr = slots.detach().cpu().to(torch.int64).numpy()
    else:
        arr = np.asarray(slots)
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"slots must hold integer expert ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"slots must be a 1-D plan of expert ids, got shape {tuple(arr.shape)}")
    want = num_ranks * slots_per_rank
    if arr.shape[0] != want:
        raise ValueError(
            f"slots has {arr.shape[0]} entries, want counts_QE.shape[0]*slots_per_rank = "
            f"{num_ranks}*{slots_per_rank} = {want}: one row of counts per rank"
        )
    bad = np.nonzero((arr < 0) | (arr >= num_experts))[0]
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"slots[{k}] holds expert {int(arr[k])}, want 0..{num_experts - 1} "
            f"(counts_QE has {num_experts} experts)"
        )
    return np.ascontiguousarray(arr)


class _Plan:
    """The plan's (expert, rank) pairs and the slots behind each."""

    def __init__(self, slots_K: np.ndarray, N: int, S: int, E: int):
        self.N, self.S, self.E, self.K = N, S, E, N * S
        self.slots_K = slots_K
        rank_K = np.arange(self.K, dtype=np.int64) // S
        key_K = slots_K * N + rank_K
        key_P, pair_K, mult_P = np.unique(key_K, return_inverse=True, return_counts=True)
        self.pair_K = pair_K.reshape(-1)
        self.mult_P = mult_P
        self.e_P = key_P // N
        # As a sort key: numpy's stable sort of 16-bit integers is a radix sort.
        self.e_small_P = self.e_P.astype(np.int16 if E <= np.iinfo(np.int16).max else np.int64)
        self.r_P = key_P % N
        self.deg_E = np.bincount(self.e_P, minlength=E)
        self.start_E = np.concatenate(([0], np.cumsum(self.deg_E)[:-1]))
        # Slot k is the idx_K-th of the mult_K slots of its pair, in slot order.
        order = np.lexsort((np.arange(self.K), self.pair_K))
        first_P = np.concatenate(([0], np.cumsum(mult_P)[:-1]))
        self.idx_K = np.empty(self.K, dtype=np.int64)
        self.idx_K[order] = np.arange(self.K) - first_P[self.pair_K[order]]
        self.mult_K = mult_P[self.pair_K]
        # Demands in (expert, slot) order: their slot, rank, expert and pair (nondecreasing).
        self.d_k = np.argsort(slots_K, kind="stable")
        self.d_r = self.d_k // S
        self.d_e = slots_K[self.d_k]
        self.d_pair = self.pair_K[self.d_k]
        self.dpos_K = np.empty(self.K, dtype=np.int64)  # slot k is demand dpos_K[k]
        self.dpos_K[self.d_k] = np.arange(self.K)
        self.d_first_P = first_P  # pair p's first demand: demands run pair by pair
        # Experts holding a slot (None: all), the last demand of each, and row offsets q*K.
        held = self.deg_E > 0
        self.held_H = None if held.all() else np.flatnonzero(held)
        self.h_E = np.cumsum(held) - 1  # expert -> row among held experts
        self.h_P = self.h_E[self.e_P]
        # Pair p's flat index in the counts [N, E] and in their expert-major layout [H, N].
        self.qe_P = self.r_P * E + self.e_P
        self.hq_P = self.h_P * N + self.r_P
        self.last_H = (np.cumsum(np.bincount(slots_K, minlength=E)) - 1)[held]
        self.qK_Q = np.arange(N, dtype=np.int64) * self.K


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
_PLANS_MAX = 64  # layers x recent plans; each entry holds a few K-long arrays
_PLANS_LOCK = threading.Lock()


def _plan(slots_K: np.ndarray, N: int, S: int, E: int) -> _Plan:
    """_Plan of a plan, cached: a plan stays in force for many iterations and every layer.

    The key is the plan's bytes and shape, so a hit is the same pure function of the inputs;
    cached arrays are read-only.
    """
    key = (slots_K.tobytes(), N, S, E)
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = _Plan(slots_K.copy(), N, S, E)
    for v in vars(plan).values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    with _PLANS_LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > _PLANS_MAX:
            _PLANS.popitem(last=False)
    return plan


def _prepare(counts_QE, slots, slots_per_rank: int):
    c_QE = _counts(counts_QE)
    N, E = c_QE.shape
    if N < 1 or E < 1:
        raise ValueError(f"counts_QE must have at least one rank and one expert, got {c_QE.shape}")
    slots_K = _slots(slots, slots_per_rank, N, E)
    plan = _plan(slots_K, N, slots_per_rank, E)
    L_E = c_QE.sum(axis=0)
    orphan = np.nonzero((plan.deg_E == 0) & (L_E > 0))[0]
    if orphan.size:
        e = int(orphan[0])
        raise ValueError(
            f"expert {e} has {int(L_E[e])} tokens but no slot in the plan; every expert needs a "
            "replica (validate the plan with swiftmoe.engine.plan.validate_slots)"
        )
    return c_QE, plan, L_E


# ---------------------------------------------------------------- stage 1: amounts per pair


def _lower_bound(plan: _Plan, L_E: np.ndarray) -> int:
    """A lower bound on the integer optimum: the mean, any expert over its ranks, forced loads."""
    total = int(L_E.sum())
    lb = -(-total // plan.N)
    has = plan.deg_E > 0
    if has.any():
        lb = max(lb, int(np.max(-(-L_E[has] // plan.deg_E[has]))))
    single_P = plan.deg_E[plan.e_P] == 1
    if single_P.any():
        forced_R = np.bincount(plan.r_P[single_P], L_E[plan.e_P[single_P]], minlength=plan.N)
        lb = max(lb, int(forced_R.max()))
    return lb


def _local_P(c_QE: np.ndarray, plan: _Plan) -> np.ndarray:
    return c_QE.reshape(-1)[plan.qe_P]


def _round(plan: _Plan, L_E: np.ndarray, x_P: np.ndarray) -> np.ndarray:
    """Integer amounts with the same per-expert sums: floors plus the largest remainders."""
    fl_P = np.floor(x_P).astype(np.int64)
    rem_E = L_E - np.bincount(plan.e_P, fl_P, minlength=plan.E).astype(np.int64)
    frac_P = x_P - fl_P
    # Stable sorts (ties stay in pair order): by remainder, then by expert.
    order = np.argsort(-frac_P, kind="stable")
    order = order[np.argsort(plan.e_small_P[order], kind="stable")]
    rank_in_seg = np.empty_like(order)
    rank_in_seg[order] = np.arange(order.size) - plan.start_E[plan.e_P[order]]
    out = fl_P + (rank_in_seg < rem_E[plan.e_P])
    return out


def _repair(plan: _Plan, x_P: np.ndarray, target: int, budget: int) -> np.ndarray:
    """Move tokens off ranks above target to replicas on less loaded ranks (integer rounding).

    Rounding leaves at most a few tokens over target, so this usually returns at once; the pairs
    of each rank are only indexed when some rank is over.
    """
    y_R = np.bincount(plan.r_P, x_P, minlength=plan.N).astype(np.int64)
    if y_R.size == 0 or int(y_R.max()) <= target:
        return x_P
    by_rank = np.argsort(plan.r_P, kind="stable")
    first_R = np.searchsorted(plan.r_P[by_rank], np.arange(plan.N + 1))
    start, deg = plan.start_E, plan.deg_E
    for _ in range(budget):
        r = int(np.argmax(y_R))
        if y_R[r] <= target:
            break
        best = None
        for p in by_rank[first_R[r] : first_R[r + 1]].tolist():
            if x_P[p] <= 0:
                continue
            e = int(plan.e_P[p])
            sib = np.arange(start[e], start[e] + deg[e])
            ys = y_R[plan.r_P[sib]]
            j = int(np.argmin(ys))
            if ys[j] <= y_R[r] - 2 and (best is None or ys[j] < best[0]):
                best = (int(ys[j]), p, int(sib[j]))
        if best is None:
            break
        _, p, q = best
        move = min(int(x_P[p]), (int(y_R[r]) - best[0]) // 2, int(y_R[r]) - target)
        move = max(move, 1)
        x_P[p] -= move
        x_P[q] += move
        y_R[r] -= move
        y_R[plan.r_P[q]] += move
    return x_P


def _level_bound(plan: _Plan, L_E: np.ndarray, y_R: np.ndarray) -> int:
    """A lower bound on the optimum from the current loads: the best level set of y_R.

    For any rank set T, the tokens of experts held only inside T must land in T, so the max is at
    least ceil(confined / |T|). T runs over the heaviest m ranks of y_R (ties by rank id), m = 1..N;
    near the optimum the heaviest level set is the one that binds, so the bound is tight there.
    """
    order = np.argsort(-y_R, kind="stable")
    pos_R = np.empty_like(order)
    pos_R[order] = np.arange(order.size)
    held = plan.start_E[plan.deg_E > 0]
    m_H = np.maximum.reduceat(pos_R[plan.r_P], held)  # last position among the expert's ranks
    conf = np.cumsum(np.bincount(m_H, L_E[plan.deg_E > 0], minlength=plan.N)).astype(np.int64)
    size = np.arange(1, plan.N + 1)
    return int(((conf + size - 1) // size).max())


def _amounts_fast(c_QE: np.ndarray, plan: _Plan, L_E: np.ndarray) -> np.ndarray:
    """Proportional rank scaling with momentum from the local-first assignment, then rounding.

    x_P = L_e * prior_P * w_r / sum over e's pairs of prior * w, where prior_P keeps each
    source's tokens on its own rank and spreads the rest evenly. Each round multiplies every
    rank's weight by g_r = sqrt(g_r' / y_r) / y_r (g_r' the previous round's factor, y_r in units
    of the lower bound): plain scaling (divide by the load) with the load's weight 1.5 and half of
    the previous step as momentum, which reaches 1% of the optimum in about a third of the rounds.
    Experts shift toward lighter ranks; a rank loaded only by what it alone can hold sinks to
    weight ~0. The best round is kept. Every _FAST_CHECK_EVERY rounds from _FAST_FIRST_CHECK on, the heaviest level sets of
    the loads certify a lower bound; the rounds stop once the best max is within _FAST_TOL of it,
    or after _FAST_MAX_ITERS. Only IEEE +-*/, sqrt and order-fixed sums (bincount, cumsum) are
    used, so the result is bit-identical on every rank.
    """
    e_P, r_P, E, N = plan.e_P, plan.r_P, plan.E, plan.N
    if e_P.size == 0:
        return np.zeros(0, dtype=np.int64)
    local_P = _local_P(c_QE, plan).astype(np.float64)
    L_f = L_E.astype(np.float64)
    rest_E = L_f - np.bincount(e_P, local_P, minlength=E)
    deg_f = np.maximum(plan.deg_E, 1).astype(np.float64)
    prior_P = local_P + rest_E[e_P] / deg_f[e_P] + 1e-6 * (1.0 + L_f[e_P])
    lb = _lower_bound(plan, L_E)
    unit = 1.0 / max(lb, 1)
    w_R = np.ones(N)
    g_R = np.ones(N)
    a_P = np.empty_like(prior_P)
    best_hi, best_x = np.inf, None
    all_held = plan.held_H is None
    for it in range(_FAST_MAX_ITERS):
        w_R.take(r_P, out=a_P)  # methods and ufuncs: no Python wrappers in the hot loop
        a_P *= prior_P
        if all_held:  # every expert has a pair: no empty denominators
            x_P = (L_f / np.add.reduceat(a_P, plan.start_E)).take(e_P)
        else:
            x_P = (L_f / np.maximum(np.bincount(e_P, a_P, minlength=E), 1e-300)).take(e_P)
        x_P *= a_P
        y_R = np.bincount(r_P, x_P, minlength=N)
        hi = float(np.maximum.reduce(y_R))
        if hi < best_hi:
            best_hi, best_x = hi, x_P
            if best_hi <= lb * (1.0 + _FAST_TOL) + 0.5:
                break
            if it >= _FAST_FIRST_CHECK and it % _FAST_CHECK_EVERY == _FAST_CHECK_EVERY - 1:
                lb = max(lb, _level_bound(plan, L_E, y_R))
                if best_hi <= lb * (1.0 + _FAST_TOL) + 0.5:
                    break
        y_R *= unit
        y_R += 1e-12
        g_R /= y_R
        np.sqrt(g_R, out=g_R)
        g_R /= y_R
        w_R *= g_R
        if it % 8 == 7:  # keep the weights in range
            w_R /= np.maximum.reduce(w_R)
            np.maximum(w_R, 1e-250, out=w_R)
            g_R /= np.maximum.reduce(g_R)
    target = max(lb, int(np.ceil(best_hi - 1e-6)))
    x_int = _round(plan, L_E, best_x)
    return _repair(plan, x_int, target, budget=4 * N + 16)


class _Dinic:
    """Max flow on source -> experts -> ranks -> sink, integer capacities."""

    def __init__(self, n: int):
        self.n = n
        self.head: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[int] = []

    def add(self, u: int, v: int, cap: int, flow: int = 0) -> int:
        self.head[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(cap - flow)
        self.head[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(flow)
        return len(self.to) - 2

    def _levels(self, s: int, t: int) -> list[int] | None:
        level = [-1] * self.n
        level[s] = 0
        dq = deque([s])
        while dq:
            u = dq.popleft()
            for i in self.head[u]:
                v = self.to[i]
                if self.cap[i] > 0 and level[v] < 0:
                    level[v] = level[u] + 1
                    dq.append(v)
        return level if level[t] >= 0 else None

    def max_flow(self, s: int, t: int) -> int:
        flow = 0
        to, cap, head = self.to, self.cap, self.head
        while (level := self._levels(s, t)) is not None:
            it = [0] * self.n
            while True:
                # Iterative DFS for one augmenting path in the level graph.
                path: list[int] = []
                u = s
                while u != t:
                    advanced = False
                    while it[u] < len(head[u]):
                        i = head[u][it[u]]
                        v = to[i]
                        if cap[i] > 0 and level[v] == level[u] + 1:
                            path.append(i)
                            u = v
                            advanced = True
                            break
                        it[u] += 1
                    if not advanced:
                        if u == s:
                            break
                        level[u] = -1  # dead end: prune
                        i = path.pop()
                        u = to[i ^ 1]
                        it[u] += 1
                if u != t:
                    break
                push = min(cap[i] for i in path)
                for i in path:
                    cap[i] -= push
                    cap[i ^ 1] += push
                flow += push
        return flow


def _flow_at_cap(plan: _Plan, L_E: np.ndarray, local_P: np.ndarray, cap: int):
    """Route every token with no rank above cap; return amounts x_P or None if impossible."""
    E, N = plan.E, plan.N
    s, t = 0, E + N + 1
    g = _Dinic(E + N + 2)
    # Start from a flow that keeps local tokens local while the rank has room (pair order).
    pre_P = np.zeros_like(local_P)
    room_R = np.full(N, cap, dtype=np.int64)
    for p in np.argsort(plan.r_P, kind="stable").tolist():
        r = int(plan.r_P[p])
        take = min(int(local_P[p]), int(room_R[r]))
        pre_P[p] = take
        room_R[r] -= take
    pre_E = np.bincount(plan.e_P, pre_P, minlength=E).astype(np.int64)
    for e in range(E):
        if L_E[e] > 0:
            g.add(s, 1 + e, int(L_E[e]), int(pre_E[e]))
    edge_P = [
        g.add(1 + int(plan.e_P[p]), 1 + E + int(plan.r_P[p]), int(L_E[plan.e_P[p]]), int(pre_P[p]))
        for p in range(plan.e_P.size)
    ]
    for r in range(N):
        g.add(1 + E + r, t, cap, cap - int(room_R[r]))
    need = int(L_E.sum()) - int(pre_P.sum())
    if g.max_flow(s, t) != need:
        return None
    return np.array([g.cap[i ^ 1] for i in edge_P], dtype=np.int64)


def _amounts_exact(c_QE: np.ndarray, plan: _Plan, L_E: np.ndarray) -> np.ndarray:
    local_P = _local_P(c_QE, plan)
    x_hi = _amounts_fast(c_QE, plan, L_E)
    hi = int(np.bincount(plan.r_P, x_hi, minlength=plan.N).max()) if x_hi.size else 0
    lo = _lower_bound(plan, L_E)
    best = _flow_at_cap(plan, L_E, local_P, hi)
    if best is None:  # fast's cap is feasible by construction; guard regardless
        hi = int(L_E.sum())
        best = _flow_at_cap(plan, L_E, local_P, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        x = _flow_at_cap(plan, L_E, local_P, mid)
        if x is None:
            lo = mid + 1
        else:
            hi, best = mid, x
    return best


# ---------------------------------------------------------------- stage 2: routing


def _slot_demand(plan: _Plan, x_P: np.ndarray) -> np.ndarray:
    """A rank's amount of an expert spread evenly over its slots of it, earlier slots first."""
    x_K = x_P[plan.pair_K]
    m_K = plan.mult_K
    return x_K // m_K + (plan.idx_K < x_K % m_K)


def _merge(sa_M: np.ndarray, da_D: np.ndarray, last_M: np.ndarray):
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


def _within(groups: np.ndarray, a: np.ndarray, first_G: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum of a inside each run of equal (sorted) group ids."""
    cs = np.cumsum(a)
    cs -= a
    return cs - cs[first_G][groups]


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


def _transposed(a_M: np.ndarray, H: int, N: int) -> np.ndarray:
    """a_M viewed [H, N], transposed to a C-ordered [N, H] and flattened (exact, a copy)."""
    out = torch.empty((N, H), dtype=torch.int64)
    out.copy_(torch.from_numpy(a_M.reshape(H, N)).t())
    return out.numpy().reshape(-1)


def _last_tier(sup_HQ: np.ndarray, da_D: np.ndarray, plan: _Plan, flat_index: bool = True):
    """_merge for the last tier with scratch buffers: the pieces of both output forms.

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


def _merge_last(sup_HQ: np.ndarray, da_D: np.ndarray, plan: _Plan, flat: np.ndarray) -> None:
    """The last tier written into flat (zeros) in place; (source, slot) targets are distinct."""
    tier = _last_tier(sup_HQ, da_D, plan)
    if tier is None:
        return
    amt, idx, i_X, j_X, amt_X, _ = tier
    H, N = sup_HQ.shape
    # Scatter source-major: expert-major targets walk down columns 8*K bytes apart and miss the
    # cache on every write, row by row they stay within a row (about 4x faster, transposes
    # included; torch's blocked transpose is the fastest at hand).
    flat[_transposed(idx, H, N)] = _transposed(amt, H, N)
    flat[plan.qK_Q[i_X % N] + plan.d_k[j_X]] += amt_X


def _sparse_last(sup_HQ: np.ndarray, da_D: np.ndarray, plan: _Plan):
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


def _route(c_QE: np.ndarray, plan: _Plan, demand_K: np.ndarray, ranks_per_node: int):
    """flow_QK (dense int64 [N, K] tensor) from per-slot demands; see _tiers."""
    pieces, sup_HQ, da = _tiers(c_QE, plan, demand_K, ranks_per_node)
    N, K = plan.N, plan.K
    flat = np.zeros(N * K, dtype=np.int64)
    _merge_last(sup_HQ, da, plan, flat)
    for idx, amt in pieces:  # (source, slot) targets are distinct within a tier
        flat[idx] += amt
    return torch.from_numpy(flat.reshape(N, K))


def _route_sparse(c_QE: np.ndarray, plan: _Plan, demand_K: np.ndarray, ranks_per_node: int):
    """_route's nonzero entries: (q_F, k_F, amount_F), each (source, slot) once, tier by tier.

    Tiers never overlap: after the local tier either a source's tokens of an expert or its own
    slots' demand for it are exhausted, and likewise per (expert, node) after the node tier; so a
    later tier never sends a source's tokens to its own rank, nor (with the node tier) to its
    node. That is checked on every call and overlapping pieces are summed regardless, so this is
    the dense flow's support and values by construction.
    """
    N, K, S = plan.N, plan.K, plan.S
    pieces, sup_HQ, da = _tiers(c_QE, plan, demand_K, ranks_per_node)
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


def _ranges(lo_G: np.ndarray, hi_G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, i) for every i in range(lo_G[g], hi_G[g]), segment by segment (empty ones skipped)."""
    n_G = np.maximum(hi_G - lo_G, 0)
    total = int(n_G.sum())
    g = np.repeat(np.arange(n_G.size), n_G)
    return g, np.arange(total) - (np.cumsum(n_G) - n_G - lo_G)[g]


def _route_rank(c_QE: np.ndarray, plan: _Plan, demand_K: np.ndarray, ranks_per_node: int, r: int):
    """Rank r's row and slot columns of _route's flow, without the dense [N, K] matrix.

    Returns (send_K, recv_QS): flow_QK[r] and flow_QK[:, r*S:(r+1)*S]. The small tiers' pieces
    are filtered. The last tier's pieces are the overlaps of intervals laid end to end (supplies
    (held expert, source) in expert-major order, demands in (expert, slot) order), which is
    what the north-west corner merge of _route computes: supply i gives demand j the length of
    their overlap. Only r's supplies and the supplies of r's slots' experts are placed on that
    line, from per-expert offsets and prefix sums over sources, never the whole [H, N] layout.
    """
    N, K, S = plan.N, plan.K, plan.S
    pieces, sup_QE, da = _tiers(c_QE, plan, demand_K, ranks_per_node, True, r)
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


class _NodeGroups(NamedTuple):
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


def _node_groups(plan: _Plan, rpn: int) -> _NodeGroups:
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
    out = _NodeGroups(
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


class _Tiers(NamedTuple):
    """The amounts of the local and node tiers (see _tier_amounts); pieces come from them.

    take_D: tokens the local tier gives each demand (from its own rank); node: (use_GT, use_D),
    tokens the node tier takes from each of its supplies (_NodeGroups order) and gives each
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


def _tier_amounts(
    c_QE: np.ndarray, plan: _Plan, demand_K: np.ndarray, ranks_per_node: int
) -> _Tiers:
    """How many tokens the local tier and the node tier route, per supply and per demand.

    Demands are slots in (expert, slot) order and supplies (expert, source rank). Each tier
    matches the north-west corner within its groups: (expert, rank) pairs for the local tier,
    (expert, node) for the node tier, experts for the last. A tier takes the matched prefix of
    every group, so the matched supplies and demands have equal totals group by group and one
    end-to-end merge over the whole tier gives its pieces. Only the supplies the small tiers
    touch are read (a node's ranks of the experts it holds): no [N, E] array is made.
    """
    d_pair = plan.d_pair
    da = demand_K[plan.d_k].astype(np.int64)
    # Local: the pair (e, r)'s local tokens counts[r, e] fill r's own slots of e in slot order.
    take = np.clip(_local_P(c_QE, plan)[d_pair] - _within(d_pair, da, plan.d_first_P), 0, da)
    da -= take
    took_P = np.add.reduceat(take, plan.d_first_P)
    rpn = ranks_per_node
    if not (rpn and 0 < rpn < plan.N):
        return _Tiers(take, None, plan.r_P, plan.qe_P, plan.hq_P, took_P, da)
    # Same node: groups (expert, node) that hold a slot; supplies are the node's ranks, less what
    # the local tier took from them.
    g = _node_groups(plan, rpn)
    cut = np.append(took_P, 0)[g.pair_GT]
    sa_GT = c_QE.reshape(-1)[g.qe_GT] - cut
    dtot_G = np.add.reduceat(da, g.first_G)
    m_G = np.minimum(np.add.reduceat(sa_GT, g.sfirst_G), dtot_G)
    use_GT = np.clip(m_G[g.g_GT] - _within(g.g_GT, sa_GT, g.sfirst_G), 0, sa_GT)
    use_D = np.clip(m_G[g.gid_D] - _within(g.gid_D, da, g.first_G), 0, da)
    da -= use_D
    cut += use_GT
    return _Tiers(take, (use_GT, use_D), g.q_GT, g.qe_GT, g.hq_GT, cut, da)


def _node_pieces(plan: _Plan, rpn: int, node: tuple[np.ndarray, np.ndarray], rank=None):
    """The node tier's pieces (q, j, amount): source rank q gives demand j that many tokens.

    With rank, only the groups holding that rank's tokens or slots (every piece from or to the
    rank): whole groups, whose totals agree.
    """
    g = _node_groups(plan, rpn)
    use_GT, use_D = node
    if rank is None:
        i, j, amt = _merge(use_GT, use_D, g.last_G[g.g_GT])
        return g.q_GT[i], j, amt
    sel_G = g.q0_G == (rank // rpn) * rpn
    sel_G[g.gid_D[plan.dpos_K[rank * plan.S : (rank + 1) * plan.S]]] = True
    iS, jD = np.flatnonzero(sel_G[g.g_GT]), np.flatnonzero(sel_G[g.gid_D])
    last_sel_G = np.zeros(g.first_G.size, dtype=np.int64)
    last_sel_G[sel_G] = np.cumsum((g.last_G - g.first_G + 1)[sel_G]) - 1
    i, j, amt = _merge(use_GT[iS], use_D[jD], last_sel_G[g.g_GT[iS]])
    return g.q_GT[iS[i]], jD[j], amt


def _supply_left(c_QE: np.ndarray, plan: _Plan, t: _Tiers, source_major: bool) -> np.ndarray:
    """What the small tiers left of every supply, a fresh array: the counts' layout sup_QE
    [N, E] (source_major), else expert-major over the held experts, sup_HQ [H, N]."""
    if source_major:
        sup = c_QE.copy()
        sup.reshape(-1)[t.cut_qe] -= t.cut_C
        return sup
    N, E = plan.N, plan.E
    if plan.held_H is None:
        sup = _transposed(c_QE.reshape(-1), N, E).reshape(E, N)
    else:
        sup = np.ascontiguousarray(c_QE.T[plan.held_H])
    sup.reshape(-1)[t.cut_hq] -= t.cut_C
    return sup


def _check_routed(supply_left: int, da_D: np.ndarray) -> None:
    """The last tier's supplies and demands must have the same total."""
    if supply_left != int(da_D.sum()):
        raise RuntimeError("token split left tokens unrouted; this is a bug in swiftmoe.split")


def _tiers(
    c_QE: np.ndarray,
    plan: _Plan,
    demand_K: np.ndarray,
    ranks_per_node: int,
    source_major: bool = False,
    rank: int | None = None,
):
    """Routing from per-slot demands: local slots first, then same node, then any, in order.

    The small tiers' amounts are _tier_amounts'; the last tier matches what is left expert by
    expert in fixed order (per-expert totals agree, so one merge over it).

    Returns (pieces, sup, da): the small tiers' (flat index q*K + k, amount) pieces, what is left
    of each supply, and of each demand (in (expert, slot) order) for the last tier. sup is
    expert-major over the held experts, sup_HQ [H, N], or with source_major the counts' own
    layout sup_QE [N, E] (no transposed copy). With rank, the node tier's pieces are only those
    of the groups holding that rank's tokens or slots (every piece from or to the rank).
    """
    t = _tier_amounts(c_QE, plan, demand_K, ranks_per_node)
    K = plan.K
    pieces = [(plan.d_r * K + plan.d_k, t.take_D)]
    if t.node is not None:
        q, j, amt = _node_pieces(plan, ranks_per_node, t.node, rank)
        pieces.append((q * K + plan.d_k[j], amt))
    sup = _supply_left(c_QE, plan, t, source_major)
    _check_routed(int(sup.sum()), t.da_D)
    return pieces, sup, t.da_D


# ---------------------------------------------------------------- public API


def split_tokens(
    counts_QE,
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
) -> torch.Tensor:
    """Split each expert's tokens over its slots so the most loaded rank is as light as possible.

    Args:
        counts_QE: int64 [Q=N, E], tokens source rank q routes to expert e this iteration.
        slots: the plan, slots_K (len N*S) of expert ids, list or integer tensor.
        slots_per_rank: S.
        ranks_per_node: ranks per node for the same-node preference; 0 turns it off.
        method: "exact" (binary search on the rank cap with a max-flow check), "fast" (proportional
            rank scaling, within 2% of exact), or "auto" (= "fast").

    Returns:
        flow_QK: int64 [N, N*S], tokens source rank q sends to slot k. For every q and e the
        slots of e receive exactly counts_QE[q, e] of q's tokens and other slots none of them.
        Deterministic: the same inputs give the same flow on every rank.

    Raises:
        ValueError: a malformed count matrix or plan, an expert with tokens but no slot, or an
        unknown method; the message names the field and the fix.
    """
    return _route(*_min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method))


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
    return _route_sparse(*_min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method))


class SplitTraffic:
    """Per-rank traffic of a split, summed from its tiers without listing its pieces.

    Ranks r and q share a node when r // ranks_per_node == q // ranks_per_node (every rank shares
    one node when ranks_per_node is 0 or >= N). A source's tokens for its own slots do not
    travel. Fields (int64): x_K tokens each slot receives; si_Q / se_Q tokens each source sends
    to other ranks of its node / to other nodes; ri_R / re_R the same received per rank. They
    equal the sums over split_tokens_sparse's pieces. ``sent_weighted(w_R)`` gives (si, se) with
    every piece weighted by w_R of its destination rank (float64), as the same sums would; it
    needs ``weighted`` (split_traffic's argument).

    Sums, not pieces: the local tier keeps its tokens on their rank. After it, a (expert, rank)
    pair has either no tokens left or no slot demand left, so the node tier sends none of a
    source's tokens to its own rank: its traffic is the totals of its supplies and demands. After
    the node tier the same holds per (expert, node), so the last tier's pieces all leave their
    source's node (or, on one node, their source's rank), and its traffic is what is left of each
    supply and demand. No [N, E] array is made, except for ``weighted``.
    """

    def __init__(self, c_QE, plan, demand_K, ranks_per_node: int, weighted: bool) -> None:
        N = plan.N
        self._plan, self.N = plan, N
        self.nodes = 0 < ranks_per_node < N
        t = _tier_amounts(c_QE, plan, demand_K, ranks_per_node)
        self.x_K = demand_K.astype(np.int64)
        if t.node is None:
            self.si_Q = np.zeros(N, dtype=np.int64)
            self.ri_R = np.zeros(N, dtype=np.int64)
        else:
            use_GT, use_D = t.node
            self.si_Q = _sum_by(_node_groups(plan, ranks_per_node).q_GT, use_GT, N)
            self.ri_R = _sum_by(plan.d_r, use_D, N)
        # The last tier: every remaining token leaves its node (its rank, on one node).
        left_Q = c_QE.sum(axis=1) - _sum_by(t.cut_q, t.cut_C, N)
        left_R = _sum_by(plan.d_r, t.da_D, N)
        _check_routed(int(left_Q.sum()), t.da_D)
        if self.nodes:
            self.se_Q, self.re_R = left_Q, left_R
        else:
            self.si_Q += left_Q
            self.ri_R += left_R
            self.se_Q = np.zeros(N, dtype=np.int64)
            self.re_R = np.zeros(N, dtype=np.int64)
        self._da = t.da_D
        self._weighting = self._weighting_of(c_QE, t, ranks_per_node) if weighted else None

    def _weighting_of(self, c_QE, t: _Tiers, ranks_per_node: int):
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
            q, j, amt = _node_pieces(plan, ranks_per_node, t.node)
            r = plan.d_r[j]
            away = q != r
            small = (q[away], r[away], amt[away])
        sup_HQ = _supply_left(c_QE, plan, t, source_major=False)
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
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
    weighted: bool = True,
) -> SplitTraffic:
    """split_tokens' flow as per-rank traffic sums (SplitTraffic), without the flow or its pieces.

    Same arguments and checks as split_tokens, plus ``weighted``: prepare
    SplitTraffic.sent_weighted (one pass over the [N, E] supplies left for the last tier); pass
    False when only the sums are wanted. What a cost model at cluster scale needs: linear in
    ranks x experts, no merge of the pieces.
    """
    c_QE, plan, demand_K, rpn = _min_max_demand(
        counts_QE, slots, slots_per_rank, ranks_per_node, method
    )
    return SplitTraffic(c_QE, plan, demand_K, rpn, weighted)


def _min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method):
    """Checked inputs and stage 1 of the min-max split: (c_QE, plan, demand_K, ranks_per_node)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if not is_int(ranks_per_node, 0):
        raise ValueError(
            f"ranks_per_node must be an integer >= 0 (0: no nodes), got {ranks_per_node!r}"
        )
    c_QE, plan, L_E = _prepare(counts_QE, slots, slots_per_rank)
    if method == "exact":
        x_P = _amounts_exact(c_QE, plan, L_E)
    else:
        x_P = _amounts_fast(c_QE, plan, L_E)
    return c_QE, plan, _slot_demand(plan, x_P), ranks_per_node


def even_split_tokens(
    counts_QE, slots: Sequence[int] | torch.Tensor, slots_per_rank: int
) -> torch.Tensor:
    """The paper's split: each expert's total tokens divided evenly over its slots.

    counts_QE int64 [N, E], slots_K (len N*S) -> flow_QK int64 [N, N*S]. An expert's remainder
    tokens go one each to its first slots in slot order; sources are matched to slots local first,
    then in a fixed order.
    """
    c_QE, plan, L_E = _prepare(counts_QE, slots, slots_per_rank)
    return _route(c_QE, plan, _even_demand(plan, L_E), 0)


def _even_demand(plan: _Plan, L_E: np.ndarray) -> np.ndarray:
    """demand_K of the even split: L_E[e] over e's slots, remainders to its first slots."""
    slots_K = plan.slots_K
    reps_E = np.bincount(slots_K, minlength=plan.E)
    first_E = np.concatenate(([0], np.cumsum(reps_E)[:-1]))
    idx_K = plan.dpos_K - first_E[slots_K]  # slot k is the idx_K-th of its expert's, in order
    r_K = np.maximum(reps_E[slots_K], 1)
    return L_E[slots_K] // r_K + (idx_K < L_E[slots_K] % r_K)


class RankSplit(NamedTuple):
    """One rank's part of a split (int64 CPU tensors).

    send_K [N*S]: tokens this rank sends to each slot (flow_QK[rank]); recv_QS [N, S]: tokens each
    source rank sends to this rank's slots (flow_QK[:, rank*S:(rank+1)*S]); load_R [N]: tokens
    every rank's slots receive (flow_QK's column sums, summed per rank).
    """

    send_K: torch.Tensor
    recv_QS: torch.Tensor
    load_R: torch.Tensor


def _demand(counts_QE, slots, slots_per_rank, ranks_per_node, method):
    """(c_QE, plan, demand_K, ranks_per_node) of any method, "even" included."""
    if method not in _RANK_METHODS:
        raise ValueError(f"method must be one of {', '.join(_RANK_METHODS)}, got {method!r}")
    if method != "even":
        return _min_max_demand(counts_QE, slots, slots_per_rank, ranks_per_node, method)
    c_QE, plan, L_E = _prepare(counts_QE, slots, slots_per_rank)
    return c_QE, plan, _even_demand(plan, L_E), 0  # the paper's split has no node preference


def _load_R(plan: _Plan, demand_K: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(demand_K.reshape(plan.N, plan.S).sum(axis=1).astype(np.int64))


def split_tokens_for_rank(
    counts_QE,
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
) -> RankSplit:
    """What one rank needs of a split, without the dense [N, N*S] flow: its row and columns.

    Same arguments and checks as split_tokens, plus ``rank`` (0..N-1); ``method`` may also be
    "even" (even_split_tokens' split). The result equals split_tokens' (or even_split_tokens')
    flow_QK restricted to the rank, and costs a fraction of it at scale: the routing touches the
    rank's supplies and demands only, after the same per-expert prefix sums.
    """
    c_QE, plan, demand_K, rpn = _demand(counts_QE, slots, slots_per_rank, ranks_per_node, method)
    if not is_int(rank, 0, plan.N - 1):
        raise ValueError(f"rank must be an integer in 0..{plan.N - 1}, got {rank!r}")
    send_K, recv_QS = _route_rank(c_QE, plan, demand_K, rpn, rank)
    return RankSplit(torch.from_numpy(send_K), torch.from_numpy(recv_QS), _load_R(plan, demand_K))


def split_rank_loads(
    counts_QE,
    slots: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    ranks_per_node: int = 0,
    method: str = "auto",
) -> torch.Tensor:
    """Tokens each rank's slots receive under the split (int64 [N]); no routing at all.

    Equals rank_load_from_flow(split_tokens(...)) (or of even_split_tokens for "even").
    """
    _, plan, demand_K, _ = _demand(counts_QE, slots, slots_per_rank, ranks_per_node, method)
    return _load_R(plan, demand_K)


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
