"""Burst replicas inside the iteration: the layer's side of them.

The decision is ``swiftmoe.engine.burst.plan_bursts``, a pure function of the all-reduced counts;
this module runs it for an :class:`~swiftmoe.engine.layer.ExpertLayer` and carries it out:

* :class:`BurstPolicy`: what every layer's decision shares (burst slots per rank, threshold,
  split method); the cost model's parameters come from the engine's
  :class:`~swiftmoe.engine.step_costs.StepCosts`, identical on every rank;
* :func:`decide`: after the split on the planned placement, one cheap check (the busiest rank
  against ``threshold`` x the mean); past it, the decision and the split over the enlarged
  placement (:class:`LayerBursts`), in one C call where the library is loaded and the layer
  splits with the engine's own splitter (``native.burst_step``: the Python calls it replaces
  took more time between them than the C decision itself);
* :func:`start_copy` and :func:`finish_copy`: right after the tokens' dispatch, one
  ``all_to_all_single`` starts sending each burst's weights from its source slot to its burst
  slot; the planned slots' GEMMs run while it is in flight, and the layer waits for it only
  before the burst slots' GEMMs. It is autograd-aware: in backward the burst slots' backward
  runs first, the reverse ``all_to_all_single`` then starts returning each burst replica's
  gradient to its source slot while the planned slots' backward runs, and is waited for after
  them. The source slot's gradient then reaches the shard owners like any slot's
  (``optim.reduce_grads``), so training stays the same computation. The copy passes the
  dispatched tokens through, and its wait the planned slots' outputs, so on every rank the
  collectives keep one order (dispatch, copy, combine; in backward combine, return, dispatch),
  under activation checkpointing too (the recompute repeats the decision from the same
  counts). The cost model prices what the overlap leaves exposed
  (``costmodel.copy_exposed_ms``).

Shape legend: N ranks, S planned slots per rank, S' = S + burst slots in use, B burst slots per
rank, C bursts, M rows (tokens, or one expert's flat weights per row), D model dim, P elements
of one expert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine import dispatch as dp
from swiftmoe.engine import native as _native
from swiftmoe.engine.burst import BurstPlan, pad_counts, past_threshold, plan_bursts
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.split import RankSplit
from swiftmoe.engine.split.rank import from_native
from swiftmoe.engine.splitter import RankSplitter

__all__ = [
    "BurstPolicy",
    "ExpertSlots",
    "LayerBursts",
    "BurstCopy",
    "decide",
    "finish_copy",
    "start_copy",
]


class ExpertSlots(Protocol):
    """What bursts need of a layer (``swiftmoe.engine.layer.ExpertLayer`` has it)."""

    index: int  # the layer's index
    comm: Comm
    S: int  # planned slots per rank
    P: int  # elements of one expert
    dtype: torch.dtype  # of the slot weights
    device: torch.device
    slots_t: torch.Tensor  # the planned placement, CPU int64 [N*S]
    split: Callable[..., RankSplit]  # the layer's SplitFn
    offsets: list[int]  # each weight's offset in the flat [P] row
    numels: list[int]
    shapes: tuple[torch.Size, ...]
    grouped: bool  # the slot weights are ``stacked`` [S, ...] leaves, else ``slot_params``
    stacked: tuple[torch.Tensor, ...]
    slot_params: list[tuple[torch.Tensor, ...]]


GATE_WINDOW = 16  # iterations for which a decision's reached step serves as the gate's reference


class DecisionGate:
    """Whether a layer's burst decision is worth its host time; the same on every rank.

    Past the threshold a decision costs host time whether it makes bursts or not (about 0.1 ms
    at 16 ranks and 0.5 ms at 32 on a 2-core host, ``scripts/bench_decision.py``), and the
    GPUs wait for it. The gate stops it where the planned placement's modelled step
    (``BurstPlan.before_ms``, the split's own price) is at least the lowest step the layer's
    decisions of the last ``window`` iterations reached (their ``after_ms``, the copies
    included) and at most that plus ``decision_ms``, the decision's host time: there it cannot
    be expected to save what it costs, and it stops after pricing the planned split
    (``plan_bursts``' ``gate``). A planned step below that reference says the layer's situation
    changed since, and the decision runs; so does every decision of a layer without one that
    ran in the window, so that the reference cannot go stale.

    Its state changes only between iterations (:meth:`next_iteration`, from the engine's
    step): every forward of an iteration, and the recompute of a checkpointed one, sees the
    same gate. Decisions are made from the same counts on every rank and ``decision_ms`` is
    rank 0's, so every rank gates alike.
    """

    def __init__(self, window: int = GATE_WINDOW) -> None:
        self.window = window
        self.decision_ms = 0.0
        self.iteration = 0
        # layer -> (iteration, after_ms) of its decisions that ran in the window
        self._reached: dict[int, list[tuple[int, float]]] = {}
        self._gate: dict[int, tuple[float, float]] = {}  # layer -> this iteration's gate
        self._seen: dict[int, list[tuple[float, float]]] = {}  # this iteration's decisions
        self.last_ran = False  # whether the last decision saw() ran past its gate
        #: layer -> (decisions that ran, decisions the gate stopped) of the iteration that
        #: :meth:`next_iteration` last folded in (training calls past the threshold)
        self.counts: dict[int, tuple[int, int]] = {}

    def limit(self, layer: int) -> tuple[float, float] | None:
        """This iteration's gate of ``layer``, (lo, hi) in ms, or None, for ``plan_bursts``."""
        return self._gate.get(layer)

    def stops(self, layer: int, before_ms: float) -> bool:
        """Whether this iteration's gate of ``layer`` stops a decision at ``before_ms``."""
        g = self._gate.get(layer)
        return g is not None and g[0] <= before_ms <= g[1]

    def saw(self, layer: int, before_ms: float, after_ms: float) -> None:
        """A training call's decision: its before_ms and after_ms (before_ms 0: the threshold
        was not passed, nothing is recorded)."""
        self.last_ran = before_ms > 0 and not self.stops(layer, before_ms)
        if before_ms > 0:
            self._seen.setdefault(layer, []).append((before_ms, after_ms))

    def next_iteration(self, decision_ms: float) -> None:
        """Fold this iteration's decisions in and set the next iteration's gates, with
        ``decision_ms`` the decision's host time (0: no gate)."""
        self.counts = {}
        for layer, seen in self._seen.items():
            ran = 0
            for before, after in seen:
                if not self.stops(layer, before):
                    self._reached.setdefault(layer, []).append((self.iteration, after))
                    ran += 1
            self.counts[layer] = (ran, len(seen) - ran)
        self._seen.clear()
        self.iteration += 1
        self.decision_ms = float(decision_ms)
        self._gate = {}
        oldest = self.iteration - self.window
        for layer, reached in self._reached.items():
            reached[:] = [(i, a) for i, a in reached if i >= oldest]
            if reached and self.decision_ms > 0:
                lo = min(a for _, a in reached)
                self._gate[layer] = (lo, lo + self.decision_ms)


class DecisionClock:
    """Rank 0's estimate of a burst decision's host time (``burst_decision_ms="auto"``): the
    median host time of an iteration's training calls whose decision ran, less the median of
    the latest iteration's calls whose decision did not run (the split alone, or a stopped
    decision; 0 until one is measured, so the whole call counts), smoothed over iterations
    (half the weight on the newest). The engine broadcasts rank 0's figure, so that every
    rank gates with the same number."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.plain_s = 0.0
        self._ran: list[float] = []
        self._plain: list[float] = []

    def add(self, seconds: float, ran: bool) -> None:
        (self._ran if ran else self._plain).append(seconds)

    def next_iteration(self) -> float:
        """The estimate after this iteration's calls (ms), which it then forgets."""
        if self._plain:
            self.plain_s = float(np.median(self._plain))
        if self._ran:
            d = max(1e3 * (float(np.median(self._ran)) - self.plain_s), 0.0)
            self.ms = d if self.ms == 0.0 else 0.5 * (self.ms + d)
        self._ran.clear()
        self._plain.clear()
        return self.ms


class BurstPolicy:
    """What every layer's burst decision shares; the same on every rank (from the config).

    Attributes: B, burst slots per rank (>= 1); threshold, the busiest rank's load over the
    mean above which bursts are considered; method, the split's; decision_ms, the decision's
    host time for the gate (a number of ms, 0 for no gate, or "auto": rank 0 measures it,
    :class:`DecisionClock`); gate, the layers' :class:`DecisionGate`; clock, the
    :class:`DecisionClock` where decision_ms is "auto" and ``measure`` (rank 0), else None.
    """

    def __init__(
        self,
        burst_slots_per_rank: int,
        threshold: float,
        method: str,
        decision_ms=0.0,
        measure: bool = True,
    ) -> None:
        self.B, self.threshold, self.method = burst_slots_per_rank, float(threshold), method
        self.decision_ms = decision_ms
        self.gate = DecisionGate()
        # Only the rank whose figure every rank uses (rank 0) times its calls.
        self.clock = DecisionClock() if decision_ms == "auto" and measure else None

    def note_ms(self) -> float:
        """What this rank would have every rank gate with next iteration: the clock's
        estimate, the configured figure, or 0 where "auto" and this rank does not measure."""
        if self.clock is not None:
            return self.clock.next_iteration()
        return 0.0 if self.decision_ms == "auto" else float(self.decision_ms)

    def next_iteration(self, decision_ms: float) -> None:
        """Between iterations, on every rank with the same ``decision_ms`` (rank 0's
        :meth:`note_ms`)."""
        self.gate.next_iteration(decision_ms)


@dataclass(frozen=True)
class LayerBursts:
    """One layer call's bursts: the plan, this rank's split over the enlarged placement, and the
    send order of that placement (``dispatch.slot_order``)."""

    plan: BurstPlan
    split: RankSplit
    slots_per_rank: int
    perm_K: torch.Tensor
    inv_K: torch.Tensor


def decide(
    layer: ExpertSlots,
    policy: BurstPolicy,
    counts_NE: torch.Tensor,
    load_R: torch.Tensor,
    params: cm.CostParams,
    planned=None,
    record: bool = False,
) -> LayerBursts | None:
    """The layer's bursts this call, or None (the common case: one check of the split's loads).

    counts_NE: the all-reduced counts on the CPU; load_R: every rank's load under the split on
    the planned placement; params: the layer's cost parameters (``StepCosts.params``), those
    its split was given; planned: that split's stage 1 (``RankSplit.planned``), which the
    decision starts from rather than making it again, or None. The policy's gate of the layer
    applies (:class:`DecisionGate`); ``record``: a training call, not a recompute, whose
    decision the gate then takes in.
    """
    if not past_threshold(load_R, policy.B, policy.threshold):
        return None
    gate = policy.gate.limit(layer.index)
    fused = _fused(layer, policy, counts_NE, load_R, params, planned, gate)
    if fused is not _NOT_FUSED:
        fields, fused = fused
        if record:  # BurstPlan's fields end with before_ms, after_ms, copy_ms
            policy.gate.saw(layer.index, fields[-3], fields[-2])
        return fused
    plan = plan_bursts(
        counts_NE,
        layer.slots_t,
        layer.S,
        policy.B,
        params.ranks_per_node,
        params,
        policy.threshold,
        method=policy.method,
        load_R=load_R,
        planned=planned,
        gate=gate,
    )
    if record:
        policy.gate.saw(layer.index, plan.before_ms, plan.after_ms)
    if plan.count == 0:
        return None
    Sx = plan.slots_per_rank
    slots_x = torch.from_numpy(plan.slots_K)
    rs = layer.split(torch.from_numpy(pad_counts(counts_NE)), slots_x, layer.index, Sx, cost=params)
    perm_K, inv_K = dp.slot_order(plan.slots_K.tolist())
    return LayerBursts(plan, rs, Sx, perm_K, inv_K)


def split_and_decide(
    layer: ExpertSlots,
    policy: BurstPolicy,
    counts_NE: torch.Tensor,
    slots,
    params: cm.CostParams,
    record: bool = False,
):
    """The layer call's split and bursts: (the split of its planned placement ``slots``,
    None), or (the split over the enlarged placement, LayerBursts, whose ``split`` it is).
    Where the layer splits with the engine's RankSplitter in C, in one call
    (``RankSplitter.step``); else the split's call and then :func:`decide`. The same split and
    bursts either way. The policy's gate of the layer applies; ``record``: a training call,
    not a recompute, whose decision the gate takes in, and whose host time rank 0's clock
    takes in (``BurstPolicy.clock``)."""
    t0 = time.perf_counter() if record and policy.clock is not None else 0.0
    sp = layer.split
    gate = policy.gate.limit(layer.index)
    got = (
        sp.step(counts_NE, slots, layer.index, params, policy, gate)
        if type(sp) is RankSplitter
        else None
    )
    if got is None:
        rs = sp(counts_NE, slots, layer.index, cost=params)
        policy.gate.last_ran = False
        bursts = decide(layer, policy, counts_NE, rs.load_R, params, rs.planned, record)
        if t0:
            policy.clock.add(time.perf_counter() - t0, policy.gate.last_ran)
        return (rs if bursts is None else bursts.split), bursts
    rs, made, before, after = got
    if record:
        policy.gate.saw(layer.index, before, after)
        if t0:
            policy.clock.add(time.perf_counter() - t0, policy.gate.last_ran)
    if made is None:
        return rs, None
    fields, (perm_K, inv_K) = made
    plan = BurstPlan(counts_NE.shape[1], *fields)
    return rs, LayerBursts(
        plan, rs, plan.slots_per_rank, torch.from_numpy(perm_K), torch.from_numpy(inv_K)
    )


_NOT_FUSED = object()


def _fused(layer, policy, counts_NE, load_R, params, planned, gate=None):
    """:func:`decide`'s work past the threshold in one C call (``native.burst_step``): the
    decision, this rank's split over the enlarged placement with its conservation checks, and
    the placement's send order, the same as the calls below make them: (the plan's fields,
    LayerBursts or None). It applies where the layer splits with the engine's own
    :class:`RankSplitter`, with the policy's method and the cost parameters' nodes, on int64
    CPU arrays (the engine's); else ``_NOT_FUSED``, and the calls below run. Its inputs are the layer call's, checked by the split that made
    ``load_R`` and ``planned``."""
    sp = layer.split
    if (
        not isinstance(sp, RankSplitter)
        or sp.method != policy.method
        or sp.ranks_per_node != params.ranks_per_node
        or planned is None
        or not _native.use(None, policy.method, "burst step")
        or getattr(counts_NE, "ndim", 0) != 2
        or layer.slots_t.numel() != counts_NE.shape[0] * layer.S
    ):
        return _NOT_FUSED
    got = _native.burst_step(
        counts_NE,
        layer.slots_t,
        layer.S,
        policy.B,
        params,
        policy.threshold,
        policy.method,
        load_R,
        planned,
        sp.rank,
        sp.ranks_per_node,
        sp.method,
        gate,
    )
    if got is None:
        return _NOT_FUSED
    fields, split, order = got
    if split is None:
        return fields, None
    plan = BurstPlan(counts_NE.shape[1], *fields)
    perm_K, inv_K = order
    return fields, LayerBursts(
        plan,
        from_native(split),
        plan.slots_per_rank,
        torch.from_numpy(perm_K),
        torch.from_numpy(inv_K),
    )


class _Copy:
    """One layer call's weight copy: forward's ``all_to_all_single`` in flight, then in
    backward the gradients' return. Shared by :class:`_CopyStart` and :class:`_CopyWait`."""

    def __init__(self, comm: Comm, out_splits: list[int], in_splits: list[int]) -> None:
        self.comm, self.out_splits, self.in_splits = comm, out_splits, in_splits
        self.send: torch.Tensor | None = None  # kept alive while the copy is in flight
        self.recv: torch.Tensor | None = None
        self.work: Any = None
        self.back: torch.Tensor | None = None  # the gradients' return, once started
        self.back_work: Any = None
        self.g_send: torch.Tensor | None = None  # kept alive while the return is in flight

    def start(self, w_send: torch.Tensor) -> None:
        self.send = w_send.contiguous()
        self.recv, self.work = self.comm.all_to_all_async(
            self.send, self.out_splits, self.in_splits
        )

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
        self.send = None
        assert self.recv is not None
        return self.recv

    def start_return(self, g_recv: torch.Tensor) -> None:
        self.g_send = g_recv.contiguous()
        self.back, self.back_work = self.comm.all_to_all_async(
            self.g_send, self.in_splits, self.out_splits
        )

    def wait_return(self) -> torch.Tensor:
        if self.back is None:  # not started by _CopyWait's backward: return zeros in order
            assert self.recv is not None
            self.start_return(self.recv.new_zeros(self.recv.shape))
        if self.back_work is not None:
            self.back_work.wait()
            self.back_work = None
        back, self.back, self.g_send = self.back, None, None
        assert back is not None
        return back


class _CopyStart(torch.autograd.Function):
    """Starts the weights' ``all_to_all_single``, passing the dispatched tokens through.

    Backward (after every slot GEMM's backward, before the dispatch's): waits for the burst
    replicas' gradients that :class:`_CopyWait`'s backward sent back, and hands them to the
    source slots' weights.
    """

    @staticmethod
    def forward(ctx, tokens_MD, w_send, copy: _Copy):  # noqa: D102
        ctx.copy, ctx.w_requires_grad = copy, w_send.requires_grad
        copy.start(w_send.detach())
        return tokens_MD.view_as(tokens_MD)

    @staticmethod
    def backward(ctx, g_tokens):  # noqa: D102
        g = ctx.copy.wait_return()
        return g_tokens, (g if ctx.w_requires_grad else None), None


class _CopyWait(torch.autograd.Function):
    """Waits for the weights, passing the planned slots' outputs through (so it runs after
    their forward, and its backward before theirs).

    Backward (after the burst slots' backward): starts the return of the burst replicas'
    gradients (zeros for rows no token used), which the planned slots' backward then hides.
    """

    @staticmethod
    def forward(ctx, ys_MD, copy: _Copy):  # noqa: D102
        ctx.copy = copy
        return ys_MD.view_as(ys_MD), copy.wait()

    @staticmethod
    def backward(ctx, g_ys, g_recv):  # noqa: D102
        ctx.copy.start_return(g_recv)
        return g_ys, None


def _slot_flat(layer: ExpertSlots, s: int) -> torch.Tensor:
    """Slot s's weights as one flat [P] row, in the graph of the slot's leaves."""
    if layer.grouped:
        return torch.cat([t[s].reshape(-1) for t in layer.stacked])
    return torch.cat([t.reshape(-1) for t in layer.slot_params[s]])


@dataclass
class BurstCopy:
    """The burst slots' weights on their way (:func:`start_copy`, then :func:`finish_copy`)."""

    copy: _Copy
    j_recv: np.ndarray  # burst slot (0..S'-S-1) of each received row
    graph: bool  # started in the autograd graph


def start_copy(
    layer: ExpertSlots, bursts: LayerBursts, recv_MD: torch.Tensor
) -> tuple[torch.Tensor, BurstCopy]:
    """Start the bursts' weight copy (a collective, not waited for).

    Returns the dispatched tokens (passed through the copy, see the module docstring) and the
    copy in flight, for :func:`finish_copy` once the planned slots have run.
    """
    plan, comm = bursts.plan, layer.comm
    N, r = comm.world_size, comm.rank
    c_C = np.arange(plan.count)
    send = np.flatnonzero(plan.src_C == r)
    send = send[np.lexsort((c_C[send], plan.dst_C[send]))]  # by destination, then burst
    recv = np.flatnonzero(plan.dst_C == r)
    recv = recv[np.lexsort((c_C[recv], plan.src_C[recv]))]  # by source, then burst
    in_splits = np.bincount(plan.dst_C[send], minlength=N).tolist()
    out_splits = np.bincount(plan.src_C[recv], minlength=N).tolist()
    if send.size:
        w_send = torch.stack([_slot_flat(layer, int(s)) for s in plan.src_slot_C[send]])
    else:
        w_send = torch.zeros(0, layer.P, dtype=layer.dtype, device=layer.device)
    copy = _Copy(comm, out_splits, in_splits)
    graph = torch.is_grad_enabled()
    if graph:
        recv_MD = _CopyStart.apply(recv_MD, w_send, copy)
    else:
        copy.start(w_send)
    return recv_MD, BurstCopy(copy, plan.dst_slot_C[recv] - layer.S, graph)


def finish_copy(
    layer: ExpertSlots, bursts: LayerBursts, pending: BurstCopy, ys_MD: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Wait for the copy and assemble this rank's burst slots' weights.

    ys_MD: the planned slots' outputs, passed through (see :class:`_CopyWait`). Returns them
    and the weights of the S' - S burst slots for ``ExpertLayer.run_slots``: per-slot tuples
    (None for an empty burst slot), or stacked tensors on the grouped path.
    """
    S, Sx = layer.S, bursts.slots_per_rank
    if pending.graph:
        ys_MD, w_recv = _CopyWait.apply(ys_MD, pending.copy)
    else:
        w_recv = pending.copy.wait()
    shapes = list(zip(layer.offsets, layer.numels, layer.shapes, strict=True))
    if layer.grouped:
        idx = torch.from_numpy(pending.j_recv).to(w_recv.device)
        block = w_recv.new_zeros(Sx - S, layer.P).index_copy(0, idx, w_recv)
        weights = tuple(block[:, o : o + n].reshape(Sx - S, *shape) for o, n, shape in shapes)
        return ys_MD, weights
    slot_params: list = [None] * (Sx - S)
    for i, j in enumerate(pending.j_recv.tolist()):
        slot_params[j] = tuple(w_recv[i, o : o + n].view(shape) for o, n, shape in shapes)
    return ys_MD, slot_params
