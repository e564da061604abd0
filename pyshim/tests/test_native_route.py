"""The C port of one rank's split (swiftmoe/engine/native/route.c, native.split_for_rank) against
split_tokens_for_rank: the same send_K, recv_QS, load_R and node_local for every rank, on random
skewed cases (hot experts on many ranks, idle experts without a slot, a padded expert id, every
node grouping, stage 1 priced or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_cases import cost_params, skewed_case

from swiftmoe.engine import native
from swiftmoe.engine.split import split_rank_loads, split_tokens_for_rank


def _case(rng, hot: bool):
    """(c_QE, slots_K, S, rpn, method, cost): native_cases.skewed_case (with hot, one heavy
    expert on 9..N ranks; sometimes a padded expert id: the last, no tokens, no slot), a method
    and no cost parameters, H200-like ones with slow or fast links between nodes, or tiny ones
    (compute nearly free next to the links, so the node-local amounts often win)."""
    c, slots, S, rpn = skewed_case(rng, hot, hot_s_last=True, pad=True)
    method = str(rng.choice(["fast", "auto"]))
    kind = str(rng.choice(["none", "slow", "fast", "tiny", "tiny"]))
    cost = None if kind == "none" else cost_params(c.shape[0], rpn, kind)
    return c, slots, S, rpn, method, cost


def _ranks(rng, N):
    """Every rank, or for a big N the first, the last and a sample of the others."""
    if N <= 16:
        return range(N)
    return sorted({0, N - 1, *rng.choice(N, 6, replace=False).tolist()})


def _check(seed, n_cases):
    """Compares every case's ranks (C against NumPy); returns how often stage 1 kept tokens in
    their node and not."""
    rng = np.random.default_rng(seed)
    local = [0, 0]
    for i in range(n_cases):
        c, slots, S, rpn, method, cost = _case(rng, hot=i % 3 == 0)
        for r in _ranks(rng, c.shape[0]):
            want = split_tokens_for_rank(c, slots, S, r, rpn, method, cost, native=False)
            got = native.split_for_rank(c, slots, S, r, rpn, method, cost)
            where = f"case {i} (seed {seed}) rank {r}: N={c.shape[0]} E={c.shape[1]} S={S} "
            where += f"rpn={rpn} {method} {cost}"
            assert got is not None, where
            send, recv, load, node_local, (demand, ms, sums) = got
            assert recv.shape == (c.shape[0], S), where
            for name, a, b in (
                ("send_K", send, want.send_K.numpy()),
                ("recv_QS", recv, want.recv_QS.numpy()),
                ("load_R", load, want.load_R.numpy()),
                ("planned.demand_K", demand, want.planned.demand_K),
            ):
                assert a.dtype == np.int64, (where, name)
                np.testing.assert_array_equal(a, b, err_msg=f"{where}: {name}")
            assert node_local == want.node_local, where
            # The split's price where stage 1 was priced, bit for bit (None where not).
            assert (ms is None) == (want.planned.ms is None), where
            if ms is not None:
                assert ms == want.planned.ms, where
                for a, b in zip(sums, want.planned.sums, strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"{where}: planned.sums")
            local[node_local] += 1
    return local


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_route_matches_numpy(use_lib, seed):
    assert native.available(), native.why()
    local = _check(seed, 120)
    # Stage 1 was priced with both outcomes: the node-local amounts won and lost.
    assert local[True] >= 20 and local[False] >= 200, local


def test_native_route_conserves_tokens(use_lib):
    """Over all ranks: each rank's row sends exactly its counts of each expert, to that expert's
    slots; the rows' sums per expert are the counts per expert; each rank's columns are the
    other ranks' rows; what the slots receive is load_R."""
    rng = np.random.default_rng(7)
    for i in range(60):
        c, slots, S, rpn, method, cost = _case(rng, hot=i % 2 == 0)
        N, E = c.shape
        out = [native.split_for_rank(c, slots, S, r, rpn, method, cost) for r in range(N)]
        send_QK = np.stack([o[0] for o in out])
        sent_QE = np.stack([np.bincount(slots, row, minlength=E) for row in send_QK])
        np.testing.assert_array_equal(sent_QE.astype(np.int64), c)
        np.testing.assert_array_equal(
            np.bincount(slots, send_QK.sum(axis=0), minlength=E).astype(np.int64), c.sum(axis=0)
        )
        recv_QK = np.concatenate([o[1] for o in out], axis=1)
        np.testing.assert_array_equal(recv_QK, send_QK)
        load = out[0][2]
        np.testing.assert_array_equal(send_QK.sum(axis=0).reshape(N, S).sum(axis=1), load)
        for o in out[1:]:
            np.testing.assert_array_equal(o[2], load)
            assert o[3] == out[0][3]


def test_split_for_rank_applies_to_fast_and_auto_only(use_lib, monkeypatch):
    c = np.array([[900, 10, 10, 0], [900, 10, 10, 0]], dtype=np.int64)
    slots = np.array([0, 1, 0, 2], dtype=np.int64)
    for method in ("exact", "even"):
        assert native.split_for_rank(c, slots, 2, 0, 0, method, None) is None
    send, recv, load, local, _ = native.split_for_rank(c, slots, 2, 1, 0, "auto", None)
    want = split_tokens_for_rank(c, slots, 2, 1, 0, "auto", native=False)
    np.testing.assert_array_equal(send, want.send_K.numpy())
    np.testing.assert_array_equal(recv, want.recv_QS.numpy())
    np.testing.assert_array_equal(load, want.load_R.numpy())
    assert local is False
    with pytest.raises(ValueError, match="rank"):
        native.split_for_rank(c, slots, 2, 2, 0, "fast", None)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    assert native.split_for_rank(c, slots, 2, 0, 0, "fast", None) is None


def test_the_engine_split_and_rank_loads_run_the_native_code(use_lib, monkeypatch):
    """split_tokens_for_rank and split_rank_loads call the C when it is loaded (native=None),
    with the NumPy code's results; native=True without the library says why."""
    rng = np.random.default_rng(11)
    calls = []
    real = native.split_for_rank
    monkeypatch.setattr(native, "split_for_rank", lambda *a: calls.append(1) or real(*a))
    for i in range(40):
        c, slots, S, rpn, method, cost = _case(rng, hot=i % 2 == 0)
        want = split_rank_loads(c, slots, S, rpn, method, cost, native=False)
        n = len(calls)
        torch.testing.assert_close(split_rank_loads(c, slots, S, rpn, method, cost), want)
        r = int(rng.integers(c.shape[0]))
        got = split_tokens_for_rank(c, slots, S, r, rpn, method, cost)
        assert len(calls) == n + 2
        ref = split_tokens_for_rank(c, slots, S, r, rpn, method, cost, native=False)
        for f in ("send_K", "recv_QS", "load_R"):
            assert torch.equal(getattr(got, f), getattr(ref, f)), f
        assert got.node_local == ref.node_local
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    with pytest.raises(RuntimeError, match="turned off"):
        split_tokens_for_rank(c, slots, S, 0, rpn, method, cost, native=True)
