"""The engine's burst step in one C call (``native.burst_step``, run by ``burst_run.decide``)
gives what the calls it replaces give: the decision, the rank's split over the enlarged
placement, and its send order; and its conservation checks refuse a split that loses tokens."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from native_cases import burst_case, counted

from swiftmoe.engine import burst_run, native
from swiftmoe.engine.splitter import RankSplitter


def _layer(slots, S, split):
    return SimpleNamespace(index=7, S=S, slots_t=torch.as_tensor(slots), split=split)


def _inputs(c, slots, S, rank, rpn, p, method):
    """The layer call's own inputs to decide: the counts tensor, and load_R and planned from
    the rank's split on the planned placement."""
    counts = torch.from_numpy(c)
    rs = RankSplitter(S, rank, rpn, method)(counts, torch.as_tensor(slots), 7, cost=p)
    return counts, rs.load_R, rs.planned


def _same(a, b) -> None:
    """Two LayerBursts (or None) are the same, field by field and dtype by dtype."""
    assert (a is None) == (b is None)
    if a is None:
        return
    for f in ("num_experts", "slots_per_rank", "before_ms", "after_ms", "copy_ms"):
        assert getattr(a.plan, f) == getattr(b.plan, f), f
    for f in ("slots_K", "expert_C", "src_C", "src_slot_C", "dst_C", "dst_slot_C"):
        np.testing.assert_array_equal(getattr(a.plan, f), getattr(b.plan, f), err_msg=f)
        assert getattr(a.plan, f).dtype == getattr(b.plan, f).dtype == np.int64, f
    assert a.slots_per_rank == b.slots_per_rank
    for f in ("perm_K", "inv_K"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    for f in ("send_K", "recv_QS", "load_R"):
        x, y = getattr(a.split, f), getattr(b.split, f)
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y), f
    assert a.split.node_local == b.split.node_local
    pa, pb = a.split.planned, b.split.planned
    np.testing.assert_array_equal(pa.demand_K, pb.demand_K)
    assert pa.ms == pb.ms
    assert (pa.sums is None) == (pb.sums is None)
    if pa.sums is not None:
        for x, y in zip(pa.sums, pb.sums, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of native.burst_step."""
    return counted(monkeypatch, native, "burst_step")


def test_the_fused_step_gives_what_the_calls_it_replaces_give(use_lib, fused_calls):
    """On 250 random layer calls, each on a random rank: decide through the engine's
    RankSplitter (one C call) equals decide through a split that is not one (the decision, the
    splitter's split of the padded counts, slot_order), whatever the bursts."""
    rng = np.random.default_rng(3)
    made = several = 0
    for i in range(250):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        N = c.shape[0]
        rank = int(rng.integers(0, N))
        sp = RankSplitter(S, rank, p.ranks_per_node, method)
        counts, load_R, planned = _inputs(c, slots, S, rank, p.ranks_per_node, p, method)
        policy = burst_run.BurstPolicy(max(B, 1), thr, method)
        before = len(fused_calls)
        got = burst_run.decide(_layer(slots, S, sp), policy, counts, load_R, p, planned)
        ran = len(fused_calls) > before
        want = burst_run.decide(_layer(slots, S, _wrapped(sp)), policy, counts, load_R, p, planned)
        assert len(fused_calls) == before + ran  # the other layer's split is no RankSplitter
        try:
            _same(got, want)
        except AssertionError as e:
            raise AssertionError(f"case {i}: N={N} S={S} rank={rank} {method} {p}: {e}") from e
        if want is not None:
            assert ran
            made += 1
            several += want.slots_per_rank > S + 1
    assert made >= 60, made  # the cases make bursts, several per rank in some
    assert several >= 5, several


def test_every_rank_gets_its_own_part_of_the_same_bursts(use_lib):
    """On a hot layer of 16 ranks in nodes of 8, each rank's fused step makes the same bursts,
    and the ranks' splits are the parts of one split: what every rank sends to each slot sums
    to what that slot receives, and each rank's load is the same vector."""
    rng = np.random.default_rng(11)
    N, E, S, rpn = 16, 32, 4, 8
    p_E = np.ones(E)
    p_E[[3, 17]] = 30.0
    c = rng.multinomial(8192, p_E / p_E.sum(), size=N).astype(np.int64)
    slots = np.repeat(np.arange(E), 2)  # two replicas each; the two hot experts overloaded
    from native_cases import cost_params

    p = cost_params(N, rpn, "slow")
    plans, sends, recvs, loads = [], [], [], []
    for r in range(N):
        counts, load_R, planned = _inputs(c, slots, S, r, rpn, p, "auto")
        lb = burst_run.decide(
            _layer(slots, S, RankSplitter(S, r, rpn, "auto")),
            burst_run.BurstPolicy(1, 1.1, "auto"),
            counts,
            load_R,
            p,
            planned,
        )
        assert lb is not None and lb.plan.count > 0
        plans.append(lb.plan)
        sends.append(lb.split.send_K)
        recvs.append(lb.split.recv_QS)
        loads.append(lb.split.load_R)
    for pl in plans[1:]:
        np.testing.assert_array_equal(pl.slots_K, plans[0].slots_K)
        np.testing.assert_array_equal(pl.dst_C, plans[0].dst_C)
    Sx = plans[0].slots_per_rank
    flow = torch.stack(sends)  # [Q, K']: what each source sends to each slot
    for r in range(N):  # rank r's columns, as every source sends them and as r receives them
        assert torch.equal(flow[:, r * Sx : (r + 1) * Sx], recvs[r])
        assert torch.equal(loads[r], loads[0])
    assert torch.equal(flow.sum(0).reshape(N, Sx).sum(1), loads[0])
    assert int(flow.sum()) == int(c.sum())


def test_it_runs_only_where_the_layer_splits_as_the_engine_does(use_lib, fused_calls, monkeypatch):
    """Another split function, another method or node grouping than the policy's, no planned
    split, or the library turned off: the calls of the Python path run, with the same result."""
    rng = np.random.default_rng(5)
    while True:
        c, slots, S, _, rpn, p, _, _ = burst_case(rng)
        if p.prices_compute and c.shape[0] > 1:
            break
    counts, load_R, planned = _inputs(c, slots, S, 0, p.ranks_per_node, p, "auto")
    policy = burst_run.BurstPolicy(1, 1.0, "auto")
    want = burst_run.decide(
        _layer(slots, S, RankSplitter(S, 0, p.ranks_per_node, "auto")),
        policy,
        counts,
        load_R,
        p,
        planned,
    )
    assert len(fused_calls) == 1
    sp = RankSplitter(S, 0, p.ranks_per_node, "auto")
    fast = RankSplitter(S, 0, p.ranks_per_node, "fast")
    other = RankSplitter(S, 0, p.ranks_per_node + 1, "auto")
    for layer, ref, pl in (
        (_layer(slots, S, _wrapped(sp)), None, planned),
        (_layer(slots, S, sp), None, None),
        (_layer(slots, S, fast), _layer(slots, S, _wrapped(fast)), planned),
        (_layer(slots, S, other), _layer(slots, S, _wrapped(other)), planned),
    ):
        if ref is None:  # the engine's split, where the step does not run: the same bursts
            _same(burst_run.decide(layer, policy, counts, load_R, p, pl), want)
            continue
        try:  # another split: what the calls make with it (a refusal, where they refuse)
            expect = burst_run.decide(ref, policy, counts, load_R, p, pl)
        except ValueError as e:
            with pytest.raises(ValueError, match="ranks_per_node"):
                burst_run.decide(layer, policy, counts, load_R, p, pl)
            assert "ranks_per_node" in str(e)
            continue
        _same(burst_run.decide(layer, policy, counts, load_R, p, pl), expect)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    _same(burst_run.decide(_layer(slots, S, sp), policy, counts, load_R, p, planned), want)
    assert len(fused_calls) == 1


def _wrapped(sp):
    """sp behind a function: a split that is not the engine's RankSplitter."""
    return lambda *a, **k: sp(*a, **k)


def test_the_fused_step_refuses_a_split_that_loses_tokens(use_lib):
    """The C step checks the enlarged split as splitter._conserves does: with the library's
    test fault on (one token taken from what the rank sends), decide raises and names it."""
    from native_cases import cost_params

    N, E, S, rpn = 4, 8, 2, 0
    c = np.full((N, E), 10, dtype=np.int64)
    c[:, 0] = 400  # one hot expert on one rank
    slots = np.arange(E)
    p = cost_params(N, rpn, "slow")
    counts, load_R, planned = _inputs(c, slots, S, 1, rpn, p, "auto")
    layer = _layer(slots, S, RankSplitter(S, 1, rpn, "auto"))
    policy = burst_run.BurstPolicy(1, 1.1, "auto")
    assert burst_run.decide(layer, policy, counts, load_R, p, planned) is not None
    fault = ctypes.c_int64.in_dll(native.library(), "smoe_fault_tokens")
    fault.value = 1
    try:
        with pytest.raises(native.NativeError, match="does not conserve the counts"):
            burst_run.decide(layer, policy, counts, load_R, p, planned)
    finally:
        fault.value = 0
    assert burst_run.decide(layer, policy, counts, load_R, p, planned) is not None


def test_each_step_has_memory_of_its_own(use_lib):
    """The one-call step writes each result into a fresh buffer (carved from a slab): the
    LayerBursts returned before are left as they were by the calls after them, and each equals
    what the calls it replaces give."""
    from native_cases import cost_params

    N, E, S, rpn = 8, 16, 2, 4
    p = cost_params(N, rpn, "slow")
    slots = np.arange(N * S) % E
    layer = _layer(slots, S, RankSplitter(S, 2, rpn, "auto"))
    policy = burst_run.BurstPolicy(1, 1.1, "auto")
    rng = np.random.default_rng(9)
    kept = []
    for i in range(12):
        p_E = np.ones(E)
        p_E[rng.choice(E, 2, replace=False)] = 25.0
        c = rng.multinomial(4096, p_E / p_E.sum(), size=N).astype(np.int64)
        counts, load_R, planned = _inputs(c, slots, S, 2, rpn, p, "auto")
        got = burst_run.decide(layer, policy, counts, load_R, p, planned)
        want = burst_run.decide(_layer(slots, S, _wrapped(layer.split)), policy, counts, load_R,
                                p, planned)  # fmt: skip
        assert got is not None, i  # a hot pair of experts on one replica each: bursts
        kept.append((got, want))
    for got, want in kept:
        _same(got, want)


def test_a_step_refuses_a_placement_it_could_not_read_safely(use_lib):
    """burst_step refuses a rank outside the ranks or no burst slots, takes the Python path for
    arrays of another kind, and the C checks the placement's ids on every call: ids outside
    the experts are refused, never read."""
    from native_cases import cost_params

    p = cost_params(4, 0, "slow")
    c = np.full((4, 8), 10, dtype=np.int64)
    c[:, 0] = 400  # one hot expert on one rank
    slots = np.arange(8)
    counts, load_R, planned = _inputs(c, slots, 2, 1, 0, p, "auto")

    def step(sl, B=1, rank=1):
        return native.burst_step(counts, sl, 2, B, p, 1.1, "auto", load_R, planned, rank, 0,
                                 "auto")  # fmt: skip

    plan, _, _ = step(slots)
    assert plan[0] > 2  # bursts made
    for change in ({"rank": 4}, {"B": 0}):
        with pytest.raises(ValueError, match="cannot run"):
            step(slots, **change)
    assert step(slots.astype(np.int32)) is None  # the Python path
    assert step(slots[:-1]) is None
    for bad in (8, -1):
        slots[3] = bad
        with pytest.raises(native.NativeError, match="internal check failed"):
            step(slots)
