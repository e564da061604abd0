"""The expert exchanges move exactly the right elements, bit for bit.

``ShardedExpertOptimizer.reduce_grads`` and ``remap`` run on 1, 2 and 3 gloo ranks over layers
whose shards are equal (strided [N, S, n] copies), unequal (P not a multiple of N: one copy per
peer), empty (P < N) and mixed, with experts repeated in a rank's slots. Their results are
compared with ``torch.equal`` against an oracle written with Python loops: an expert's gradient
is ((0 + g_k1) + g_k2) + ... over its slots in ascending global slot order, times the scale; a
remapped slot holds its expert's full weights cast to the slot dtype. Each exchange issues
exactly one ``all_to_all``.

Shape legend: L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots, P elements of
one expert, n elements of one rank's shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from distributed import run_ranks

from swiftmoe.engine.dist import Comm
from swiftmoe.engine.optim import (
    ShardedExpertOptimizer,
    _fused_default,
    _rounds_on,
    _sum_replicas,
    replica_rounds,
    shard_bounds,
)

SCALE = 0.37

# (name, S, E_L, numels_L)
CASES = [
    ("even", 3, [4, 5], [12, 6]),
    ("uneven", 2, [3], [7]),
    ("mixed", 2, [4, 3, 2], [12, 7, 5]),
    ("tiny", 3, [5], [1]),  # P < N on 2 and 3 ranks: some shards are empty
    ("one-layer-even", 4, [6], [24]),
]


def case_inputs(case: tuple, N: int):
    """full_L, per layer slots_K and per rank per layer grad_SP, from a fixed seed. Slot k holds
    expert k % E, every third slot a random expert, and slot 1 repeats slot 0 (two replicas of
    one expert on rank 0)."""
    name, S, E_L, numels_L = case
    g = torch.Generator().manual_seed(1000 * CASES.index(case) + N)
    full_L = [torch.randn(E, P, generator=g) for E, P in zip(E_L, numels_L, strict=True)]
    slots_L = []
    for E in E_L:
        K = N * S
        rand_K = torch.randint(0, E, (K,), generator=g).tolist()
        slots = [rand_K[k] if k % 3 == 2 else k % E for k in range(K)]
        slots[1] = slots[0]
        slots_L.append(torch.tensor(slots, dtype=torch.long))
    grads_NL = [[torch.randn(S, P, generator=g) for P in numels_L] for _ in range(N)]
    return full_L, slots_L, grads_NL


def _worker(rank: int, world_size: int) -> dict:
    out = {}
    comm = Comm(rank, world_size)
    for case in CASES:
        name, S, _, _ = case
        full_L, slots_L, grads_NL = case_inputs(case, world_size)
        opt = ShardedExpertOptimizer(full_L, S, comm, torch.optim.SGD, {"lr": 0.1}, SCALE)
        opt.reduce_grads(grads_NL[rank], slots_L)
        grads = [m.grad.clone() for m in opt.masters]
        remapped = {str(dt): opt.remap(slots_L, dt) for dt in (torch.float32, torch.bfloat16)}
        out[name] = {"grads": grads, "remap": remapped}
    return out


def oracle_grad(grads_NL, slots_K, layer: int, S: int, E: int, lo: int, hi: int) -> torch.Tensor:
    acc = [torch.zeros(hi - lo) for _ in range(E)]
    for k, e in enumerate(slots_K.tolist()):
        acc[e] = acc[e] + grads_NL[k // S][layer][k % S, lo:hi]
    return torch.stack(acc).mul_(SCALE)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_exchanges_match_the_loop_oracle_bit_for_bit(world_size: int) -> None:
    N = world_size
    results = run_ranks(_worker, N, timeout_s=120)
    for case in CASES:
        name, S, E_L, numels_L = case
        full_L, slots_L, grads_NL = case_inputs(case, N)
        for r, res in enumerate(results):
            got = res[name]
            for li, (E, P) in enumerate(zip(E_L, numels_L, strict=True)):
                b = shard_bounds(P, N)
                want = oracle_grad(grads_NL, slots_L[li], li, S, E, b[r], b[r + 1])
                assert torch.equal(got["grads"][li], want), f"{name} rank {r} layer {li} grad"
                mine = slots_L[li][r * S : (r + 1) * S]
                for dt in (torch.float32, torch.bfloat16):
                    flat_SP = got["remap"][str(dt)][li]
                    assert flat_SP.dtype == dt and tuple(flat_SP.shape) == (S, P)
                    want_SP = full_L[li].index_select(0, mine).to(dt)
                    assert torch.equal(flat_SP, want_SP), f"{name} rank {r} layer {li} {dt}"


def test_replica_rounds_order_each_experts_replicas_by_slot() -> None:
    assert replica_rounds([2, 0, 2, 1, 2, 0]) == [
        ([0, 1, 3], [2, 0, 1]),
        ([2, 5], [2, 0]),
        ([4], [2]),
    ]
    assert replica_rounds([]) == []


@pytest.mark.parametrize("cover", [True, False])
@pytest.mark.parametrize("N, S", [(1, 5), (3, 2), (4, 3)])
def test_round_sums_equal_sequential_index_add(N: int, S: int, cover: bool) -> None:
    """The path for devices whose index_add_ uses atomics gives the CPU path's bits: with
    every expert placed (its first replicas gathered) and with one expert unplaced."""
    g = torch.Generator().manual_seed(N * 10 + S)
    E, n = 3, 33
    if cover:
        slots_K = torch.randint(0, E, (N * S,), generator=g)
        slots_K[torch.randperm(N * S, generator=g)[:E]] = torch.randperm(E, generator=g)
    else:
        slots_K = torch.randint(0, E - 1, (N * S,), generator=g)
    # A strided view, as received when several layers share the buffer.
    buf_NW = torch.randn(N, S * n + 5, generator=g) * 1e3
    recv_NSn = buf_NW[:, 5:].view(N, S, n)
    seq = _sum_replicas(recv_NSn, slots_K, E, sequential=True)
    rounds = _sum_replicas(recv_NSn, slots_K, E, sequential=False)
    assert (_rounds_on(slots_K.tolist(), E, "cpu")[0] is None) == (not cover)
    assert torch.equal(seq, rounds)
    want = torch.zeros(E, n)
    for k, e in enumerate(slots_K.tolist()):
        want[e] = want[e] + recv_NSn[k // S, k % S]
    assert torch.equal(seq, want)


def test_fused_default_only_on_cuda_and_only_when_unchosen() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _fused_default(torch.optim.AdamW, {"lr": 1.0}, cuda) == {"lr": 1.0, "fused": True}
    assert _fused_default(torch.optim.AdamW, {"lr": 1.0}, cpu) == {"lr": 1.0}
    assert _fused_default(torch.optim.AdamW, {"foreach": True}, cuda) == {"foreach": True}
    assert _fused_default(torch.optim.SGD, {"fused": False}, cuda) == {"fused": False}
    assert _fused_default(torch.optim.Adamax, {}, cuda) == {}  # takes no fused


@dataclass(frozen=True)
class CountingComm(Comm):
    """Records the splits of each all_to_all and answers with zeros of the right size."""

    calls: list = field(default_factory=list, compare=False)

    def all_to_all(self, x_MD, out_splits, in_splits):
        self.calls.append((x_MD.numel(), list(out_splits), list(in_splits)))
        return x_MD.new_zeros((sum(out_splits), *x_MD.shape[1:]))


@pytest.mark.parametrize("N", [1, 3])
def test_each_exchange_is_one_all_to_all_of_the_slot_and_shard_widths(N: int) -> None:
    _, S, E_L, numels_L = CASES[2]
    full_L = [torch.zeros(E, P) for E, P in zip(E_L, numels_L, strict=True)]
    slots_L = [torch.tensor([k % E for k in range(N * S)]) for E in E_L]
    for r in range(N):
        comm = CountingComm(rank=r, world_size=N)
        opt = ShardedExpertOptimizer(full_L, S, comm, torch.optim.SGD, {"lr": 0.1}, 1.0)
        peer_W = [
            sum(S * (shard_bounds(P, N)[c + 1] - shard_bounds(P, N)[c]) for P in numels_L)
            for c in range(N)
        ]
        own_W = sum(S * (shard_bounds(P, N)[r + 1] - shard_bounds(P, N)[r]) for P in numels_L)
        opt.reduce_grads([torch.zeros(S, P) for P in numels_L], slots_L)
        # With one rank an exchange is the identity: no collective, the buffer as it is.
        want = [(sum(peer_W), [own_W] * N, peer_W)] if N > 1 else []
        assert comm.calls == want, f"rank {r} reduce_grads"
        opt.remap(slots_L, torch.float32)
        want = [(N * own_W, peer_W, [own_W] * N)] if N > 1 else []
        assert comm.calls[len(comm.calls) - len(want) :] == want, f"rank {r} remap"
        assert len(comm.calls) == (2 if N > 1 else 0)


def test_bf16_slot_gradients_give_the_master_gradients_of_their_fp32_values() -> None:
    """The step hands the exchange gradients in the slots' dtype; its layout copy casts them
    to fp32, exactly as the fp32 values of the same gradients would arrive."""
    _, S, E_L, numels_L = CASES[2]
    full_L, slots_L, grads_NL = case_inputs(CASES[2], 1)
    half_L = [g.to(torch.bfloat16) for g in grads_NL[0]]
    got, want = [], []
    for grads, out in ((half_L, got), ([g.float() for g in half_L], want)):
        opt = ShardedExpertOptimizer(full_L, S, Comm(rank=0, world_size=1), torch.optim.SGD,
                                     {"lr": 0.1}, SCALE)  # fmt: skip
        opt.reduce_grads(grads, slots_L)
        out += [m.grad for m in opt.masters]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
