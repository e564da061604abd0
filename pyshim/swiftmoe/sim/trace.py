"""Routing traces for the simulator: read, scale, synthesise, and spread over source ranks.

A trace is JSON Lines, one object per iteration (DESIGN.md "Data formats"):
``{"iteration": i, "loads": [[l0e0, l0e1, ...], ...]}``, global token counts per layer per expert.
In memory it is one int64 array loads_ILE.

* :func:`read_trace_loads` is the one reader of a trace file (the report's too): it parses,
  checks and orders it by iteration; :func:`read_trace` gives the simulator its array.
* :func:`scale_loads` rescales every (iteration, layer) row to a given total, integer counts by
  largest remainders (deterministic; ties to the lower expert id).
* :func:`synthetic_trace` draws Zipf-skewed routing whose popularity drifts: expert ``perm[j]``
  has popularity proportional to ``1/(j+1)^zipf``; each iteration ``drift`` random adjacent
  swaps of ``perm`` move popularity gradually, and every ``shift_every`` iterations ``perm`` is
  drawn afresh. Each of ``tokens`` tokens picks ``top_k`` distinct experts (sampling without
  replacement, as a router's top-k does). For top_k <= 2 the counts are drawn exactly by
  conditional multinomials (the first choice, then the second among the others); for top_k > 2
  tokens are sampled one by one (Gumbel top-k, slower). Every layer draws from its own generator,
  so :func:`synthetic_iterations` yields the same values iteration by iteration, and
  :class:`StreamedTrace` draws them in a background thread while a replay runs on the first
  ones (the draws release the GIL).
* :func:`source_counts` derives the per-source matrix the token split needs. A trace holds only
  global counts, so each expert's tokens are spread evenly over the N source ranks and the
  remainder goes one token each to the lowest ranks: counts_QE[q, e] = L_e // N + (q < L_e % N).

Shape legend: I iterations, L MoE layers, E experts per layer, Q = N source ranks.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from swiftmoe._checks import is_int

__all__ = [
    "StreamedTrace",
    "json_lines",
    "read_trace",
    "read_trace_loads",
    "scale_loads",
    "source_counts",
    "synthetic_iterations",
    "synthetic_trace",
    "uniform_loads",
    "write_trace",
    "add_skew_arguments",
    "check_zipf",
    "zipf_popularity",
]


def json_lines(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, object) of every non-blank line of a JSON Lines file; ValueError naming the
    line that is not JSON, or the file when it holds none."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); write one object per line") from None
    if not out:
        raise ValueError(f"{path}: no JSON lines; pass a file with one object per line")
    return out


def read_trace_loads(path: str | Path, max_iterations: int = 0) -> list[list[list[int]]]:
    """The one routing-trace reader: loads_ILE as lists, ordered by iteration (the first
    ``max_iterations`` when given); ValueError naming the line, the field and the fix.

    Every line must be ``{"iteration": i, "loads": [[...], ...]}`` with an integer i >= 0 and,
    per layer, a non-empty list of integer token counts >= 0; every line has the same experts
    per layer (one trace holds one model). Layers may differ in their expert counts.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"trace {str(p)!r} is not a file: pass a JSON Lines routing trace")
    rows: list[tuple[int, list[list[int]]]] = []
    shape: list[int] | None = None
    for n, obj in json_lines(p):
        where = f"{p}:{n}"
        if not isinstance(obj, dict) or "loads" not in obj or "iteration" not in obj:
            raise ValueError(
                f'{where}: expected {{"iteration": i, "loads": [[...], ...]}} (a routing trace)'
            )
        it, loads = obj["iteration"], obj["loads"]
        if not is_int(it, 0):
            raise ValueError(f"{where}: iteration is {it!r}; pass an integer >= 0")
        if (
            not isinstance(loads, list)
            or not loads
            or not all(isinstance(r, list) and r for r in loads)
        ):
            raise ValueError(
                f'{where}: "loads" must be a non-empty list of per-layer lists of token counts, '
                'e.g. {"iteration": 0, "loads": [[3, 5], [4, 4]]}'
            )
        for li, r in enumerate(loads):
            for e, v in enumerate(r):
                if not is_int(v, 0):
                    raise ValueError(
                        f"{where}: loads[{li}][{e}] is {v!r}: pass integer token counts >= 0"
                    )
        s = [len(r) for r in loads]
        if shape is None:
            shape = s
        elif s != shape:
            raise ValueError(
                f"{where}: loads has {s} experts per layer, earlier lines {shape}; every iteration "
                "needs the same shape (one trace holds one model)"
            )
        rows.append((it, loads))
    rows.sort(key=lambda r: r[0])
    if max_iterations:
        rows = rows[:max_iterations]
    return [loads for _, loads in rows]


def read_trace(path: str | Path, max_iterations: int = 0) -> np.ndarray:
    """loads_ILE (int64) of a trace (:func:`read_trace_loads`) for the simulator, which needs the
    same number of experts in every layer; ValueError naming the fix otherwise."""
    rows = read_trace_loads(path, max_iterations)
    widths = sorted({len(r) for r in rows[0]})
    if len(widths) != 1:
        raise ValueError(
            f"{path}: layers have different expert counts {widths}: the simulator needs the same "
            "number of experts in every layer"
        )
    return np.asarray(rows, dtype=np.int64)


def write_trace(path: str | Path, loads_ILE: np.ndarray) -> None:
    """Writes loads_ILE as JSON Lines, iterations numbered from 0."""
    with Path(path).open("w") as f:
        for i, lay in enumerate(np.asarray(loads_ILE)):
            f.write(json.dumps({"iteration": i, "loads": lay.tolist()}) + "\n")


def scale_loads(loads_ILE: np.ndarray, total: int) -> np.ndarray:
    """Every (iteration, layer) row rescaled to sum to ``total``, as integers.

    Floors of the proportional shares plus one token for the largest remainders (ties to the
    lower expert id). A row of zeros is spread evenly (remainder to the lowest ids).
    """
    if not (is_int(total, 1) or (isinstance(total, np.integer) and total >= 1)):
        raise ValueError(f"scale total is {total!r}: pass an integer >= 1")
    a = np.asarray(loads_ILE, dtype=np.int64)
    E = a.shape[-1]
    flat = a.reshape(-1, E).astype(np.float64)
    sums = flat.sum(axis=1, keepdims=True)
    empty = sums[:, 0] == 0
    flat[empty] = 1.0
    sums[empty] = E
    share = flat * (float(total) / sums)
    fl = np.floor(share).astype(np.int64)
    rem = total - fl.sum(axis=1)
    frac = share - fl
    order = np.lexsort((np.broadcast_to(np.arange(E), frac.shape), -frac), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(E)[None, :].repeat(len(order), 0), axis=1)
    fl += rank < rem[:, None]
    return fl.reshape(a.shape)


def source_counts(loads_E: np.ndarray, num_ranks: int) -> np.ndarray:
    """counts_QE: each expert's tokens spread evenly over the ranks, remainders to the lowest."""
    if not is_int(num_ranks, 1):
        raise ValueError(f"num_ranks is {num_ranks!r}: pass an integer >= 1")
    L_E = np.asarray(loads_E, dtype=np.int64)
    if L_E.ndim != 1 or (L_E.size and L_E.min() < 0):
        raise ValueError("loads_E must be a 1-D vector of token counts >= 0")
    q_Q = np.arange(num_ranks, dtype=np.int64)[:, None]
    return L_E[None, :] // num_ranks + (q_Q < (L_E % num_ranks)[None, :])


def uniform_loads(total: int, experts: int) -> np.ndarray:
    """total tokens spread evenly over the experts, remainders to the lowest ids."""
    e_E = np.arange(experts, dtype=np.int64)
    return total // experts + (e_E < total % experts)


def zipf_popularity(E: int, s: float, perm_E: np.ndarray) -> np.ndarray:
    """p_E (float64, sum 1) with p[perm[j]] proportional to 1/(j+1)^s: expert perm[0] is the
    hottest; s = 0 is uniform. The skew of every synthetic routing here and of
    scripts/bench_step.py's scheduled router."""
    w = 1.0 / np.arange(1, E + 1, dtype=np.float64) ** s
    p_E = np.empty(E)
    p_E[perm_E] = w / w.sum()
    return p_E


def _draw(rng: np.random.Generator, p_E: np.ndarray, tokens: int, k: int) -> np.ndarray:
    E = p_E.size
    if k == 1:
        return rng.multinomial(tokens, p_E)
    if k == 2:
        first_E = rng.multinomial(tokens, p_E)
        rest_EE = np.broadcast_to(p_E, (E, E)).copy()
        np.fill_diagonal(rest_EE, 0.0)
        rest_EE /= rest_EE.sum(axis=1, keepdims=True)
        return first_E + rng.multinomial(first_E, rest_EE).sum(axis=0)
    out = np.zeros(E, dtype=np.int64)
    logp = np.log(np.maximum(p_E, 1e-300))
    chunk = max(1, (1 << 22) // E)
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        g_TE = logp + rng.gumbel(size=(n, E))
        top_TK = np.argpartition(-g_TE, k - 1, axis=1)[:, :k]
        out += np.bincount(top_TK.reshape(-1), minlength=E)
    return out


def check_zipf(zipf: float, name: str = "zipf exponent") -> None:
    """ValueError unless ``zipf`` is a finite number >= 0."""
    if not (math.isfinite(zipf) and zipf >= 0):
        raise ValueError(f"{name} is {zipf!r}: pass a finite number >= 0 (0 = uniform)")


def add_skew_arguments(group: Any, *, zipf: float, shift_every: int, what: str = "") -> None:
    """``--zipf`` and ``--shift-every`` on an argparse parser or group, with the caller's
    defaults: the skew of synthetic routing (:func:`zipf_popularity`, hot set drawn afresh every
    N iterations). ``what`` prefixes the help ("synthetic": the simulator's trace)."""
    pre = f"{what} " if what else ""
    group.add_argument("--zipf", type=float, default=zipf, help=f"{pre}Zipf exponent (0: uniform)")
    group.add_argument(
        "--shift-every",
        type=int,
        default=shift_every,
        help=f"{what + ': ' if what else ''}new hot set every N iterations"
        + ("" if shift_every == 0 else f" (default {shift_every})"),
    )


def synthetic_iterations(
    experts: int,
    layers: int,
    iterations: int,
    tokens: int,
    top_k: int,
    zipf: float = 1.0,
    drift: int = 1,
    shift_every: int = 0,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """loads_LE (int64) of each iteration of :func:`synthetic_trace`, in order.

    The arguments are checked at once (ValueError naming the bad one), the draws as iterated.
    """
    for name, v, lo in (
        ("synthetic experts", experts, 1),
        ("synthetic layers", layers, 1),
        ("iterations", iterations, 1),
        ("tokens per iteration", tokens, 1),
        ("top-k", top_k, 1),
        ("drift", drift, 0),
        ("shift-every", shift_every, 0),
    ):
        if not is_int(v, lo):
            raise ValueError(f"{name} is {v!r}: pass an integer >= {lo}")
    if top_k > experts:
        raise ValueError(f"top-k {top_k} exceeds the {experts} experts: pass top-k <= experts")
    check_zipf(zipf)

    def draws() -> Iterator[np.ndarray]:
        rngs = [np.random.default_rng([seed, li]) for li in range(layers)]
        perms = [rng.permutation(experts) for rng in rngs]
        for it in range(iterations):
            out = np.empty((layers, experts), dtype=np.int64)
            for li, rng in enumerate(rngs):
                perm = perms[li]
                if shift_every and it and it % shift_every == 0:
                    perm = perms[li] = rng.permutation(experts)
                elif it and drift and experts > 1:
                    for j in rng.integers(0, experts - 1, size=drift):
                        perm[j], perm[j + 1] = perm[j + 1], perm[j]
                out[li] = _draw(rng, zipf_popularity(experts, zipf, perm), tokens, top_k)
            yield out

    return draws()


def synthetic_trace(*args: Any, **kwargs: Any) -> np.ndarray:
    """loads_ILE of Zipf-skewed routing with drifting popularity, deterministic in ``seed``: the
    iterations of :func:`synthetic_iterations` (same arguments) stacked."""
    return np.stack(list(synthetic_iterations(*args, **kwargs)))


class StreamedTrace:
    """loads_ILE [I, L, E] (int64) filled from an iterator of loads_LE in a background thread.

    ``wait(i)`` returns once iteration i is filled and raises what the thread raised (a replay
    reads iteration i only after waiting for it); ``close()`` stops the thread after the
    iteration it is drawing, and a ``wait`` for an iteration not filled by then raises.
    """

    def __init__(self, shape: tuple[int, int, int], rows: Iterator[np.ndarray]):
        self.loads_ILE = np.zeros(shape, dtype=np.int64)
        self._filled = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._fill, args=(rows,), name="sim-trace", daemon=True
        )
        self._thread.start()

    def _fill(self, rows: Iterator[np.ndarray]) -> None:
        n = self.loads_ILE.shape[0]
        try:
            for i, row in zip(range(n), rows, strict=False):  # the first n rows
                if self._stop.is_set():
                    return
                self.loads_ILE[i] = row
                with self._cond:
                    self._filled = i + 1
                    self._cond.notify_all()
            if self._filled < self.loads_ILE.shape[0]:
                raise ValueError(
                    f"the trace ended after {self._filled} of {self.loads_ILE.shape[0]} iterations"
                )
        except BaseException as e:  # handed to the reader, which raises it
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def wait(self, it: int) -> None:
        n = self.loads_ILE.shape[0]
        if not 0 <= it < n:
            raise IndexError(f"iteration {it} is outside the trace's 0..{n - 1}")
        with self._cond:
            while self._filled <= it and self._error is None:
                self._cond.wait()
            if self._filled <= it:
                raise self._error  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._cond:  # a reader still waiting would wait for good: wake it with an error
            if self._error is None and self._filled < self.loads_ILE.shape[0]:
                self._error = RuntimeError(
                    f"the trace was closed after {self._filled} of "
                    f"{self.loads_ILE.shape[0]} iterations"
                )
            self._cond.notify_all()
