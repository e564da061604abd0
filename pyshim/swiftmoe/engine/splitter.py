"""This rank's use of the token split: its part of every layer's split, checked before it runs.

Shape legend: N ranks (Q: source rank), E experts, S slots per rank, K = N*S slots.
"""

from __future__ import annotations

import numpy as np
import torch

from swiftmoe.engine import native as _native
from swiftmoe.engine import split as splitlib
from swiftmoe.engine.split.rank import from_native

__all__ = ["RankSplitter"]


def _conserves(
    counts_NE: torch.Tensor, slots_K: np.ndarray, rs, r: int, S: int, native: bool | None = None
) -> bool:
    """Rank r sends each expert's tokens exactly (to that expert's slots), sends and receives no
    negative amounts, receives no more of a source's tokens of an expert than the source has,
    and its load is what it receives.

    In C where the library is loaded (``native`` None; False: never, True: always), by code of
    its own (``swiftmoe.engine.native.check_rank_split``): the same checks in about a
    microsecond, where NumPy's dozen small operations took some 60 µs of the 155 µs of a layer
    call at 32 experts on 16 ranks. Else in NumPy on the CPU tensors' memory: these small arrays
    cost a microsecond or two an operation there, several times less than in torch."""
    if native is not False:
        ok = _native.check_rank_split(counts_NE, slots_K, S, r, rs.send_K, rs.recv_QS, rs.load_R)
        if ok is not None:
            return ok
        if native:
            raise RuntimeError(f"swiftmoe: the native split check cannot run: {_native.why()}")
    c = counts_NE.numpy()
    send, recv = rs.send_K.numpy(), rs.recv_QS.numpy()
    E = c.shape[1]
    if send.min(initial=0) < 0 or recv.min(initial=0) < 0:
        return False
    sent = np.bincount(slots_K, send, minlength=E)  # float64: exact below 2**53 tokens
    if not (sent == c[r]).all():
        return False
    mine = slots_K[r * S : (r + 1) * S].tolist()
    if len(set(mine)) == S:  # one slot per expert: each column against its expert's counts
        ok = bool((recv <= c[:, mine]).all())
    else:  # an expert in several of r's slots: what they receive together
        got = {}
        for s, e in enumerate(mine):
            got[e] = recv[:, s] + got[e] if e in got else recv[:, s]
        ok = all(bool((v <= c[:, e]).all()) for e, v in got.items())
    return ok and int(rs.load_R.numpy()[r]) == int(recv.sum())


def _misroutes(layer_index: int) -> RuntimeError:
    return RuntimeError(
        f"swiftmoe: the token split for layer {layer_index} does not conserve the counts "
        "(a bug in swiftmoe.engine.split); report it with the counts and the placement"
    )


class RankSplitter:
    """Splits each layer's tokens for one rank with one method and node grouping.

    It indexes each placement once and keeps the indexes of the recent ones (its own
    ``PlanIndexCache``: a placement stays in force for many iterations and every layer). Calls
    go through ``swiftmoe.engine.split`` by name, so the split the engine runs is the module's,
    whatever it is at the time.
    """

    def __init__(self, slots_per_rank: int, rank: int, ranks_per_node: int, method: str) -> None:
        self.S, self.rank, self.ranks_per_node, self.method = (
            slots_per_rank,
            rank,
            ranks_per_node,
            method,
        )
        self._indexes = splitlib.PlanIndexCache(
            build=lambda sl, S, N, E: self.build_index(sl, N, E)
        )
        self._cost_ok: tuple = (None, -1)  # the cost parameters last checked, for N ranks

    def __call__(
        self,
        counts_NE: torch.Tensor,
        slots_K: torch.Tensor,
        layer_index: int,
        slots_per_rank: int | None = None,
        cost=None,
    ) -> splitlib.RankSplit:
        """This rank's part of one layer's split under ``slots_K``; checked so it cannot
        misroute.

        ``slots_per_rank`` None: the planned placement, of S slots per rank (its index is kept
        for the next calls); else a placement enlarged by burst slots
        (``swiftmoe.engine.burst``), of that many slots per rank, indexed for this call only.
        ``cost``: None, or the layer's ``swiftmoe.engine.costmodel.CostParams``; with the
        method "auto" on several nodes the split's stage 1 is then chosen by the cost model
        (``swiftmoe.engine.split.priced``).

        split_tokens_for_rank fixes the shapes and checks that every token is routed; the checks
        here cover what the rank uses: it sends each expert's tokens exactly, it receives no more
        of a source's tokens of an expert than the source has, and its load is what it receives.
        """
        r = self.rank
        N, E = counts_NE.shape
        if slots_per_rank is None:
            S = self.S
            plan = self._indexes.index(slots_K, S, N, E)
            rs = self._native(counts_NE, N, E, plan, layer_index, cost)
            if rs is not None:
                return rs
        else:
            S = slots_per_rank
            plan = splitlib.index_slots(slots_K, S, N, E)  # the whole index only if NumPy splits
        rs = splitlib.split_tokens_for_rank(
            counts_NE,
            plan,
            S,
            r,
            ranks_per_node=self.ranks_per_node,
            method=self.method,
            cost=cost,
        )
        if not _conserves(counts_NE, plan.slots_K, rs, r, S):
            raise _misroutes(layer_index)
        return rs

    def index(self, slots_K, num_ranks: int, num_experts: int):
        """The checked index of a planned placement (slots_K [N*S]) from this splitter's cache.
        A caller that keeps it passes it in place of slots_K and spares the lookup, which
        hashes the placement's bytes, on every call (the engine's layers do, per placement)."""
        return self._indexes.index(slots_K, self.S, num_ranks, num_experts)

    def build_index(self, slots_K, num_ranks: int, num_experts: int):
        """A placement's index as this splitter's cache builds it (neither looked up nor kept:
        :meth:`index` does both). Where the C split runs, which indexes the placement itself:
        the checked slots and what the split reads of them (``split.SlotsIndex``, in about a
        third of ``index_plan``'s time, which a layer pays each time its placement changes;
        the first split after it is faster too). Else the whole NumPy index. A SlotsIndex kept
        while the library goes away still splits, in NumPy (``plan_index.prepare`` indexes it
        whole on each call)."""
        native = _native.use(None, self.method, "split")
        build = splitlib.index_slots if native else splitlib.index_plan
        return build(slots_K, self.S, num_ranks, num_experts)

    def _native(
        self, counts_NE, N: int, E: int, plan, layer_index: int, cost
    ) -> splitlib.RankSplit | None:
        """The split of a planned placement and its checks in one C call
        (``native.layer_split``: the counts' checks, the split, the conservation checks), where
        the library is loaded and the counts are int64 C-contiguous (the engine's tensor); else
        None, and the calls of ``__call__`` run. The same split and the same errors as those:
        the Python glue of those calls took several times the C split's own time. The
        placement's address is kept on its index (read-only, like the index's own arrays)."""
        got = self._native_call(
            counts_NE, N, E, plan, layer_index, cost,
            lambda r, rpn, method, at: _native.layer_split(
                counts_NE, plan.slots_K, plan.S, r, rpn, method, cost, slots_at=at
            ),
        )  # fmt: skip
        return None if got is None else from_native(got)

    def step(self, counts_NE, slots_K, layer_index: int, cost, policy, gate=None):
        """The split of the planned placement and, where its loads pass the policy's
        threshold, the burst step from it, in one C call (``native.layer_step``): the same
        split, bursts and errors as this splitter's call followed by ``burst_run.decide``, less
        the second call's glue and the planned split's routing where bursts are made. ``gate``:
        the decision's (``burst.plan_bursts``).

        Returns None where it does not apply (no library, the policy's method or the cost's
        nodes not this splitter's, counts of another kind; the two calls then run); else
        (split, bursts, before_ms, after_ms): ``native.layer_step``'s, the split a RankSplit."""
        N, E = counts_NE.shape
        if (
            cost is None
            or policy.B < 1
            or policy.method != self.method
            or cost.ranks_per_node != self.ranks_per_node
        ):  # (the library and the method: _native_call checks them)
            return None
        plan = self._indexes.index(slots_K, self.S, N, E)
        got = self._native_call(
            counts_NE, N, E, plan, layer_index, cost,
            lambda r, rpn, method, at: _native.layer_step(
                counts_NE, plan.slots_K, plan.S, policy.B, cost, policy.threshold, method, r,
                slots_at=at, gate=gate,
            ),
        )  # fmt: skip
        return None if got is None else (from_native(got[0]), *got[1:])

    def _native_call(self, counts_NE, N: int, E: int, plan, layer_index: int, cost, call):
        """``call(rank, rpn, method, address of the placement)`` where the library splits this
        layer call (else None), its refusals raised as this splitter's Python checks raise
        them."""
        r, rpn, method = self.rank, self.ranks_per_node, self.method
        if not (
            _native.use(None, method, "split")
            and type(rpn) is int
            and 0 <= r < plan.N
            and (plan.N, plan.S, plan.E) == (N, self.S, E)  # else the checks below refuse it
        ):
            return None
        if method == "auto" and (cost is not self._cost_ok[0] or plan.N != self._cost_ok[1]):
            splitlib.prices_split(cost, plan, rpn)  # a cost of another job or grouping: refused
            self._cost_ok = (cost, plan.N)  # (frozen parameters: checked once for N ranks)
        at = plan.__dict__.get("_native_at")
        if at is None:
            at = plan.__dict__["_native_at"] = _native.address(plan.slots_K, plan.K)
        try:
            return call(r, rpn, method, at)
        except _native.SplitRefused as e:
            c = np.asarray(counts_NE)
            if e.what == "negative":
                raise splitlib.negative_count(c, *divmod(e.where, c.shape[1])) from None
            if e.what == "orphan":
                raise splitlib.orphan_expert(e.where, int(c[:, e.where].sum())) from None
            raise _misroutes(layer_index) from None

    def rank_loads(self, counts_NE: torch.Tensor, slots_K: list[int], cost=None) -> torch.Tensor:
        """Tokens each rank would process under ``slots_K`` (int64 [N]), without routing;
        ``cost`` as for the layer's split (its stage 1 priced on several nodes)."""
        N, E = counts_NE.shape
        plan = self._indexes.index(slots_K, self.S, N, E)
        return splitlib.split_rank_loads(
            counts_NE,
            plan,
            self.S,
            ranks_per_node=self.ranks_per_node,
            method=self.method,
            cost=cost,
        )
