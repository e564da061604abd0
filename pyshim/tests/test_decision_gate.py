"""The burst decision's gate (``burst_run.DecisionGate``, ``plan_bursts``' ``gate``): a decision
runs only where the planned split's modelled step exceeds the step the layer's last decision
reached by more than the decision's host time, the same in C and NumPy, in the engine's one-call
step, and in the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_cases import burst_case
from test_native_burst import _same

from swiftmoe.engine import burst, burst_run, native
from swiftmoe.engine.splitter import RankSplitter


def test_gate_stops_a_decision_in_its_interval(use_lib):
    """On random layer calls that pass the threshold: a gate (lo, hi) around the planned split's
    price (``before_ms``) makes nothing and prices only that split, in C and NumPy alike; a gate
    just above or just below it changes nothing."""
    assert native.available(), native.why()
    rng = np.random.default_rng(5)
    stopped = kept = 0
    for i in range(200):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        args = (c, slots, S, B, rpn, p, thr, method)
        free = burst.plan_bursts(*args, native=False)
        if free.before_ms == 0:  # the threshold was not passed: no gate applies
            continue
        before = free.before_ms
        for gate in ((before, before), (0.5 * before, 2 * before)):
            for nat in (False, True):
                got = burst.plan_bursts(*args, native=nat, gate=gate)
                assert got.count == 0, (i, gate)
                assert got.before_ms == got.after_ms == before, (i, gate)
                np.testing.assert_array_equal(got.slots_K, np.asarray(slots, dtype=np.int64))
        stopped += 1
        up, down = np.nextafter(before, np.inf), np.nextafter(before, 0.0)
        for gate in ((up, 2 * before), (0.0, down)):
            for nat in (False, True):
                _same(burst.plan_bursts(*args, native=nat, gate=gate), free)
        kept += free.count > 0
    assert stopped >= 60 and kept >= 30, (stopped, kept)


def test_gate_must_be_an_interval():
    c, slots, S, B, rpn, p, thr, method = burst_case(np.random.default_rng(0))
    for bad in (float("nan"), 1.0, (1.0,), (0.0, float("nan")), ("0", 1.0)):
        with pytest.raises(ValueError, match="gate is"):
            burst.plan_bursts(c, slots, S, B, rpn, p, thr, method, gate=bad)


def test_one_call_step_applies_the_gate(use_lib):
    """``RankSplitter.step`` with a gate: the decision's before_ms and after_ms come back, and
    where the gate stops it, the split is the planned placement's, as without bursts."""
    rng = np.random.default_rng(11)
    seen = 0
    for _ in range(200):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        if method != "auto" or B < 1:
            continue
        sp = RankSplitter(S, int(rng.integers(c.shape[0])), rpn, method)
        policy = burst_run.BurstPolicy(B, thr, method)
        slots_t = torch.from_numpy(np.asarray(slots, dtype=np.int64))
        counts = torch.from_numpy(np.ascontiguousarray(c, dtype=np.int64))
        free = sp.step(counts, slots_t, 0, p, policy)
        assert free is not None
        rs, made, before, after = free
        if before == 0:
            assert made is None and after == 0
            continue
        if made is None:
            assert after == before
            continue
        assert after < before
        rs_g, made_g, before_g, after_g = sp.step(counts, slots_t, 0, p, policy, (after, before))
        assert made_g is None and before_g == after_g == before
        plain = sp(counts, slots_t, 0, cost=p)
        for a, b in zip(rs_g[:3], plain[:3], strict=True):
            assert torch.equal(a, b)
        seen += 1
    assert seen >= 20, seen


def test_gate_folds_decisions_between_iterations():
    g = burst_run.DecisionGate(window=3)
    assert g.limit(0) is None  # no history: every decision runs
    g.saw(0, 0.0, 0.0)  # threshold not passed: nothing recorded
    g.saw(0, 5.0, 3.0)  # ran, reached 3.0
    assert g.last_ran and g.limit(0) is None  # the gate changes only between iterations
    g.next_iteration(0.5)  # iteration 1
    assert g.limit(0) == (3.0, 3.5) and g.limit(1) is None
    g.saw(0, 3.4, 3.4)  # in the gate: stopped
    assert not g.last_ran
    g.saw(0, 2.9, 2.8)  # under the reference: the situation changed, it runs
    assert g.last_ran
    g.next_iteration(0.5)  # iteration 2: the lowest reached step of the window
    assert g.limit(0) == (2.8, 3.3)
    assert g.counts == {0: (1, 1)}  # iteration 1's decisions: one ran, one stopped
    g.saw(0, 4.0, 3.9)  # above: runs, reached 3.9, which does not raise the reference
    g.next_iteration(0.25)  # iteration 3
    assert g.limit(0) == (2.8, 3.05)
    g.next_iteration(0.25)  # iteration 4: 3.0 (reached in iteration 0) left the window
    assert g.limit(0) == (2.8, 3.05)
    g.next_iteration(0.25)  # iteration 5: so did 2.8 (iteration 1)
    assert g.limit(0) == (3.9, 4.15)
    g.next_iteration(0.25)  # iteration 6: nothing ran in the window: no gate
    assert g.limit(0) is None
    g.saw(0, 4.0, 3.0)
    g.next_iteration(0.0)  # no host time: no gate
    assert g.limit(0) is None


def test_clock_measures_what_a_decision_adds():
    clock = burst_run.DecisionClock()
    assert clock.next_iteration() == 0.0  # nothing measured yet
    clock.add(0.9e-3, ran=True)  # no call without a decision yet: the whole call counts
    assert clock.next_iteration() == pytest.approx(0.9)
    for t in (1.0e-3, 1.2e-3, 1.1e-3):
        clock.add(t, ran=True)
    for t in (0.1e-3, 0.2e-3):
        clock.add(t, ran=False)
    assert clock.next_iteration() == pytest.approx(0.5 * (0.9 + 1.1 - 0.15))
    clock.add(0.1e-3, ran=False)  # no decision ran: the estimate stays
    assert clock.next_iteration() == pytest.approx(0.925)
    clock.add(0.6e-3, ran=True)  # the latest calls without a decision are the baseline
    assert clock.next_iteration() == pytest.approx(0.5 * (0.925 + 0.5))


def test_policy_gates_with_the_figure_it_is_given():
    fixed = burst_run.BurstPolicy(1, 1.1, "auto", 0.3)
    assert fixed.clock is None and fixed.note_ms() == 0.3
    auto = burst_run.BurstPolicy(1, 1.1, "auto", "auto")
    assert auto.clock is not None and auto.note_ms() == 0.0
    auto.gate.saw(2, 4.0, 3.0)
    auto.next_iteration(0.7)  # rank 0's figure, the same on every rank
    assert auto.gate.limit(2) == pytest.approx((3.0, 3.7))
