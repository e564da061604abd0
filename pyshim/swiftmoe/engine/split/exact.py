"""Stage 1 of the min-max split, exact: binary search on the integer rank cap with a max-flow
check (Dinic on source -> expert -> rank -> sink), starting each check from a flow that keeps
local tokens local. What ``split_method="exact"`` runs; the fast method's cap bounds the search
from above.

Shape legend (see ``swiftmoe.engine.split``): E experts, N ranks, R = N, P (expert, rank)
pairs of the plan.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from swiftmoe.engine.split.amounts import amounts_fast, lower_bound
from swiftmoe.engine.split.plan_index import PlanIndex, local_tokens

__all__ = ["amounts_exact"]


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


def _flow_at_cap(plan: PlanIndex, L_E: np.ndarray, local_P: np.ndarray, cap: int):
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


def amounts_exact(c_QE: np.ndarray, plan: PlanIndex, L_E: np.ndarray) -> np.ndarray:
    local_P = local_tokens(c_QE, plan)
    x_hi = amounts_fast(c_QE, plan, L_E)
    hi = int(np.bincount(plan.r_P, x_hi, minlength=plan.N).max()) if x_hi.size else 0
    lo = lower_bound(plan, L_E)
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
