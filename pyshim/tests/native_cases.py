"""What the tests of the native code (test_native_route.py, test_native_split.py) share: random
skewed split cases and the cost parameters to price them. (The library they load is
conftest.py's lib_path and use_lib fixtures.)"""

from __future__ import annotations

import numpy as np

from swiftmoe.engine import costmodel as cm
from swiftmoe.planning import reference as planner

# --- cost parameters ------------------------------------------------------------------------

P_EXPERT = 3 * 2048 * 768


def cost_params(N, rpn, kind):
    """Realistic H200-like parameters, slow links (node-local amounts win), fast links between
    nodes, crawling links, tiny compute (nearly free next to the links, so the node-local
    amounts often win), fractional values (float products round), or unpriced terms (no flops,
    no bandwidths)."""
    base = dict(
        ranks=N,
        ranks_per_node=rpn,
        token_bytes=2 * 2048,
        expert_bytes=2 * P_EXPERT,
        flops_per_token=6 * P_EXPERT,
        flops_per_s=5.8e14,
        intra_bw=3e11,
        inter_bw=1.25e10,
    )
    change = {
        "slow": {},
        "fast": {"inter_bw": 5e10},
        "crawl": {"inter_bw": 1e6, "intra_bw": 1e8},
        "tiny": {"token_bytes": 3.0, "flops_per_token": 7.0, "flops_per_s": 1e6, "inter_bw": 2.5},
        "odd": {
            "token_bytes": 4096.7,
            "flops_per_token": 6.137 * P_EXPERT,
            "flops_per_s": 5.31e14,
            "intra_bw": 3.07e11,
            "inter_bw": 1.213e10,
        },
        "no_flops": {"flops_per_token": 0.0},
        "no_links": {"intra_bw": 0.0, "inter_bw": 0.0},
        "intra_only": {"inter_bw": 0.0},
    }[kind]
    return cm.CostParams(**{**base, **change})


COST_KINDS = ("slow", "fast", "crawl", "tiny", "odd", "no_flops", "no_links", "intra_only")


# --- split cases ----------------------------------------------------------------------------


def skewed_case(rng, hot: bool, *, hot_s_last: bool = False, pad: bool = False):
    """(c_QE, slots_K, S, rpn): skewed counts; every expert with tokens holds a slot, some idle
    ones none; with hot, one heavy expert on 9..N ranks (N in 10..40).

    hot_s_last: with hot, draw S after the hot expert's number of ranks rather than before it
    (each caller's order of draws, so each draws the cases it always drew). pad: sometimes (a
    quarter) add a padded expert id, the last, with no tokens and no slot."""
    if hot:
        N = int(rng.integers(10, 41))
        if hot_s_last:
            d = int(rng.integers(9, N + 1))
            S = int(rng.integers(1, 7))
        else:
            S = int(rng.integers(1, 7))
            d = int(rng.integers(9, N + 1))
    else:
        N, S, d = int(rng.integers(1, 41)), int(rng.integers(1, 7)), 0
    K = N * S
    E = int(rng.integers(1, 71))
    cap = K - d  # slots left for the other experts
    all_held = E - (1 if hot else 0) <= cap and rng.random() < 0.4
    n_act = int(rng.integers(1, min(E, cap + (1 if hot else 0)) + 1))
    active = rng.choice(E, n_act, replace=False)
    h = int(active[0])
    slots = np.full(K, -1, dtype=np.int64)
    if hot:
        for r in rng.choice(N, d, replace=False):
            slots[r * S + int(rng.integers(S))] = h
    free = np.flatnonzero(slots < 0)
    rng.shuffle(free)
    required = np.arange(E) if all_held else active
    if hot:
        required = required[required != h]
    slots[free[: required.size]] = required
    rest = free[required.size :]
    pool = active if rng.random() < 0.6 else np.arange(E)
    slots[rest] = rng.choice(pool, rest.size)
    # Zipf-like weights over the active experts, the hot one heaviest.
    w = 1.0 / np.arange(1, n_act + 1) ** rng.uniform(0.3, 2.5)
    w_E = np.zeros(E)
    w_E[active] = w
    if hot:
        w_E[h] = w.sum() * rng.uniform(0.5, 3.0)
    w_E /= w_E.sum()
    per_source = rng.integers(0, int(rng.choice([10, 300, 5000])) + 1, N)
    c = np.stack([rng.multinomial(int(t), w_E) for t in per_source]).astype(np.int64)
    if rng.random() < 0.3:  # tokens kept local: sources favour what their rank holds
        for r in range(N):
            c[r, slots[r * S : (r + 1) * S]] += rng.integers(0, 200)
    if pad and rng.random() < 0.25:  # a padded expert id: no tokens, no slot
        c = np.concatenate((c, np.zeros((N, 1), dtype=np.int64)), axis=1)
    rpn = int(rng.choice([0, 1, 2, 3, 4, 8, N, N + int(rng.integers(1, 5))]))
    return c, slots, S, rpn


# --- burst decisions ---------------------------------------------------------------------------

P_GPT_SMALL = 3 * 768 * 3072


def burst_case(rng):
    """A layer call the decision may see: a hot set (fixed, moved or sharp), a placement
    planned from the loads of this or an older hot set, a cluster and cost parameters."""
    N = int(rng.choice([2, 3, 4, 8, 12, 16, 24, 32]))
    E = int(rng.choice([4, 8, 16, 32, 64]))
    S = int(rng.integers(1, 7))
    while N * S < E:
        S += 1
    rpn = int(rng.choice([0, 2, 4, 8, 8, 16]))
    if rpn >= N:
        rpn = int(rng.choice([0, N]))
    p_E = rng.uniform(0.5, 1.5, E)
    hot = rng.choice(E, size=max(1, E // 12), replace=False)
    p_E[hot] *= E / len(hot) * rng.uniform(0.3, 1.5)
    tokens = int(rng.choice([64, 1024, 4096]))
    c = rng.multinomial(tokens * 2, p_E / p_E.sum(), size=N).astype(np.int64)
    if rng.random() < 0.2:
        c[:, rng.integers(0, E)] = 0  # an idle expert
    old = p_E[rng.permutation(E)] if rng.random() < 0.5 else p_E  # moved, or still
    slots = np.asarray(planner.plan_layer((old * 1000).tolist(), N, S), dtype=np.int64)
    inter = float(rng.choice([1.25e10, 5e10, 1e9, 0.0]))
    intra = float(rng.choice([3e11, 3e11, 2e9, 0.0]))
    flops = float(rng.choice([5.8e14, 5.8e14, 5e10, 0.0]))
    p = cm.CostParams(
        ranks=N,
        ranks_per_node=rpn,
        token_bytes=2 * 768,
        expert_bytes=2 * P_GPT_SMALL * float(rng.choice([1.0, 0.01])),
        flops_per_token=6 * P_GPT_SMALL,
        flops_per_s=flops,
        intra_bw=intra,
        inter_bw=inter,
    )
    B = int(rng.choice([0, 1, 1, 2, 3]))
    threshold = float(rng.choice([1.0, 1.05, 1.1, 1.5]))
    method = str(rng.choice(["fast", "auto"]))
    return c, slots, S, B, rpn, p, threshold, method


def counted(monkeypatch, module, name: str) -> list:
    """A list that gets an entry for every call of ``module.name`` during the test (the
    function still runs; monkeypatch puts the original back)."""
    calls: list = []
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return calls
