"""Stage 1 of the min-max split, fast: tokens each (expert, rank) pair processes, x_P.

"fast" starts from the all-local assignment and runs proportional rank scaling with momentum
(every rank's weight divided by its load, experts split over their ranks in proportion to the
weights, all experts at once) until the max is within 0.75% of a lower bound certified from the
loads' level sets, then integer rounding and a repair that moves tokens off ranks above the
target. The lower bounds here also start the exact search (``exact.py``).

Shape legend (see ``swiftmoe.engine.split``): Q source ranks, E experts, N ranks, R = N,
P (expert, rank) pairs of the plan.
"""

from __future__ import annotations

import numpy as np

from swiftmoe.engine.split.plan_index import PlanIndex, local_tokens

__all__ = ["FAST_TOL", "amounts_fast", "level_bound", "lower_bound", "repair", "round_amounts"]

_FAST_MAX_ITERS = 32  # scaling rounds at most
_FAST_FIRST_CHECK = 7  # the first round that certifies a level-set lower bound (when still needed)
_FAST_CHECK_EVERY = 4  # rounds between level-set lower bounds
FAST_TOL = 7.5e-3  # stop once the best max is this close to a certified lower bound


def lower_bound(plan: PlanIndex, L_E: np.ndarray) -> int:
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


def round_amounts(plan: PlanIndex, L_E: np.ndarray, x_P: np.ndarray) -> np.ndarray:
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


def repair(plan: PlanIndex, x_P: np.ndarray, target: int, budget: int) -> np.ndarray:
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


def level_bound(plan: PlanIndex, L_E: np.ndarray, y_R: np.ndarray) -> int:
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


def amounts_fast(c_QE: np.ndarray, plan: PlanIndex, L_E: np.ndarray) -> np.ndarray:
    """Proportional rank scaling with momentum from the local-first assignment, then rounding.

    x_P = L_e * prior_P * w_r / sum over e's pairs of prior * w, where prior_P keeps each
    source's tokens on its own rank and spreads the rest evenly. Each round multiplies every
    rank's weight by g_r = sqrt(g_r' / y_r) / y_r (g_r' the previous round's factor, y_r in units
    of the lower bound): plain scaling (divide by the load) with the load's weight 1.5 and half of
    the previous step as momentum, which reaches 1% of the optimum in about a third of the rounds.
    Experts shift toward lighter ranks; a rank loaded only by what it alone can hold sinks to
    weight ~0. The best round is kept. Every _FAST_CHECK_EVERY rounds from _FAST_FIRST_CHECK on, the heaviest level sets of
    the loads certify a lower bound; the rounds stop once the best max is within FAST_TOL of it,
    or after _FAST_MAX_ITERS. Only IEEE +-*/, sqrt and order-fixed sums (bincount, cumsum) are
    used, so the result is bit-identical on every rank.
    """
    e_P, r_P, E, N = plan.e_P, plan.r_P, plan.E, plan.N
    if e_P.size == 0:
        return np.zeros(0, dtype=np.int64)
    local_P = local_tokens(c_QE, plan).astype(np.float64)
    L_f = L_E.astype(np.float64)
    rest_E = L_f - np.bincount(e_P, local_P, minlength=E)
    deg_f = np.maximum(plan.deg_E, 1).astype(np.float64)
    prior_P = local_P + rest_E[e_P] / deg_f[e_P] + 1e-6 * (1.0 + L_f[e_P])
    lb = lower_bound(plan, L_E)
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
            if best_hi <= lb * (1.0 + FAST_TOL) + 0.5:
                break
            if it >= _FAST_FIRST_CHECK and it % _FAST_CHECK_EVERY == _FAST_CHECK_EVERY - 1:
                lb = max(lb, level_bound(plan, L_E, y_R))
                if best_hi <= lb * (1.0 + FAST_TOL) + 0.5:
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
    x_int = round_amounts(plan, L_E, best_x)
    return repair(plan, x_int, target, budget=4 * N + 16)
