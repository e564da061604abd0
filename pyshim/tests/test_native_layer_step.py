"""A layer call's whole host step in one C call (``native.layer_step``, run by
``burst_run.split_and_decide`` through ``RankSplitter.step``) gives what the two calls it
replaces give: the split of the planned placement, and past the threshold the bursts and the
split over the enlarged placement; and it refuses what they refuse, in their words."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from native_cases import burst_case, cost_params, counted
from test_native_burst_step import _layer, _same, _wrapped

from swiftmoe.engine import burst_run, native
from swiftmoe.engine.splitter import RankSplitter


def _same_split(a, b) -> None:
    for f in ("send_K", "recv_QS", "load_R"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y), f
    assert a.node_local == b.node_local
    np.testing.assert_array_equal(a.planned.demand_K, b.planned.demand_K)
    assert a.planned.ms == b.planned.ms
    assert (a.planned.sums is None) == (b.planned.sums is None)
    if a.planned.sums is not None:
        for x, y in zip(a.planned.sums, b.planned.sums, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def step_calls(monkeypatch):
    """Counts the calls of native.layer_step."""
    return counted(monkeypatch, native, "layer_step")


def test_the_one_call_step_gives_what_the_two_calls_give(use_lib, step_calls):
    """On 300 random layer calls, each on a random rank: split_and_decide through the engine's
    RankSplitter (one C call) equals the splitter's call followed by decide through a split
    that is not one: no bursts (under the threshold, or none paying) and bursts alike."""
    rng = np.random.default_rng(17)
    made = quiet = 0
    for i in range(300):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        N = c.shape[0]
        rank = int(rng.integers(0, N))
        sp = RankSplitter(S, rank, p.ranks_per_node, method)
        policy = burst_run.BurstPolicy(max(B, 1), thr, method)
        counts, slots_t = torch.from_numpy(c), torch.as_tensor(slots)
        before = len(step_calls)
        rs, got = burst_run.split_and_decide(_layer(slots, S, sp), policy, counts, slots_t, p)
        assert len(step_calls) == before + 1, i  # the engine's splitter: one call
        other = _layer(slots, S, _wrapped(RankSplitter(S, rank, p.ranks_per_node, method)))
        rs_w, want = burst_run.split_and_decide(other, policy, counts, slots_t, p)
        assert len(step_calls) == before + 1  # a split that is not the engine's: two calls
        try:
            _same(got, want)
            _same_split(rs, rs_w)
            if got is not None:
                assert rs is got.split and rs_w is want.split
        except AssertionError as e:
            raise AssertionError(f"case {i}: N={N} S={S} rank={rank} {method} {p}: {e}") from e
        made += want is not None
        quiet += want is None
    assert made >= 60 and quiet >= 60, (made, quiet)


def test_it_runs_only_where_the_split_is_the_decisions(use_lib, step_calls):
    """Another method or node grouping than the policy's, or no cost: the two calls run, with
    their result."""
    N, E, S, rpn = 8, 16, 2, 4
    p = cost_params(N, rpn, "slow")
    c = np.full((N, E), 10, dtype=np.int64)
    c[:, 3] = 900
    slots = np.arange(N * S) % E
    counts, slots_t = torch.from_numpy(c), torch.as_tensor(slots)
    policy = burst_run.BurstPolicy(1, 1.1, "auto")
    for sp in (RankSplitter(S, 1, rpn, "fast"), RankSplitter(S, 1, rpn + 2, "auto")):
        assert sp.step(counts, slots_t, 7, p, policy) is None
    sp = RankSplitter(S, 1, rpn, "auto")
    assert sp.step(counts, slots_t, 7, None, policy) is None
    assert not step_calls
    rs, got = burst_run.split_and_decide(_layer(slots, S, sp), policy, counts, slots_t, p)
    assert len(step_calls) == 1 and got is not None and rs is got.split


def test_it_refuses_what_the_split_refuses(use_lib):
    """A negative count and tokens for an expert without a slot are refused in the words of the
    splitter's own call; the split's checks refuse a split the library's test fault makes lose
    a token, with bursts and without."""
    N, E, S, rpn = 4, 8, 2, 0
    p = cost_params(N, rpn, "slow")
    sp = RankSplitter(S, 1, rpn, "auto")
    policy = burst_run.BurstPolicy(1, 1.1, "auto")
    negative = np.full((N, E), 10, dtype=np.int64)
    negative[2, 5] = -1
    orphan = np.full((N, E), 10, dtype=np.int64)  # expert 6 has no slot below, and tokens
    for c, slots in (
        (negative, np.arange(E)),
        (orphan, np.where(np.arange(E) == 6, 7, np.arange(E))),
    ):
        counts, slots_t = torch.from_numpy(c), torch.as_tensor(slots)
        with pytest.raises(ValueError) as two:
            sp(counts, slots_t, 7, cost=p)
        with pytest.raises(ValueError) as one:
            sp.step(counts, slots_t, 7, p, policy)
        assert str(one.value) == str(two.value)
    slots = np.arange(E)
    layer = _layer(slots, S, sp)
    hot = np.full((N, E), 10, dtype=np.int64)
    hot[:, 0] = 400  # one hot expert on one rank: bursts
    even = np.full((N, E), 10, dtype=np.int64)  # even loads: no decision
    fault = ctypes.c_int64.in_dll(native.library(), "smoe_fault_tokens")
    for c, bursts in ((hot, True), (even, False)):
        counts, slots_t = torch.from_numpy(c), torch.as_tensor(slots)
        rs, got = burst_run.split_and_decide(layer, policy, counts, slots_t, p)
        assert (got is not None) == bursts
        fault.value = 1
        try:
            with pytest.raises(RuntimeError, match="does not conserve the counts"):
                burst_run.split_and_decide(layer, policy, counts, slots_t, p)
        finally:
            fault.value = 0
