"""The engine's use of the split: the checks it makes of every layer's split before it runs, and
the plan indexes it keeps across layer calls.

Shape legend: N ranks (Q: source rank), E experts, S slots per rank, K = N*S slots.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swiftmoe.engine import split
from swiftmoe.engine.splitter import RankSplitter, _conserves

# 4 ranks of 3 slots; rank 1 holds expert 2 twice, every rank holds each of its others once.
N, E, S = 4, 6, 3
SLOTS = [0, 1, 2, 2, 2, 3, 4, 5, 0, 1, 3, 5]
COUNTS = torch.tensor(
    [[9, 4, 30, 2, 5, 1], [3, 8, 25, 6, 0, 7], [5, 5, 40, 1, 9, 3], [2, 6, 35, 4, 4, 8]]
)


def _split(r: int):
    return split.split_tokens_for_rank(COUNTS, SLOTS, S, r)


def test_conserves_accepts_the_split_and_refuses_each_broken_invariant() -> None:
    """The checks pass every rank's real split and fail each tampered one: a token not sent, a
    negative amount, an expert's slots on the rank taking more of a source's tokens together
    than the source has (each slot alone within it), one slot taking too many, a wrong load."""
    slots_K = np.array(SLOTS)
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
