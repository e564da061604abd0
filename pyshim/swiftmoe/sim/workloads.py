"""Synthetic workload classes for the simulator: routing whose skew holds, moves, bursts or idles.

Each class draws loads_LE per iteration, every layer from its own generator (so iterations come
out the same whether drawn at once or streamed), with each of ``tokens`` tokens picking
``top_k`` distinct experts (``swiftmoe.sim.trace``'s sampling without replacement):

* ``zipf``: Zipf-skewed popularity that drifts (``swiftmoe.sim.trace.synthetic_iterations``).
* ``fixed-hot``: a fixed hot set of ``hot_experts`` experts takes about ``hot_share`` of the
  selections (the rest share the remainder evenly).
* ``moving-hot``: the same, with a new hot set drawn every ``shift_every`` iterations.
* ``burst``: ``burst_every - 1`` ordinary iterations (a mild Zipf(0.5) skew over a fixed expert
  order), then one whose hot set, drawn afresh for each burst, takes ``hot_share``; repeating.
* ``half-idle``: half the experts (a fixed set) receive no tokens; the rest share them evenly.
* ``uniform``: every expert equally popular (the control).

"About ``hot_share``": a token picks distinct experts, so h hot experts can take at most h/top_k
of the selections; their popularity weight is calibrated once per shape (a bisection on a fixed
sample of tokens) so that their expected share is ``hot_share``. The default hot set is the
fewest experts that can take that share with room to spare: max(2, ceil(1.25 * top_k *
hot_share)), 5 for top-8 and 2 for top-2 at one half.

Shape legend: I iterations, L layers, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from swiftmoe._checks import is_int
from swiftmoe.sim.trace import _draw, synthetic_iterations, zipf_popularity

__all__ = [
    "DEFAULT_BURST_EVERY",
    "DEFAULT_HOT_SHARE",
    "DEFAULT_SHIFT_EVERY",
    "SHIFTING",
    "WORKLOADS",
    "default_hot_experts",
    "describe",
    "workload_iterations",
]

WORKLOADS = ("zipf", "fixed-hot", "moving-hot", "burst", "half-idle", "uniform")
# The classes whose load moves or is skewed (the targets apply to them); uniform is the
# control.
SHIFTING = ("zipf", "fixed-hot", "moving-hot", "burst", "half-idle")
DEFAULT_HOT_SHARE = 0.5
DEFAULT_SHIFT_EVERY = 3
DEFAULT_BURST_EVERY = 4
_ORDINARY_ZIPF = 0.5
_CALIBRATION_TOKENS = 8192


def default_hot_experts(top_k: int, hot_share: float) -> int:
    """The fewest hot experts that can take ``hot_share`` of the selections with room to spare."""
    return max(2, math.ceil(1.25 * top_k * hot_share))


def _check(name, experts, top_k, hot_experts, hot_share, shift_every, burst_every) -> None:
    if name not in WORKLOADS:
        raise ValueError(f"--workload is {name!r}: pass one of {', '.join(WORKLOADS)}")
    if not (0.0 < hot_share < 1.0):
        raise ValueError(f"--hot-share is {hot_share!r}: pass a fraction in (0, 1), e.g. 0.5")
    if name in ("fixed-hot", "moving-hot", "burst"):
        if not is_int(hot_experts, 1) or hot_experts >= experts:
            raise ValueError(
                f"--hot-experts is {hot_experts!r}: pass an integer in 1..{experts - 1} "
                f"(fewer than the {experts} experts)"
            )
        if hot_share > hot_experts / top_k:
            raise ValueError(
                f"--hot-share {hot_share:g} cannot be taken by {hot_experts} hot experts when each "
                f"token picks {top_k} distinct ones (at most {hot_experts / top_k:g}): raise "
                f"--hot-experts to at least {math.ceil(hot_share * top_k) + 1}"
            )
    if name == "moving-hot" and not is_int(shift_every, 1):
        raise ValueError(f"--shift-every is {shift_every!r}: pass an integer >= 1")
    if name == "burst" and not is_int(burst_every, 2):
        raise ValueError(f"--burst-every is {burst_every!r}: pass an integer >= 2")


@lru_cache(maxsize=64)
def _hot_weight(experts: int, top_k: int, hot: int, share: float) -> float:
    """The popularity of one hot expert (the others share the rest) whose expected share of a
    token's top_k distinct picks is ``share``: bisection on a fixed sample of tokens."""
    rng0 = np.random.default_rng(12345)
    g_TE = rng0.gumbel(size=(_CALIBRATION_TOKENS, experts)) if top_k > 2 else None

    def realized(w: float) -> float:
        p = _popularity(experts, hot, w, np.arange(hot))
        if top_k <= 2:  # exact: P(e picked) for one or two draws without replacement
            if top_k == 1:
                return float(p[:hot].sum())
            second = p[:, None] * p[None, :] / np.maximum(1.0 - p[:, None], 1e-300)
            np.fill_diagonal(second, 0.0)
            picked = p + second.sum(axis=0)
            return float(picked[:hot].sum() / 2.0)
        top = np.argpartition(-(np.log(p) + g_TE), top_k - 1, axis=1)[:, :top_k]
        return float((top < hot).sum() / (_CALIBRATION_TOKENS * top_k))

    lo, hi = 1.0 / experts, 1.0 / hot
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if realized(mid) < share:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _popularity(experts: int, hot: int, w_hot: float, hot_set: np.ndarray) -> np.ndarray:
    """p_E: w_hot for each expert of hot_set, the rest of the mass spread evenly."""
    p = np.full(experts, max(1.0 - hot * w_hot, 1e-12) / (experts - hot))
    p[hot_set] = w_hot
    return p / p.sum()


def describe(
    name: str,
    experts: int,
    top_k: int,
    hot_experts: int,
    hot_share: float,
    shift_every: int,
    burst_every: int,
    zipf: float,
    drift: int,
) -> str:
    """One line naming the workload and its parameters (for the simulator's output)."""
    hot = f"{hot_experts} hot experts take ~{hot_share:g} of the selections"
    return {
        "zipf": f"Zipf {zipf:g}, {drift} swap(s)/iteration, new order every "
        f"{shift_every or 'never'}",
        "fixed-hot": f"fixed hot set: {hot}",
        "moving-hot": f"moving hot set: {hot}, new set every {shift_every} iterations",
        "burst": f"burst: {burst_every - 1} iterations of Zipf {_ORDINARY_ZIPF:g}, then one where "
        f"{hot} (a new set each burst)",
        "half-idle": f"half idle: {experts // 2} of {experts} experts get no tokens, the rest "
        "share evenly",
        "uniform": "uniform routing",
    }[name]


def workload_iterations(
    name: str,
    experts: int,
    layers: int,
    iterations: int,
    tokens: int,
    top_k: int,
    seed: int = 0,
    hot_experts: int = 0,
    hot_share: float = DEFAULT_HOT_SHARE,
    shift_every: int = DEFAULT_SHIFT_EVERY,
    burst_every: int = DEFAULT_BURST_EVERY,
    zipf: float = 1.0,
    drift: int = 1,
) -> Iterator[np.ndarray]:
    """loads_LE (int64) of each iteration of workload ``name``, in order (see the module doc).

    ``hot_experts`` 0 takes :func:`default_hot_experts`. ``zipf``, ``drift`` and
    ``shift_every`` (0: never) shape the ``zipf`` class as ``synthetic_iterations`` does. The
    arguments are checked at once (ValueError naming the flag and the fix), the draws as
    iterated.
    """
    if name == "zipf":
        return synthetic_iterations(
            experts, layers, iterations, tokens, top_k, zipf, drift, shift_every, seed
        )
    for flag, v, lo in (
        ("--synthetic-experts", experts, 2),
        ("--synthetic-layers", layers, 1),
        ("--iterations", iterations, 1),
        ("--tokens-per-iter", tokens, 1),
        ("--top-k", top_k, 1),
    ):
        if not is_int(v, lo):
            raise ValueError(f"{flag} is {v!r}: pass an integer >= {lo}")
    if top_k > experts:
        raise ValueError(f"--top-k {top_k} exceeds the {experts} experts: pass top-k <= experts")
    hot = hot_experts or default_hot_experts(top_k, hot_share)
    _check(name, experts, top_k, hot, hot_share, shift_every, burst_every)
    w_hot = (
        _hot_weight(experts, top_k, hot, float(hot_share))
        if name in ("fixed-hot", "moving-hot", "burst")
        else 0.0
    )

    def draws() -> Iterator[np.ndarray]:
        rngs = [np.random.default_rng([seed, 7, li]) for li in range(layers)]
        state = []
        for rng in rngs:
            perm = rng.permutation(experts)
            state.append({"perm": perm, "hot": perm[:hot].copy(), "idle": perm[: experts // 2]})
        for it in range(iterations):
            out = np.empty((layers, experts), dtype=np.int64)
            for li, rng in enumerate(rngs):
                st = state[li]
                if name == "uniform":
                    p = np.full(experts, 1.0 / experts)
                elif name == "half-idle":
                    p = np.full(experts, 1.0)
                    p[st["idle"]] = 0.0
                    p /= p.sum()
                elif name == "fixed-hot":
                    p = _popularity(experts, hot, w_hot, st["hot"])
                elif name == "moving-hot":
                    if it and it % shift_every == 0:
                        st["hot"] = rng.permutation(experts)[:hot]
                    p = _popularity(experts, hot, w_hot, st["hot"])
                else:  # burst
                    if it % burst_every == burst_every - 1:
                        p = _popularity(experts, hot, w_hot, rng.permutation(experts)[:hot])
                    else:
                        p = zipf_popularity(experts, _ORDINARY_ZIPF, st["perm"])
                out[li] = _draw_top_k(rng, p, tokens, top_k)
            yield out

    return draws()


def _draw_top_k(rng: np.random.Generator, p_E: np.ndarray, tokens: int, k: int) -> np.ndarray:
    """Counts of tokens picking each expert among k distinct picks; experts of popularity 0 are
    never picked (the draw runs over the others)."""
    live = np.flatnonzero(p_E > 0)
    if live.size == p_E.size:
        return _draw(rng, p_E, tokens, k)
    out = np.zeros(p_E.size, dtype=np.int64)
    out[live] = _draw(rng, p_E[live] / p_E[live].sum(), tokens, min(k, live.size))
    return out
