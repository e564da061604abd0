"""The dispatch's index maps against loops that spell out what they mean, and the row gathers
whose backward is a gather by the inverse permutation against index_select's own backward.

Shape legend: T tokens, top-k K assignments each, A = T*K, E experts, N ranks (Q: source),
S slots per rank.
"""

from __future__ import annotations

import pytest
import torch

from swiftmoe.engine import dispatch as dp


def _case(seed: int, N: int, S: int, E: int, T: int, top_k: int):
    """A placement holding every expert, this rank's assignments and a split of them."""
    g = torch.Generator().manual_seed(seed)
    slots_K = torch.randint(0, E, (N * S,), generator=g)
    slots_K[torch.randperm(N * S, generator=g)[:E]] = torch.randperm(E, generator=g)
    e_A = torch.randint(0, E, (T * top_k,), generator=g)
    order_M, counts_E, _ = dp.order_by_expert(e_A, E, None)
    flow_K = torch.zeros(N * S, dtype=torch.long)
    for e in range(E):  # expert e's assignments over its slots, at random
        ks = (slots_K == e).nonzero().flatten()
        cuts = torch.sort(torch.randint(0, int(counts_E[e]) + 1, (len(ks) - 1,), generator=g))
        bounds = [0, *cuts.values.tolist(), int(counts_E[e])]
        for i, k in enumerate(ks.tolist()):
            flow_K[k] = bounds[i + 1] - bounds[i]
    flow_QS = torch.randint(0, 6, (N, S), generator=g)
    return slots_K, e_A, order_M, flow_K, flow_QS


@pytest.mark.parametrize("seed, N, S, E, T, top_k", [(0, 1, 4, 4, 9, 2), (1, 3, 2, 4, 17, 2),
                                                     (2, 4, 3, 5, 30, 3), (3, 2, 5, 3, 1, 1)])  # fmt: skip
def test_dispatch_maps_match_their_definitions(seed, N, S, E, T, top_k) -> None:
    slots_K, e_A, order_M, flow_K, flow_QS = _case(seed, N, S, E, T, top_k)
    perm_K, inv_K = dp.slot_order(slots_K.tolist())
    maps = dp.dispatch_maps(order_M, flow_K, perm_K, inv_K, flow_QS, T * top_k, S - 1)

    # Send order: slot by slot in increasing k; expert e's assignments, in order_M's order,
    # fill e's slots in increasing k.
    queue = {e: [a for a in order_M.tolist() if int(e_A[a]) == e] for e in range(E)}
    want_send = []
    for k, e in enumerate(slots_K.tolist()):
        take = int(flow_K[k])
        want_send += queue[e][:take]
        queue[e] = queue[e][take:]
    assert maps.send_A.tolist() == want_send
    assert maps.inv_A is not None and torch.equal(maps.send_A[maps.inv_A], torch.arange(T * top_k))

    # Received rows come by source, then slot; slot-major order is by slot, then source.
    rows = [(q, s, i) for q in range(N) for s in range(S) for i in range(int(flow_QS[q, s]))]
    slot_major = sorted(range(len(rows)), key=lambda j: (rows[j][1], rows[j][0], rows[j][2]))
    assert maps.to_slot.tolist() == slot_major
    assert torch.equal(maps.to_slot[maps.from_slot], torch.arange(len(rows)))
    assert maps.rows_S.tolist() == flow_QS.sum(0).tolist()
    head = torch.cumsum(flow_QS.sum(0)[: S - 1], 0).tolist()
    tail = torch.cumsum(flow_QS.sum(0)[S - 1 :], 0).tolist()
    assert maps.offs_S.dtype == torch.int32 and maps.offs_S.tolist() == head + tail


def test_dispatch_maps_after_drops_give_no_inverse() -> None:
    e_A = torch.tensor([0, 2, 0, 1, 0, 1])  # T=3 tokens, top-2; capacity 2 drops one of 0's
    order_M, kept_E, dropped = dp.order_by_expert(e_A, 3, 2)
    assert dropped == 1 and kept_E.tolist() == [2, 2, 1]
    perm_K, inv_K = dp.slot_order([0, 1, 2])
    maps = dp.dispatch_maps(order_M, kept_E, perm_K, inv_K, kept_E.view(1, 3), 6, 3)
    assert maps.inv_A is None and maps.send_A.tolist() == [0, 2, 3, 5, 1]


def test_row_gathers_backward_equal_index_selects() -> None:
    g = torch.Generator().manual_seed(3)
    T, top_k, D = 11, 3, 5
    send_A = torch.randperm(T * top_k, generator=g)
    inv_A = dp.inverse_permutation(send_A)
    x = torch.randn(T, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T * top_k, D, generator=g, dtype=torch.float64)

    (dp.expand_rows(x, send_A, inv_A, top_k) * w).sum().backward()
    got = x.grad.clone()
    x.grad = None
    (x.index_select(0, send_A // top_k) * w).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-12, atol=1e-12)

    y = torch.randn(T * top_k, D, generator=g, dtype=torch.float64, requires_grad=True)
    (dp.permute_rows(y, send_A, inv_A) * w).sum().backward()
    got = y.grad.clone()
    y.grad = None
    (y.index_select(0, send_A) * w).sum().backward()
    assert torch.equal(got, y.grad)  # a permutation: each row's gradient is one row of w
    with torch.no_grad():
        assert torch.equal(dp.permute_rows(y, send_A, inv_A), y[send_A])


def test_dispatch_maps_of_a_rank_with_nothing_to_send_or_receive() -> None:
    perm_K, inv_K = dp.slot_order([0, 1, 0, 1])
    empty = torch.zeros(0, dtype=torch.long)
    maps = dp.dispatch_maps(empty, torch.zeros(4, dtype=torch.long), perm_K, inv_K,
                            torch.zeros(2, 2, dtype=torch.long), 0, 2)  # fmt: skip
    assert maps.send_A.numel() == maps.to_slot.numel() == maps.from_slot.numel() == 0
    assert maps.inv_A is not None and maps.inv_A.numel() == 0
    assert maps.rows_S.tolist() == [0, 0] and maps.offs_S.tolist() == [0, 0]
