"""The split's inputs: the counts and the plan, checked, and the plan's index.

A :class:`PlanIndex` holds what the split derives from a placement alone (its (expert, rank)
pairs, the slots behind each, the demand order); a placement stays in force for many iterations,
so callers index it once (:func:`index_plan`) or keep a :class:`PlanIndexCache`.

Shape legend (the whole one is in ``swiftmoe.engine.split``): Q source ranks, E experts,
N ranks, S slots per rank, K = N*S slots, P (expert, rank) pairs, H experts holding a slot,
D demands (slots in (expert, slot) order).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from swiftmoe._checks import is_int

__all__ = [
    "PlanIndex",
    "PlanIndexCache",
    "SlotsIndex",
    "check_counts",
    "check_slots",
    "index_plan",
    "index_slots",
    "local_tokens",
    "negative_count",
    "node_plans",
    "orphan_expert",
    "prepare",
]


def check_counts(counts_QE) -> np.ndarray:
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
        raise negative_count(arr, int(q), int(e))
    return np.ascontiguousarray(arr)


def negative_count(counts_QE: np.ndarray, q: int, e: int) -> ValueError:
    """The error for the negative count counts_QE[q, e] (check_counts', the native split's)."""
    return ValueError(f"counts_QE[{q}, {e}] is {counts_QE[q, e]}; token counts cannot be negative")


def orphan_expert(e: int, n: int) -> ValueError:
    """The error for expert e's n tokens without a slot (prepare's, the native split's)."""
    return ValueError(
        f"expert {e} has {n} tokens but no slot in the plan; every expert needs a "
        "replica (validate the plan with swiftmoe.engine.plan.validate_slots)"
    )


def check_slots(slots, slots_per_rank: int, num_ranks: int, num_experts: int) -> np.ndarray:
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
    # Two reductions decide; the first bad slot is looked for only to name it.
    if arr.size and (arr.min() < 0 or arr.max() >= num_experts):
        k = int(np.nonzero((arr < 0) | (arr >= num_experts))[0][0])
        raise ValueError(
            f"slots[{k}] holds expert {int(arr[k])}, want 0..{num_experts - 1} "
            f"(counts_QE has {num_experts} experts)"
        )
    return np.ascontiguousarray(arr)


class PlanIndex:
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


class SlotsIndex:
    """What the native split needs of a placement beyond its checked slots: each expert's ranks
    (``deg_E``) and the experts holding a slot (``held_H``, None: all), as :class:`PlanIndex`
    has them. The C code indexes the placement itself, so a placement split once (a burst layer
    call's enlarged one) need not build the whole index in NumPy; the NumPy split builds it from
    these slots when it gets one (``prepare``)."""

    def __init__(self, slots_K: np.ndarray, N: int, S: int, E: int):
        self.N, self.S, self.E, self.K = N, S, E, N * S
        self.slots_K = slots_K
        rows = np.sort(slots_K.reshape(N, S), axis=1)
        first = np.ones(rows.shape, dtype=bool)  # each expert once per rank
        first[:, 1:] = rows[:, 1:] != rows[:, :-1]
        self.deg_E = np.bincount(rows[first], minlength=E)
        held = self.deg_E > 0
        self.held_H = None if held.all() else np.flatnonzero(held)


def index_slots(slots, slots_per_rank: int, num_ranks: int, num_experts: int) -> SlotsIndex:
    """The checked :class:`SlotsIndex` of a plan (slots_K, list or integer tensor or array): for
    a placement the native split runs under once, in a few NumPy calls where
    :func:`index_plan` makes some thirty."""
    slots_K = check_slots(slots, slots_per_rank, num_ranks, num_experts).copy()
    plan = SlotsIndex(slots_K, num_ranks, slots_per_rank, num_experts)
    for v in vars(plan).values():  # read-only, as index_plan's: a cache may keep it
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return plan


def node_plans(
    plan: PlanIndex, ranks_per_node: int
) -> tuple[tuple[np.ndarray, np.ndarray, PlanIndex], ...]:
    """Each node's part of the plan, for splits made inside the nodes: (pairs, experts, sub) per
    node m of ``ranks_per_node`` ranks (the last may have fewer). ``pairs`` are the plan's pairs
    on node m in pair order; ``experts`` the experts node m holds, ascending; ``sub`` the
    :class:`PlanIndex` of node m's slots alone with expert ``experts[i]`` as expert i, whose
    pairs are ``pairs`` in the same order (pairs run by expert, then rank, and the renaming
    keeps the experts' order). Made once per plan and kept on it, read-only like the plan's own
    arrays."""
    G = ranks_per_node
    if not 0 < G < plan.N:
        raise ValueError(
            f"ranks_per_node is {G!r} for {plan.N} ranks: a node split needs two nodes or "
            f"more, 0 < ranks_per_node < {plan.N}"
        )
    cache = plan.__dict__.setdefault("_node_plans", {})
    if G not in cache:
        out = []
        node_P = plan.r_P // G
        S = plan.S
        for lo in range(0, plan.N, G):
            hi = min(lo + G, plan.N)
            pairs = np.flatnonzero(node_P == lo // G)
            slots = plan.slots_K[lo * S : hi * S]
            experts = np.unique(slots)
            sub = PlanIndex(np.searchsorted(experts, slots), hi - lo, S, experts.size)
            for v in (pairs, experts, *vars(sub).values()):
                if isinstance(v, np.ndarray):
                    v.setflags(write=False)
            out.append((pairs, experts, sub))
        cache[G] = tuple(out)
    return cache[G]


def local_tokens(c_QE: np.ndarray, plan: PlanIndex) -> np.ndarray:
    """Each pair's tokens from its own rank: counts[r, e] of pair (e, r), int64 [P]."""
    return c_QE.reshape(-1)[plan.qe_P]


def index_plan(slots, slots_per_rank: int, num_ranks: int, num_experts: int) -> PlanIndex:
    """The checked :class:`PlanIndex` of a plan (slots_K, list or integer tensor or array).

    Index a placement once and pass the index wherever ``slots`` is taken, for as long as the
    placement is in force; its arrays are read-only, so one index serves every call.
    """
    slots_K = check_slots(slots, slots_per_rank, num_ranks, num_experts)
    plan = PlanIndex(slots_K.copy(), num_ranks, slots_per_rank, num_experts)
    for v in vars(plan).values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return plan


class PlanIndexCache:
    """The indexes of the placements a caller splits under again and again (a training job's
    layers, a simulation's jobs), most recently used first, at most ``max_entries``.

    The caller owns it: it is not shared between callers and not thread-safe. A hit is the same
    pure function of the inputs, since the key is the plan's bytes and shape. ``build``: how a
    placement not held is indexed (:func:`index_plan` by default; the engine's splitter takes
    :func:`index_slots` where the C split runs, which indexes the placement itself).
    """

    def __init__(self, max_entries: int = 64, build=None) -> None:
        if not is_int(max_entries, 1):
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._build = index_plan if build is None else build
        self._indexes: OrderedDict[tuple, PlanIndex | SlotsIndex] = OrderedDict()

    def index(
        self, slots, slots_per_rank: int, num_ranks: int, num_experts: int
    ) -> PlanIndex | SlotsIndex:
        """The index (``build``'s) of ``slots``, from the cache when it holds the same plan.

        An array or CPU tensor is looked up by its dtype, shape and bytes before it is checked:
        they decide the check, so a plan in force is not checked again on every layer call.
        Other forms (lists) are checked first, then looked up."""
        if isinstance(slots, (PlanIndex, SlotsIndex)):
            return slots
        shape = (num_ranks, slots_per_rank, num_experts)
        raw = _raw_key(slots)
        if raw is not None:
            plan = self._hit(raw + shape)
            if plan is not None:
                return plan
        slots_K = check_slots(slots, slots_per_rank, num_ranks, num_experts)
        key = _raw_key(slots_K) + shape
        plan = self._hit(key)
        if plan is None:
            plan = self._build(slots_K, slots_per_rank, num_ranks, num_experts)
            self._indexes[key] = plan
        if raw is not None and raw + shape != key:  # the same plan in another dtype
            self._indexes[raw + shape] = plan
        while len(self._indexes) > self.max_entries:
            self._indexes.popitem(last=False)
        return plan

    def _hit(self, key: tuple) -> PlanIndex | SlotsIndex | None:
        plan = self._indexes.get(key)
        if plan is not None:
            self._indexes.move_to_end(key)
        return plan


def _raw_key(slots) -> tuple | None:
    """(dtype, shape, bytes) of an array or of a CPU tensor's memory; None for other forms."""
    if isinstance(slots, torch.Tensor):
        if slots.device.type != "cpu" or slots.requires_grad:
            return None
        slots = slots.numpy()
    if not isinstance(slots, np.ndarray):
        return None
    return (slots.dtype.str, slots.shape, slots.tobytes())


def prepare(
    counts_QE, slots, slots_per_rank: int, totals: bool = True, light: bool = False
) -> tuple[np.ndarray, PlanIndex | SlotsIndex, np.ndarray | None]:
    """(c_QE, plan, L_E): the checked counts, the plan's index and each expert's total.

    ``slots`` is the plan (slots_K), its :class:`PlanIndex` or its :class:`SlotsIndex`; an
    index must be of the same shape as the counts and ``slots_per_rank``. ``totals`` False: L_E
    is None, for a caller that sums them itself (the native split); only the experts without a
    slot are summed, to check that none has tokens. ``light``: a plan given as slots gets a
    :class:`SlotsIndex` (what the native split reads), and one given as a SlotsIndex stays one;
    else a SlotsIndex is made a whole :class:`PlanIndex`.
    """
    c_QE = check_counts(counts_QE)
    N, E = c_QE.shape
    if N < 1 or E < 1:
        raise ValueError(f"counts_QE must have at least one rank and one expert, got {c_QE.shape}")
    if isinstance(slots, (PlanIndex, SlotsIndex)):
        plan = slots
        if (plan.N, plan.S, plan.E) != (N, slots_per_rank, E):
            raise ValueError(
                f"slots: the {type(plan).__name__} is of N={plan.N} ranks x S={plan.S} slots and "
                f"E={plan.E} experts, but counts_QE is [{N}, {E}] with slots_per_rank="
                f"{slots_per_rank!r}; index the plan the counts are for (index_plan)"
            )
        if isinstance(plan, SlotsIndex) and not light:
            plan = index_plan(plan.slots_K, slots_per_rank, N, E)
    elif light:
        plan = index_slots(slots, slots_per_rank, N, E)
    else:
        plan = index_plan(slots, slots_per_rank, N, E)
    L_E = c_QE.sum(axis=0) if totals else None
    if plan.held_H is not None:  # experts without a slot: none may have tokens
        idle = np.flatnonzero(plan.deg_E == 0)
        L = L_E[idle] if totals else c_QE[:, idle].sum(axis=0)
        orphan = np.flatnonzero(L > 0)
        if orphan.size:
            raise orphan_expert(int(idle[orphan[0]]), int(L[orphan[0]]))
    return c_QE, plan, L_E
