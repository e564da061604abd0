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
   runs proportional rank scaling (every rank's weight divided
   by its load, experts split over their ranks in proportion to the weights, all experts at
   once), then integer rounding and a repair that moves tokens off ranks above the target.
2. routing: each rank's amount is spread evenly over its slots of that expert, then sources are
   matched to slots local first, same node second, then the rest, in a fixed order.

Shape legend:
    Q  source ranks (Q = N: every rank sends)
    E  experts of the layer
    N  ranks;  R = N for per-rank vectors
    S  slots per rank;  K = N*S slots, slot k on rank k // S
    P  distinct (expert, rank) pairs of the plan, sorted by expert then rank
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["even_split_tokens", "rank_load_from_flow", "split_tokens"]

_METHODS = ("auto", "fast", "exact")
_FAST_MAX_ITERS = 40  # scaling rounds at most
_FAST_CHECK_EVERY = 8  # rounds between stall checks
_FAST_STALL = 1e-4  # a stall: the max fell by less than this fraction over the last check
_FAST_TOL = 2e-3  # stop once the max is this close to the lower bound


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
        arr = arr.astype(np.int64)
    if arr.ndim != 2:
        raise ValueError(
            f"counts_QE must be 2-D [source ranks, experts], got shape {tuple(arr.shape)}"
        )
    if arr.size and arr.min() < 0:
        q, e = np.argwhere(arr < 0)[0]
        raise ValueError(f"counts_QE[{q}, {e}] is {arr[q, e]}; token counts cannot be negative")
    return np.ascontiguousarray(arr)


def _slots(slots, slots_per_rank: int, num_ranks: int, num_experts: int) -> np.ndarray:
    if (
        isinstance(slots_per_rank, bool)
        or not isinstance(slots_per_rank, int)
        or slots_per_rank < 1
    ):
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
        self.r_P = key_P % N
        self.deg_E = np.bincount(self.e_P, minlength=E)
        self.start_E = np.concatenate(([0], np.cumsum(self.deg_E)[:-1]))


def _prepare(counts_QE, slots, slots_per_rank: int):
    c_QE = _counts(counts_QE)
    N, E = c_QE.shape
    if N < 1 or E < 1:
        raise ValueError(f"counts_QE must have at least one rank and one expert, got {c_QE.shape}")
    slots_K = _slots(slots, slots_per_rank, N, E)
    plan = _Plan(slots_K, N, slots_per_rank, E)
    L_E = c_QE.sum(axis=0)
    orphan = np.nonzero((plan.deg_E == 0) & (L_E > 0))[0]
    if orphan.size:
        e = int(orphan[0])
        raise ValueError(
            f"expert {e} has {int(L_E[e])} tokens but no slot in the plan; every expert needs a "
            "replica (validate the plan with swiftmoe.plan.validate_slots)"
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
    return c_QE[plan.r_P, plan.e_P]


def _round(plan: _Plan, L_E: np.ndarray, x_P: np.ndarray) -> np.ndarray:
    """Integer amounts with the same per-expert sums: floors plus the largest remainders."""
    fl_P = np.floor(x_P).astype(np.int64)
    rem_E = L_E - np.bincount(plan.e_P, fl_P, minlength=plan.E).astype(np.int64)
    frac_P = x_P - fl_P
    order = np.lexsort((np.arange(x_P.size), -frac_P, plan.e_P))
    rank_in_seg = np.empty_like(order)
    rank_in_seg[order] = np.arange(order.size) - plan.start_E[plan.e_P[order]]
    out = fl_P + (rank_in_seg < rem_E[plan.e_P])
    return out


def _repair(plan: _Plan, x_P: np.ndarray, target: int, budget: int) -> np.ndarray:
    """Move tokens off ranks above target to replicas on less loaded ranks (integer rounding)."""
    y_R = np.bincount(plan.r_P, x_P, minlength=plan.N).astype(np.int64)
    pairs_R: list[list[int]] = [[] for _ in range(plan.N)]
    for p, r in enumerate(plan.r_P.tolist()):
        pairs_R[r].append(p)
    start, deg = plan.start_E, plan.deg_E
    for _ in range(budget):
        r = int(np.argmax(y_R))
        if y_R[r] <= target:
            break
        best = None
        for p in pairs_R[r]:
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


def _amounts_fast(c_QE: np.ndarray, plan: _Plan, L_E: np.ndarray) -> np.ndarray:
    """Proportional rank scaling from the local-first assignment, then integer rounding.

    x_P = L_e * prior_P * w_r / sum over e's pairs of prior * w, where prior_P keeps each
    source's tokens on its own rank and spreads the rest evenly. Each round divides every rank's
    weight by its load, shifting shared experts toward lighter ranks; a rank loaded only by what
    it alone can hold sinks to weight ~0 and keeps just that. Stops at the lower bound, when the
    maximum stalls, or after _FAST_MAX_ITERS rounds. Only IEEE +-*/ is used, so the result is
    bit-identical on every rank.
    """
    e_P, r_P, E, N = plan.e_P, plan.r_P, plan.E, plan.N
    local_P = _local_P(c_QE, plan).astype(np.float64)
    L_f = L_E.astype(np.float64)
    rest_E = L_f - np.bincount(e_P, local_P, minlength=E)
    deg_f = np.maximum(plan.deg_E, 1).astype(np.float64)
    prior_P = local_P + rest_E[e_P] / deg_f[e_P] + 1e-6 * (1.0 + L_f[e_P])
    L_P = L_f[e_P]
    lb = _lower_bound(plan, L_E)
    stop = lb * (1.0 + _FAST_TOL) + 0.5
    w_R = np.ones(N)
    prev = np.inf
    x_P = None
    for it in range(_FAST_MAX_ITERS + 1):
        a_P = prior_P * w_R[r_P]
        den_E = np.bincount(e_P, a_P, minlength=E)
        x_P = L_P * a_P / den_E[e_P]
        y_R = np.bincount(r_P, x_P, minlength=N)
        hi = float(y_R.max())
        if hi <= stop:
            break
        if it % _FAST_CHECK_EVERY == 0:
            if prev - hi <= _FAST_STALL * hi:
                break
            prev = hi
        w_R = w_R / np.maximum(y_R, 1e-12)
        w_R = np.maximum(w_R / w_R.max(), 1e-250)
    target = max(lb, int(np.ceil(float(y_R.max()) - 1e-6)))
    x_int = _round(plan, L_E, x_P)
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
    k = np.arange(plan.K)
    p_K = plan.pair_K
    order = np.lexsort((k, p_K))
    first_P = np.concatenate(([0], np.cumsum(plan.mult_P)[:-1]))
    idx_K = np.empty(plan.K, dtype=np.int64)
    idx_K[order] = np.arange(plan.K) - first_P[p_K[order]]
    m_K = plan.mult_P[p_K]
    return x_P[p_K] // m_K + (idx_K < x_P[p_K] % m_K)


def _match(sg, sa, sid, dg, da, did, num_groups):
    """North-west-corner matching of supplies to demands within each group.

    sg/dg: group of each supply/demand item, nondecreasing; sa/da: amounts; sid/did: ids carried
    to the output. Within a group, supplies and demands are laid end to end in item order and
    matched where they overlap, up to the smaller total. Returns (supply id, demand id, amount)
    pieces and the leftover sa, da.
    """
    s_tot = np.bincount(sg, sa, minlength=num_groups).astype(np.int64)
    d_tot = np.bincount(dg, da, minlength=num_groups).astype(np.int64)
    m_G = np.minimum(s_tot, d_tot)
    off_G = np.cumsum(m_G) - m_G

    def intervals(g, a, tot):
        # [lo, hi) of each item on one axis where group g owns [off_G[g], off_G[g] + m_G[g]).
        end_G = np.cumsum(tot)
        cap = m_G[g]
        lo = np.cumsum(a) - a - (end_G - tot)[g]
        hi = np.minimum(lo + a, cap)
        lo = np.minimum(lo, cap)
        base = off_G[g]
        return lo + base, hi + base, a - (hi - lo)

    s_lo, s_hi, s_left = intervals(sg, sa, s_tot)
    d_lo, d_hi, d_left = intervals(dg, da, d_tot)
    s_keep = np.nonzero(s_hi > s_lo)[0]
    if s_keep.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, sa, da
    d_keep = np.nonzero(d_hi > d_lo)[0]
    s_lo, s_hi = s_lo[s_keep], s_hi[s_keep]
    dl, dh = d_lo[d_keep], d_hi[d_keep]
    j0 = np.searchsorted(dh, s_lo, side="right")
    n = np.searchsorted(dl, s_hi, side="left") - j0
    if int(n.max()) == 1:  # every supply within one demand: the common case
        i_rep, j = np.arange(s_keep.size), j0
    else:
        i_rep = np.repeat(np.arange(s_keep.size), n)
        j = np.repeat(j0 - np.cumsum(n) + n, n) + np.arange(i_rep.size)
    amt = np.minimum(s_hi[i_rep], dh[j]) - np.maximum(s_lo[i_rep], dl[j])
    return sid[s_keep[i_rep]], did[d_keep[j]], amt, s_left, d_left


def _route(c_QE: np.ndarray, plan: _Plan, demand_K: np.ndarray, ranks_per_node: int):
    """flow_QK from per-slot demands: local slots first, then same node, then any, in order.

    Supplies are (expert, source rank) items in expert-major order and demands are slots in
    (expert, slot) order, so every tier's group keys are already sorted and nothing is re-sorted.
    """
    N, E, K, S = plan.N, plan.E, plan.K, plan.S
    flat = np.zeros(N * K, dtype=np.int64)
    d_k = np.lexsort((np.arange(K), plan.slots_K)).astype(np.int64)
    d_e = plan.slots_K[d_k]
    d_r = d_k // S
    da = demand_K[d_k].astype(np.int64)

    # Local: the pair (e, r)'s local tokens counts[r, e] to r's own slots of e.
    local_P = c_QE[plan.r_P, plan.e_P]
    d_pair = plan.pair_K[d_k]  # nondecreasing: pairs are sorted by (e, r) like the demands
    q, k, amt, left_P, da = _match(
        np.arange(plan.r_P.size), local_P, plan.r_P, d_pair, da, d_k, plan.r_P.size
    )
    flat[q * K + k] += amt
    c_left = c_QE.copy()
    c_left[plan.r_P, plan.e_P] = left_P

    # Remaining supplies, expert-major, zeros dropped.
    sa = c_left.T.reshape(-1)
    keep = np.nonzero(sa)[0]
    sa = sa[keep]
    s_e = keep // N
    s_q = keep % N
    if ranks_per_node and 0 < ranks_per_node < N and sa.size:
        nodes = -(-N // ranks_per_node)
        q, k, amt, sa, da = _match(
            s_e * nodes + s_q // ranks_per_node,
            sa,
            s_q,
            d_e * nodes + d_r // ranks_per_node,
            da,
            d_k,
            E * nodes,
        )
        flat[q * K + k] += amt
    if sa.size:
        q, k, amt, sa, da = _match(s_e, sa, s_q, d_e, da, d_k, E)
        flat[q * K + k] += amt
    if sa.sum() != 0 or da.sum() != 0:
        raise RuntimeError("token split left tokens unrouted; this is a bug in swiftmoe.split")
    return torch.from_numpy(flat.reshape(N, K))


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
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if (
        isinstance(ranks_per_node, bool)
        or not isinstance(ranks_per_node, int)
        or ranks_per_node < 0
    ):
        raise ValueError(
            f"ranks_per_node must be an integer >= 0 (0: no nodes), got {ranks_per_node!r}"
        )
    c_QE, plan, L_E = _prepare(counts_QE, slots, slots_per_rank)
    if method == "exact":
        x_P = _amounts_exact(c_QE, plan, L_E)
    else:
        x_P = _amounts_fast(c_QE, plan, L_E)
    return _route(c_QE, plan, _slot_demand(plan, x_P), ranks_per_node)


def even_split_tokens(
    counts_QE, slots: Sequence[int] | torch.Tensor, slots_per_rank: int
) -> torch.Tensor:
    """The paper's split: each expert's total tokens divided evenly over its slots.

    counts_QE int64 [N, E], slots_K (len N*S) -> flow_QK int64 [N, N*S]. An expert's remainder
    tokens go one each to its first slots in slot order; sources are matched to slots local first,
    then in a fixed order.
    """
    c_QE, plan, L_E = _prepare(counts_QE, slots, slots_per_rank)
    slots_K = plan.slots_K
    reps_E = np.bincount(slots_K, minlength=plan.E)
    order = np.lexsort((np.arange(plan.K), slots_K))
    first_E = np.concatenate(([0], np.cumsum(reps_E)[:-1]))
    idx_K = np.empty(plan.K, dtype=np.int64)
    idx_K[order] = np.arange(plan.K) - first_E[slots_K[order]]
    r_K = np.maximum(reps_E[slots_K], 1)
    demand_K = L_E[slots_K] // r_K + (idx_K < L_E[slots_K] % r_K)
    return _route(c_QE, plan, demand_K, 0)


def rank_load_from_flow(flow_QK: torch.Tensor, slots_per_rank: int) -> torch.Tensor:
    """Tokens each rank processes: flow_QK int64 [Q, N*S] -> load_R int64 [N]."""
    if not isinstance(flow_QK, torch.Tensor) or flow_QK.dim() != 2:
        raise ValueError("flow_QK must be a 2-D tensor [source ranks, slots]")
    if (
        isinstance(slots_per_rank, bool)
        or not isinstance(slots_per_rank, int)
        or slots_per_rank < 1
    ):
        raise ValueError(f"slots_per_rank must be an integer >= 1, got {slots_per_rank!r}")
    K = flow_QK.shape[1]
    if K % slots_per_rank:
        raise ValueError(
            f"flow_QK has {K} slots, not a multiple of slots_per_rank={slots_per_rank}"
        )
    return flow_QK.sum(dim=0).reshape(K // slots_per_rank, slots_per_rank).sum(dim=1)
