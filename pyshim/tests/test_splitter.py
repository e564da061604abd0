"""The engine's use of the split: the checks it makes of every layer's split before it runs, and
the plan indexes it keeps across layer calls.

Shape legend: N ranks (Q: source rank), E experts, S slots per rank, K = N*S slots.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swiftmoe.engine import native, split
from swiftmoe.engine.splitter import RankSplitter
from swiftmoe.engine.splitter import _conserves as conserves

# 4 ranks of 3 slots; rank 1 holds expert 2 twice, every rank holds each of its others once.
N, E, S = 4, 6, 3
SLOTS = [0, 1, 2, 2, 2, 3, 4, 5, 0, 1, 3, 5]
COUNTS = torch.tensor(
    [[9, 4, 30, 2, 5, 1], [3, 8, 25, 6, 0, 7], [5, 5, 40, 1, 9, 3], [2, 6, 35, 4, 4, 8]]
)


def _split(r: int):
    return split.split_tokens_for_rank(COUNTS, SLOTS, S, r)


NATIVE = [False, pytest.param(True, marks=pytest.mark.skipif(
    not native.available(), reason="needs the native library (make build)"
))]  # fmt: skip


@pytest.mark.parametrize("use_lib", NATIVE)
def test_conserves_accepts_the_split_and_refuses_each_broken_invariant(use_lib) -> None:
    """The checks pass every rank's real split and fail each tampered one: a token not sent, a
    negative amount, an expert's slots on the rank taking more of a source's tokens together
    than the source has (each slot alone within it), one slot taking too many, a wrong load.
    In NumPy and in C (``native.check_rank_split``), which must agree on every case."""
    slots_K = np.array(SLOTS)

    def _conserves(*a):
        return conserves(*a, native=use_lib)

    for r in range(N):
        assert _conserves(COUNTS, slots_K, _split(r), r, S), r
    r = 1
    rs = _split(r)

    def with_recv(recv):
        load = rs.load_R.clone()
        load[r] = int(recv.sum())  # the load agrees: only the per-expert check can fail
        return rs._replace(recv_QS=recv, load_R=load)

    send = rs.send_K.clone()
    send[int(torch.argmax(send))] -= 1
    assert not _conserves(COUNTS, slots_K, rs._replace(send_K=send), r, S)
    recv = rs.recv_QS.clone()
    recv[0, 0] = -1
    assert not _conserves(COUNTS, slots_K, with_recv(recv), r, S)
    # Rank 1's slots 0 and 1 hold expert 2: all of source 0's tokens in one, one more in the other.
    recv = rs.recv_QS.clone()
    recv[0, 0], recv[0, 1] = COUNTS[0, 2], 1
    assert not _conserves(COUNTS, slots_K, with_recv(recv), r, S)
    recv[0, 1] = 0
    assert _conserves(COUNTS, slots_K, with_recv(recv), r, S)  # together within: it passes
    recv = rs.recv_QS.clone()
    recv[2, 2] = COUNTS[2, 3] + 1  # slot 2 holds expert 3
    assert not _conserves(COUNTS, slots_K, with_recv(recv), r, S)
    load = rs.load_R.clone()
    load[r] += 1
    assert not _conserves(COUNTS, slots_K, rs._replace(load_R=load), r, S)


def test_the_splitter_checks_a_plan_once_and_still_refuses_a_bad_one() -> None:
    """A plan in force is indexed once, whatever form it comes in (list, int64 or int32 array,
    tensor); the same bytes in another shape, or a plan with an expert out of range, are refused
    on every call, never served from the cache."""
    cache = split.PlanIndexCache()
    first = cache.index(SLOTS, S, N, E)
    for form in (
        np.array(SLOTS, dtype=np.int64),
        np.array(SLOTS, dtype=np.int32),
        np.array(SLOTS, dtype=np.int32),  # now a hit under its own bytes
        torch.tensor(SLOTS),
    ):
        assert cache.index(form, S, N, E) is first
    with pytest.raises(ValueError, match="1-D"):
        cache.index(np.array(SLOTS).reshape(N, S), S, N, E)
    bad = np.array(SLOTS)
    bad[4] = E
    for _ in range(2):
        with pytest.raises(ValueError, match=r"slots\[4\] holds expert 6"):
            cache.index(bad, S, N, E)
    with pytest.raises(ValueError, match="want counts_QE.shape"):
        cache.index(torch.tensor(SLOTS), S, N + 1, E)  # the same bytes for more ranks
    wider = cache.index(torch.tensor(SLOTS), S, N, E + 1)  # the same bytes, one more expert
    assert wider is not first and wider.E == E + 1


def test_the_splitter_runs_the_checked_split() -> None:
    """What the engine runs per layer call is the split itself, under the plan's cached index."""
    for r in range(N):
        got = RankSplitter(S, r, 0, "auto")(COUNTS, torch.tensor(SLOTS), 0)
        want = _split(r)
        assert torch.equal(got.send_K, want.send_K) and torch.equal(got.recv_QS, want.recv_QS)


@pytest.mark.parametrize("native", [False, True])
def test_an_expert_with_tokens_and_no_slot_is_refused(native, use_lib) -> None:
    """Both splits (NumPy, and C after the checks it shares) refuse a plan that leaves an expert
    with tokens no slot, naming it and its tokens; an expert with neither is fine."""
    slots = [e if e != 4 else 3 for e in SLOTS]  # expert 4 loses its only slot
    counts = COUNTS.clone()
    with pytest.raises(ValueError, match="expert 4 has 18 tokens but no slot in the plan"):
        split.split_tokens_for_rank(counts, slots, S, 0, native=native)
    counts[:, 4] = 0
    got = split.split_tokens_for_rank(counts, slots, S, 0, native=native)
    assert int(got.send_K.sum()) == int(counts[0].sum())


@pytest.mark.skipif(not native.available(), reason="needs the native library (make build)")
def test_native_check_agrees_with_numpy_on_random_tampering() -> None:
    """On random splits (ranks holding an expert once or twice) and 600 random changes of one
    amount by -1 or +1 (or of the load), the C check and the NumPy check give the same verdict,
    and both pass every untouched split; a tensor that is not int64 goes to NumPy."""
    rng = np.random.default_rng(7)
    verdicts = {True: 0, False: 0}
    for case in range(60):
        n, e, s = int(rng.integers(2, 6)), int(rng.integers(2, 9)), int(rng.integers(1, 4))
        slots = np.concatenate([np.arange(e), rng.integers(0, e, size=n * s)])[: n * s]
        slots = rng.permutation(slots) if n * s >= e else np.arange(n * s) % e
        counts = torch.from_numpy(rng.integers(0, 30, size=(n, e)))
        counts[:, np.setdiff1d(np.arange(e), slots)] = 0  # an expert with no slot has no tokens
        r = int(rng.integers(0, n))
        rs = split.split_tokens_for_rank(counts, slots.tolist(), s, r)
        for native_ in (True, False):
            assert conserves(counts, slots, rs, r, s, native=native_), case
        for _ in range(10):
            field = ("send_K", "recv_QS", "load_R")[int(rng.integers(0, 3))]
            t = getattr(rs, field).clone()
            t.view(-1)[int(rng.integers(0, t.numel()))] += int(rng.choice([-1, 1]))
            bad = rs._replace(**{field: t})
            got = conserves(counts, slots, bad, r, s, native=True)
            assert got == conserves(counts, slots, bad, r, s, native=False), (case, field)
            verdicts[got] += 1
    assert verdicts[False] > 300  # most changes break an invariant; some stay within them
    as_int32 = rs._replace(send_K=rs.send_K.to(torch.int32))
    with pytest.raises(RuntimeError, match="the native split check cannot run"):
        conserves(counts, slots, as_int32, r, s, native=True)
    assert conserves(counts, slots, as_int32, r, s)  # None: NumPy checks it


def test_slots_index_agrees_with_the_plan_index_and_splits_alike() -> None:
    """A SlotsIndex (what a burst layer call's enlarged placement gets) has the PlanIndex's
    ranks per expert and held experts on random plans (experts twice on a rank, experts with no
    slot), refuses what index_plan refuses, and splits to the same RankSplit in C and, made a
    whole index, in NumPy."""
    rng = np.random.default_rng(3)
    for case in range(80):
        n, e, s = int(rng.integers(1, 6)), int(rng.integers(1, 10)), int(rng.integers(1, 5))
        slots = rng.integers(0, e, size=n * s)
        light, whole = split.index_slots(slots, s, n, e), split.index_plan(slots, s, n, e)
        np.testing.assert_array_equal(light.deg_E, whole.deg_E)
        assert (light.held_H is None) == (whole.held_H is None), case
        if whole.held_H is not None:
            np.testing.assert_array_equal(light.held_H, whole.held_H)
        counts = torch.from_numpy(rng.integers(0, 20, size=(n, e)))
        counts[:, light.deg_E == 0] = 0
        r = int(rng.integers(0, n))
        want = split.split_tokens_for_rank(counts, slots, s, r, native=False)
        for native_ in (False, True) if native.available() else (False,):
            got = split.split_tokens_for_rank(counts, light, s, r, native=native_)
            for f in ("send_K", "recv_QS", "load_R"):
                assert torch.equal(getattr(got, f), getattr(want, f)), (case, native_, f)
    with pytest.raises(ValueError, match=r"slots\[4\] holds expert 6"):
        split.index_slots(np.array([0, 1, 2, 3, 6, 5]), 3, 2, 6)
    with pytest.raises(ValueError, match="the SlotsIndex is of N=2 ranks"):
        split.split_tokens_for_rank(
            torch.ones(3, 6, dtype=torch.int64), split.index_slots(list(range(6)), 3, 2, 6), 3, 0
        )


@pytest.fixture
def one_calls(monkeypatch):
    """Counts the calls of native.layer_split (the splitter's one-call split)."""
    from native_cases import counted

    return counted(monkeypatch, native, "layer_split")


def test_the_one_call_split_is_the_split_and_checks_it_replaces(use_lib, one_calls) -> None:
    """Where the library is loaded, the splitter splits a planned placement in one C call
    (native.layer_split: the counts' checks, the split, its conservation checks): on 150 random
    layers, every field equals split_tokens_for_rank's on every rank, priced or not."""
    from native_cases import burst_case

    rng = np.random.default_rng(8)
    priced = 0
    for i in range(150):
        c, slots, S_, _, _, p, _, method = burst_case(rng)
        rpn = p.ranks_per_node
        counts = torch.from_numpy(c)
        for r in range(c.shape[0]):
            before = len(one_calls)
            got = RankSplitter(S_, r, rpn, method)(counts, torch.as_tensor(slots), i, cost=p)
            assert len(one_calls) == before + 1
            want = split.split_tokens_for_rank(counts, slots, S_, r, rpn, method, p)
            for f in ("send_K", "recv_QS", "load_R"):
                a, b = getattr(got, f), getattr(want, f)
                assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b), (i, r, f)
            assert got.node_local == want.node_local
            np.testing.assert_array_equal(got.planned.demand_K, want.planned.demand_K)
            assert got.planned.ms == want.planned.ms
            assert (got.planned.sums is None) == (want.planned.sums is None)
            if want.planned.sums is not None:
                priced += 1
                for a, b in zip(got.planned.sums, want.planned.sums, strict=True):
                    np.testing.assert_array_equal(a, b)
    assert priced > 100, priced  # stage 1 priced in many


def test_the_one_call_split_refuses_what_the_python_checks_refuse(use_lib, one_calls) -> None:
    """Negative counts, tokens for an expert without a slot, and cost parameters of another node
    grouping are refused with the Python path's words; counts of another dtype take that path."""
    from native_cases import cost_params

    sp = RankSplitter(S, 1, 0, "auto")
    bad = COUNTS.clone()
    bad[2, 4] = -3
    with pytest.raises(ValueError, match=r"counts_QE\[2, 4\] is -3; token counts cannot be"):
        sp(bad, torch.tensor(SLOTS), 0)
    orphan = [e if e != 4 else 3 for e in SLOTS]
    with pytest.raises(ValueError, match="expert 4 has 18 tokens but no slot in the plan"):
        sp(COUNTS, torch.tensor(orphan), 0)
    idle = COUNTS.clone()
    idle[:, 4] = 0  # without tokens an expert needs no slot: split as the Python path splits
    got = sp(idle, torch.tensor(orphan), 0)
    want = split.split_tokens_for_rank(idle, orphan, S, 1)
    assert torch.equal(got.send_K, want.send_K) and torch.equal(got.recv_QS, want.recv_QS)
    assert torch.equal(got.load_R, want.load_R)
    assert len(one_calls) == 3
    p = cost_params(N, 2, "slow")
    with pytest.raises(ValueError, match="pass the cost parameters of this job"):
        sp(COUNTS, torch.tensor(SLOTS), 0, cost=p)
    got = sp(COUNTS.to(torch.int32), torch.tensor(SLOTS), 0)  # int32: the Python path
    want = split.split_tokens_for_rank(COUNTS, SLOTS, S, 1)
    assert torch.equal(got.send_K, want.send_K) and torch.equal(got.recv_QS, want.recv_QS)


def test_the_one_call_split_refuses_a_split_that_loses_tokens(use_lib) -> None:
    """Its conservation checks run on what it is about to return: with the library's test fault
    on (a token taken from what the rank sends), the layer call stops and names the layer."""
    import ctypes

    sp = RankSplitter(S, 1, 0, "auto")
    assert sp(COUNTS, torch.tensor(SLOTS), 5) is not None
    fault = ctypes.c_int64.in_dll(native.library(), "smoe_fault_tokens")
    fault.value = 1
    try:
        with pytest.raises(RuntimeError, match="split for layer 5 does not conserve the counts"):
            sp(COUNTS, torch.tensor(SLOTS), 5)
    finally:
        fault.value = 0
    assert sp(COUNTS, torch.tensor(SLOTS), 5) is not None


def test_a_kept_index_of_another_shape_is_refused(use_lib) -> None:
    """A caller that keeps the splitter's index (RankSplitter.index) passes it in place of the
    placement; one made for other counts is refused by name, never read by the C split."""
    sp = RankSplitter(S, 1, 0, "auto")
    plan = sp.index(torch.tensor(SLOTS), N, E)
    assert plan is sp.index(np.array(SLOTS), N, E)  # the cache's entry
    got = sp(COUNTS, plan, 0)
    want = split.split_tokens_for_rank(COUNTS, SLOTS, S, 1)
    assert torch.equal(got.send_K, want.send_K) and torch.equal(got.recv_QS, want.recv_QS)
    wider = torch.cat((COUNTS, torch.zeros(N, 1, dtype=COUNTS.dtype)), dim=1)
    with pytest.raises(ValueError, match=r"E=6 experts, but counts_QE is \[4, 7\]"):
        sp(wider, plan, 0)


def test_each_split_has_memory_of_its_own(use_lib, one_calls) -> None:
    """The one-call split writes each result into a fresh buffer (carved from a slab): the
    splits a splitter returned before are left as they were by the calls after them, and each
    equals split_tokens_for_rank's split of its counts."""
    from native_cases import cost_params

    sp = RankSplitter(S, 1, 2, "auto")
    plan = sp.index(torch.tensor(SLOTS), N, E)
    p = cost_params(N, 2, "slow")
    rng = np.random.default_rng(4)
    kept = []
    for _ in range(40):
        counts = torch.from_numpy(rng.integers(0, 50, size=(N, E)))
        got = sp(counts, plan, 0, cost=p)
        want = split.split_tokens_for_rank(counts, SLOTS, S, 1, 2, "auto", p, native=False)
        kept.append((got, want))
    assert len(one_calls) == 40
    for got, want in kept:  # not overwritten by the calls after them
        for f in ("send_K", "recv_QS", "load_R"):
            assert torch.equal(getattr(got, f), getattr(want, f)), f
        np.testing.assert_array_equal(got.planned.demand_K, want.planned.demand_K)
        assert got.planned.ms == want.planned.ms


def test_the_one_call_split_checks_the_placement_it_reads(use_lib) -> None:
    """The C reads the placement by its address (kept on the splitter's index) and checks its
    ids on every call: an id outside the experts is refused, never read."""
    slots = np.array(SLOTS, dtype=np.int64)
    want = split.split_tokens_for_rank(COUNTS, SLOTS, S, 1, native=False)
    got = native.layer_split(COUNTS, slots, S, 1, 0, "auto", None)
    assert np.array_equal(got[0], want.send_K.numpy())
    for bad in (E, -1):
        slots[5] = bad
        with pytest.raises(native.NativeError, match="internal check failed"):
            native.layer_split(COUNTS, slots, S, 1, 0, "auto", None)
    with pytest.raises(ValueError, match="int64 C-contiguous placement of 12 slots"):
        native.layer_split(COUNTS, slots[:-1], S, 1, 0, "auto", None)
    assert native.layer_split(COUNTS.to(torch.int32), slots, S, 1, 0, "auto", None) is None
