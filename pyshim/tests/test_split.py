"""The token split: constraints, optimality against brute force, fast vs exact, locality, trace.

Shape legend: Q = N source ranks, E experts, N ranks, S slots per rank, K = N*S slots, R = N.
"""

from __future__ import annotations

import itertools
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import split_reference as reference
import torch
from split_reference import even_split_tokens, rank_load_from_flow, split_tokens

from swiftmoe.engine import plan, split
from swiftmoe.engine.split import amounts, plan_index, tiers
from swiftmoe.planning import reference as reference_planner
from swiftmoe.sim import traffic

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "testdata" / "traces" / "cheaders-e8-top2-aux0.jsonl"


# ---------------------------------------------------------------- helpers


def zipf_counts_QE(gen: torch.Generator, N: int, E: int, tokens: int, a: float) -> torch.Tensor:
    """Per-source counts with a Zipf(a) expert popularity in a random expert order."""
    p_E = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** a
    p_E = p_E[torch.randperm(E, generator=gen)]
    if tokens == 0:
        return torch.zeros(N, E, dtype=torch.int64)
    idx = torch.multinomial(p_E.expand(N, E), tokens, replacement=True, generator=gen)
    return torch.zeros(N, E, dtype=torch.int64).scatter_add_(1, idx, torch.ones_like(idx))


def strategy_slots(loads_E: list[float], E: int, N: int, S: int) -> list[int]:
    """Reference of the swiftmoe strategy rule: replicas proportional to load, then LPT packing
    (swiftmoe.planning.reference, the Python planner of the tests and benchmarks)."""
    assert len(loads_E) == E
    return reference_planner.plan_layer(loads_E, N, S)


def random_slots(rng: random.Random, E: int, N: int, S: int) -> list[int]:
    slots_K = plan.static_slots(E, N, S)
    rng.shuffle(slots_K)
    return slots_K


def check_flow(flow_QK: torch.Tensor, counts_QE: torch.Tensor, slots_K, S: int) -> None:
    """Conservation and support: slots of e get exactly counts[q, e] of q's tokens, others none."""
    N, E = counts_QE.shape
    assert flow_QK.dtype == torch.int64, f"got dtype {flow_QK.dtype}, want int64"
    assert tuple(flow_QK.shape) == (N, N * S), f"got shape {tuple(flow_QK.shape)}"
    assert int(flow_QK.min()) >= 0 if flow_QK.numel() else True
    slots = torch.as_tensor(slots_K)
    onehot_KE = torch.nn.functional.one_hot(slots, E).to(torch.int64)
    got_QE = flow_QK @ onehot_KE
    assert torch.equal(got_QE, counts_QE), f"got per-expert flow {got_QE}, want {counts_QE}"


def subset_bound(counts_QE: torch.Tensor, slots_K, S: int) -> int:
    """Integer min-max optimum by duality: max over rank sets T of ceil(tokens confined / |T|)."""
    N, E = counts_QE.shape
    L_E = counts_QE.sum(0).tolist()
    ranks_E = [{k // S for k, e in enumerate(slots_K) if e == x} for x in range(E)]
    best = 0
    for size in range(1, N + 1):
        for T in itertools.combinations(range(N), size):
            Ts = set(T)
            inside = sum(L_E[e] for e in range(E) if ranks_E[e] and ranks_E[e] <= Ts)
            best = max(best, -(-inside // size))
    return best


def max_load(flow_QK: torch.Tensor, S: int) -> int:
    return int(rank_load_from_flow(flow_QK, S).max())


# ---------------------------------------------------------------- constraints


def test_conservation_and_support_random():
    rng = random.Random(11)
    gen = torch.Generator().manual_seed(11)
    for _ in range(120):
        N, S = rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 2, 3, 4])
        E = rng.randint(1, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, rng.choice([0, 1, 7, 50, 400]), rng.random() * 2)
        slots_K = random_slots(rng, E, N, S)
        rpn = rng.choice([0, 1, 2, 3])
        for method in ("fast", "exact"):
            check_flow(split_tokens(counts_QE, slots_K, S, rpn, method), counts_QE, slots_K, S)
        check_flow(even_split_tokens(counts_QE, slots_K, S), counts_QE, slots_K, S)


def test_even_split_divides_each_expert_evenly():
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        N, S = rng.choice([2, 4]), rng.choice([1, 2, 4])
        E = rng.randint(1, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, 97, 1.0)
        slots_K = random_slots(rng, E, N, S)
        per_slot_K = even_split_tokens(counts_QE, slots_K, S).sum(0)
        for e in range(E):
            got = per_slot_K[torch.tensor(slots_K) == e]
            assert int(got.max() - got.min()) <= 1, f"expert {e}: slot loads {got.tolist()}"


# ---------------------------------------------------------------- optimality


def test_exact_hot_expert_three_replicas():
    # Rank 0 holds experts 0 and 1; ranks 1 and 2 hold expert 0 beside idle experts 2 and 3.
    slots_K = [0, 1, 0, 2, 0, 3]
    counts_QE = torch.tensor([[30, 30, 0, 0], [30, 0, 0, 0], [30, 0, 0, 0]])
    flow_QK = split_tokens(counts_QE, slots_K, 2, method="exact")
    check_flow(flow_QK, counts_QE, slots_K, 2)
    assert rank_load_from_flow(flow_QK, 2).tolist() == [40, 40, 40]
    assert max_load(even_split_tokens(counts_QE, slots_K, 2), 2) == 60
    assert max_load(split_tokens(counts_QE, slots_K, 2, method="fast"), 2) <= 41


def test_exact_forced_single_replica():
    # Expert 0 lives only on rank 0; the optimum is its load whatever the others do.
    slots_K = [0, 1, 1, 2]
    counts_QE = torch.tensor([[50, 10, 5], [50, 10, 5]])
    got = max_load(split_tokens(counts_QE, slots_K, 2, method="exact"), 2)
    assert got == 100 + 0, f"got max rank load {got}, want 100 (expert 0 is forced on rank 0)"
    assert subset_bound(counts_QE, slots_K, 2) == 100


def test_exact_equals_subset_bound_small():
    rng = random.Random(2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(80):
        N, S = rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 2, 3])
        E = rng.randint(1, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, rng.choice([1, 5, 30, 200]), 0.5 + rng.random())
        slots_K = random_slots(rng, E, N, S)
        got = max_load(split_tokens(counts_QE, slots_K, S, method="exact"), S)
        want = subset_bound(counts_QE, slots_K, S)
        assert got == want, f"N={N} S={S} slots={slots_K}: got max {got}, want optimum {want}"


@pytest.mark.parametrize("E", [8, 16, 64])
def test_fast_within_two_percent_of_exact(E):
    rng = random.Random(E)
    gen = torch.Generator().manual_seed(E)
    worst = 0.0
    cases = 0
    shapes = list(itertools.product([2, 4, 8, 16], [1, 2, 4]))
    shapes += [(16, 8), (32, 4)] if E == 64 else []  # replication needs more than 64 slots
    for N, S in shapes:
        if N * S < E:
            continue
        for trial in range(4):
            tokens = rng.choice([3, 40, 512, 4096])
            a = rng.choice([0.8, 1.2, 1.6])
            counts_QE = zipf_counts_QE(gen, N, E, tokens, a)
            if trial % 2:
                slots_K = random_slots(rng, E, N, S)
            else:  # planned from a noisy earlier iteration, as in training
                prev_E = counts_QE.sum(0).double() * (0.7 + 0.6 * torch.rand(E, generator=gen))
                slots_K = strategy_slots(prev_E.tolist(), E, N, S)
            fast = max_load(split_tokens(counts_QE, slots_K, S, method="fast"), S)
            exact = max_load(split_tokens(counts_QE, slots_K, S, method="exact"), S)
            assert exact <= fast, f"exact {exact} above fast {fast}: exact is not optimal"
            assert fast <= 1.02 * exact + 1, (
                f"E={E} N={N} S={S} tokens={tokens}: fast max {fast}, exact {exact}"
            )
            worst = max(worst, fast / max(exact, 1))
            cases += 1
    assert cases >= 12
    print(f"\nE={E}: {cases} cases, worst fast/exact max rank load {worst:.4f}")


# ---------------------------------------------------------------- locality


def test_local_first_when_balance_allows():
    # Both ranks hold both experts; each rank's tokens can stay home at the optimum.
    slots_K = [0, 1, 0, 1]
    counts_QE = torch.tensor([[10, 0], [0, 10]])
    for method in ("fast", "exact"):
        flow_QK = split_tokens(counts_QE, slots_K, 2, method=method)
        assert flow_QK.tolist() == [[10, 0, 0, 0], [0, 0, 0, 10]], f"{method}: {flow_QK.tolist()}"


def test_local_tokens_never_leave_while_the_slot_has_room():
    """For every source q and expert e held on q: q keeps min(counts[q,e], what q's slots take)."""
    rng = random.Random(9)
    gen = torch.Generator().manual_seed(9)
    for _ in range(60):
        N, S = rng.choice([2, 4, 8]), rng.choice([1, 2, 4])
        E = rng.randint(1, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, 60, 1.0)
        slots_K = random_slots(rng, E, N, S)
        for method in ("fast", "exact"):
            flow_QK = split_tokens(counts_QE, slots_K, S, method=method)
            recv_K = flow_QK.sum(0)
            for q in range(N):
                for e in set(slots_K[q * S : (q + 1) * S]):
                    ks = [k for k in range(q * S, (q + 1) * S) if slots_K[k] == e]
                    kept = int(flow_QK[q, ks].sum())
                    want = min(int(counts_QE[q, e]), int(recv_K[ks].sum()))
                    assert kept == want, f"rank {q} expert {e}: kept {kept}, want {want}"


def cross_node(flow_QK: torch.Tensor, S: int, rpn: int) -> int:
    N = flow_QK.shape[0]
    node_Q = torch.arange(N) // rpn
    node_K = torch.arange(N * S) // S // rpn
    return int(flow_QK[node_Q[:, None] != node_K[None, :]].sum())


def test_same_node_preference_is_minimal():
    """Given what each slot receives, no split sends fewer tokens across nodes."""
    rng = random.Random(4)
    gen = torch.Generator().manual_seed(4)
    beaten = 0
    for _ in range(60):
        N, S, rpn = rng.choice([4, 8]), rng.choice([1, 2]), 2
        E = rng.randint(2, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, 50, 1.0)
        slots_K = random_slots(rng, E, N, S)
        flow_QK = split_tokens(counts_QE, slots_K, S, ranks_per_node=rpn)
        recv_K = flow_QK.sum(0)
        # Fewest crossings: per expert and node, min(supply there, demand there) stays inside.
        inside = 0
        for e in range(E):
            for node in range(N // rpn):
                qs = range(node * rpn, (node + 1) * rpn)
                ks = [k for k in range(N * S) if slots_K[k] == e and k // S // rpn == node]
                inside += min(int(counts_QE[list(qs), e].sum()), int(recv_K[ks].sum()))
        want = int(counts_QE.sum()) - inside
        assert cross_node(flow_QK, S, rpn) == want
        plain = split_tokens(counts_QE, slots_K, S, ranks_per_node=0)
        beaten += cross_node(plain, S, rpn) > want
    assert beaten > 0, "the node tier never mattered: the test would not catch its absence"


def test_node_tier_spreads_what_crosses_over_the_nodes_ranks():
    """A node's intake lands on its replicas in proportion to their room, and what it sends
    leaves its ranks in proportion to what each has left: not all on the last ones.

    Nodes of 3. Expert 0 (100 tokens from every rank) is held on ranks 0 and 1, 300 tokens
    each: each keeps its own 100, rank 2's 100 go 50 to each (node tier), and node 1's 300
    cross, 150 to each. Expert 1 (40 from every rank) is held on rank 3 only, so node 0 sends
    its 120 across from ranks 0, 1 and 2 alike."""
    counts = [[100, 40, 0, 0]] * 6
    slots = [0, 2, 0, 2, 2, 3, 1, 3, 3, 3, 2, 3]  # S=2: rank r holds slots 2r and 2r+1
    c_QE, pl, demand_K, rpn = split.demand.min_max_demand(counts, slots, 2, 3, "exact")
    assert demand_K[[0, 2]].tolist() == [300, 300]
    si, ri, se, re = tiers.tier_sums(c_QE, pl, demand_K, rpn)
    assert re[:2].tolist() == [150, 150]
    assert ri[:2].tolist() == [50, 50] and si[2] >= 100
    assert se[:3].tolist() == [40, 40, 40]
    flow = split_tokens(counts, slots, 2, ranks_per_node=3, method="exact")
    check_flow(flow, torch.tensor(counts), slots, 2)
    assert flow[3:, 0].sum() == 150 and flow[3:, 2].sum() == 150


def test_proportional_shares_are_exact_and_within_bounds():
    rng = np.random.default_rng(3)
    for _ in range(200):
        sizes = rng.integers(1, 7, rng.integers(1, 6))
        groups = np.repeat(np.arange(sizes.size), sizes)
        first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        a = rng.integers(0, 50, groups.size) * rng.integers(0, 2, groups.size)
        tot = np.add.reduceat(a, first)
        m = np.array([rng.integers(0, t + 1) for t in tot])
        out = tiers.proportional(a, tot, m, groups, first)
        assert (np.add.reduceat(out, first) == m).all()
        assert (out >= 0).all() and (out <= a).all()
        share = a * m[groups] / np.maximum(tot[groups], 1)
        assert (np.abs(out - share) < 1).all()


# ---------------------------------------------------------------- determinism and edges


def test_deterministic_and_input_forms_agree():
    gen = torch.Generator().manual_seed(1)
    counts_QE = zipf_counts_QE(gen, 8, 16, 300, 1.3)
    slots_K = strategy_slots(counts_QE.sum(0).tolist(), 16, 8, 4)
    for method in ("fast", "exact"):
        a = split_tokens(counts_QE, slots_K, 4, 2, method)
        b = split_tokens(counts_QE.clone(), torch.tensor(slots_K), 4, 2, method)
        c = split_tokens(counts_QE.tolist(), slots_K, 4, 2, method)
        assert torch.equal(a, b) and torch.equal(a, c)
    torch.set_num_threads(1)
    try:
        one = split_tokens(counts_QE, slots_K, 4)
    finally:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    assert torch.equal(one, split_tokens(counts_QE, slots_K, 4, method="auto"))


def test_inputs_are_not_modified_and_the_flow_is_repeatable():
    """Routing works on copies (even where a transpose would be a view), and the same inputs
    give the same flow, in any input form."""
    rng = random.Random(3)
    gen = torch.Generator().manual_seed(3)
    for N, E, S in [(1, 3, 4), (4, 1, 2), (6, 9, 3), (32, 64, 4)]:
        counts_QE = zipf_counts_QE(gen, N, E, 500, 1.2)
        slots_K = random_slots(rng, E, N, S)
        arr_QE, arr_K = counts_QE.numpy().copy(), np.array(slots_K)
        for rpn in (0, 2, 4):
            first = split_tokens(arr_QE, arr_K, S, rpn)
            assert np.array_equal(arr_QE, counts_QE.numpy()), "counts_QE was modified"
            assert arr_K.tolist() == slots_K, "slots was modified"
            assert torch.equal(first, split_tokens(counts_QE, slots_K, S, rpn))
            check_flow(first, counts_QE, slots_K, S)


def test_a_plan_index_splits_as_its_plan_and_is_checked():
    """An index of a plan (index_plan, or a PlanIndexCache's) gives what the plan itself gives in
    every form of the split; the cache hands back one index per plan and forgets the least
    recently used; an index of another shape than the counts is refused."""
    gen = torch.Generator().manual_seed(12)
    for N, E, S in [(1, 3, 4), (3, 5, 2), (6, 9, 3), (16, 24, 2)]:
        counts_QE = zipf_counts_QE(gen, N, E, 300, 1.1)
        slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
        index = split.index_plan(slots_K, S, N, E)
        assert not index.slots_K.flags.writeable and not index.pair_K.flags.writeable
        cache = split.PlanIndexCache()
        assert cache.index(slots_K, S, N, E) is cache.index(np.array(slots_K), S, N, E)
        for rpn in (0, 2):
            for method in ("auto", "exact", "even"):
                want_R = split.split_rank_loads(counts_QE, slots_K, S, rpn, method)
                got_R = split.split_rank_loads(counts_QE, index, S, rpn, method)
                assert torch.equal(got_R, want_R), (N, E, S, rpn, method)
                for r in range(N):
                    want = split.split_tokens_for_rank(counts_QE, slots_K, S, r, rpn, method)
                    got = split.split_tokens_for_rank(counts_QE, index, S, r, rpn, method)
                    for name, a, b in zip(want._fields, want, got, strict=True):
                        if name == "node_local":
                            same = a == b
                        elif name == "planned":
                            same = np.array_equal(a.demand_K, b.demand_K) and a.ms == b.ms
                        else:
                            same = torch.equal(a, b)
                        assert same, (N, E, S, rpn, method, r, name)
            want_tr = traffic.split_traffic(counts_QE, slots_K, S, rpn)
            got_tr = traffic.split_traffic(counts_QE, index, S, rpn)
            for f in ("x_K", "si_Q", "ri_R", "se_Q", "re_R"):
                assert getattr(got_tr, f).tolist() == getattr(want_tr, f).tolist(), f
    small = split.PlanIndexCache(max_entries=2)
    plans = [[0, 1, 2, 3], [1, 0, 2, 3], [2, 1, 0, 3]]
    first = small.index(plans[0], 2, 2, 4)
    small.index(plans[1], 2, 2, 4)
    assert small.index(plans[0], 2, 2, 4) is first  # a hit makes it the most recent
    small.index(plans[2], 2, 2, 4)  # evicts plans[1]
    assert small.index(plans[0], 2, 2, 4) is first
    with pytest.raises(ValueError, match="max_entries"):
        split.PlanIndexCache(max_entries=0)
    with pytest.raises(ValueError, match="PlanIndex is of N=2 ranks x S=2 slots and E=4"):
        split.split_tokens_for_rank([[1, 2, 3], [4, 5, 6]], first, 2, 0)
    with pytest.raises(ValueError, match="PlanIndex"):
        split.split_rank_loads([[1, 2, 3, 4], [4, 5, 6, 7]], first, 1)


def test_level_bound_never_exceeds_the_optimum():
    """The certified bound that stops the fast rounds is a true lower bound for any loads."""
    rng = random.Random(6)
    gen = torch.Generator().manual_seed(6)
    for _ in range(60):
        N, S = rng.choice([2, 3, 4, 5]), rng.choice([1, 2, 3])
        E = rng.randint(1, N * S)
        counts_QE = zipf_counts_QE(gen, N, E, rng.choice([5, 60, 300]), 0.5 + rng.random())
        slots_K = random_slots(rng, E, N, S)
        c_QE, pl, L_E = plan_index.prepare(counts_QE, slots_K, S)
        want = subset_bound(counts_QE, slots_K, S)
        for y_R in (np.random.default_rng(1).random(N), np.zeros(N), np.arange(N, 0, -1.0)):
            got = amounts.level_bound(pl, L_E, y_R)
            assert got <= want, f"slots={slots_K}: level bound {got} above the optimum {want}"
        x_P = amounts.amounts_fast(c_QE, pl, L_E)
        y_R = np.bincount(pl.r_P, x_P, minlength=N).astype(np.float64)
        assert amounts.level_bound(pl, L_E, y_R) <= want


def test_node_tier_at_scale():
    """Many nodes and a short last node: conservation, equal rank loads with and without nodes,
    and no more cross-node tokens than without the node tier."""
    gen = torch.Generator().manual_seed(8)
    for N, E, S, rpn in [(64, 96, 4, 8), (30, 40, 2, 4), (17, 20, 3, 5)]:
        counts_QE = zipf_counts_QE(gen, N, E, 40 * N * S, 1.1)
        slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
        plain = split_tokens(counts_QE, slots_K, S, 0)
        node = split_tokens(counts_QE, slots_K, S, rpn)
        check_flow(node, counts_QE, slots_K, S)
        assert torch.equal(rank_load_from_flow(node, S), rank_load_from_flow(plain, S))
        assert torch.equal(node.sum(0), plain.sum(0)), "the node tier changed slot loads"
        assert cross_node(node, S, rpn) <= cross_node(plain, S, rpn)


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_edge_cases(method):
    zeros_QE = torch.zeros(3, 4, dtype=torch.int64)
    flow_QK = split_tokens(zeros_QE, plan.static_slots(4, 3, 2), 2, method=method)
    assert flow_QK.tolist() == [[0] * 6] * 3
    # Single rank: everything stays on it.
    one_QE = torch.tensor([[5, 7]])
    flow_QK = split_tokens(one_QE, [0, 1, 0, 1], 4, method=method)
    check_flow(flow_QK, one_QE, [0, 1, 0, 1], 4)
    assert flow_QK.tolist() == [[3, 4, 2, 3]]
    # S > E over two ranks, and one expert in every slot.
    counts_QE = torch.tensor([[9, 1], [0, 4]])
    check_flow(
        split_tokens(counts_QE, [0, 1, 0, 0, 1, 0], 3, method=method),
        counts_QE,
        [0, 1, 0, 0, 1, 0],
        3,
    )
    solo_QE = torch.tensor([[11], [3], [0]])
    flow_QK = split_tokens(solo_QE, [0] * 6, 2, method=method)
    check_flow(flow_QK, solo_QE, [0] * 6, 2)
    assert sorted(rank_load_from_flow(flow_QK, 2).tolist()) == [4, 5, 5]
    # An idle expert without a slot is fine; only experts with tokens need one.
    idle_QE = torch.tensor([[4, 0], [2, 0]])
    check_flow(split_tokens(idle_QE, [0, 0], 1, method=method), idle_QE, [0, 0], 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(counts_QE=[[1.5, 2.0]], slots=[0, 1], slots_per_rank=2), "integer token counts"),
        (dict(counts_QE=torch.ones(2, 2), slots=[0, 1, 0, 1], slots_per_rank=2), "int64"),
        (dict(counts_QE=[[-1, 2]], slots=[0, 1], slots_per_rank=2), r"counts_QE\[0, 0\]"),
        (dict(counts_QE=[1, 2], slots=[0, 1], slots_per_rank=2), "2-D"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1, 0], slots_per_rank=2), "want counts_QE.shape"),
        (dict(counts_QE=[[1, 2]], slots=[0, 2], slots_per_rank=2), r"slots\[1\] holds expert 2"),
        (dict(counts_QE=[[1, 2]], slots=[0, 0], slots_per_rank=2), "expert 1 has 2 tokens"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1], slots_per_rank=0), "slots_per_rank"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1], slots_per_rank=2, method="lp"), "method"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1], slots_per_rank=2, ranks_per_node=-1), "node"),
    ],
)
def test_bad_input_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_tokens(**kwargs)


def test_rank_load_from_flow():
    flow_QK = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert rank_load_from_flow(flow_QK, 2).tolist() == [14, 22]
    assert rank_load_from_flow(flow_QK, 1).tolist() == [6, 8, 10, 12]
    with pytest.raises(ValueError, match="multiple of slots_per_rank"):
        rank_load_from_flow(flow_QK, 3)


# ---------------------------------------------------------------- the real trace


def test_real_trace_min_max_beats_even_split():
    """E=8 N=4 S=4: plan from the previous iteration's loads, split this iteration's tokens."""
    N, S = 4, 4
    records = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    gen = torch.Generator().manual_seed(0)
    sums = {"even": 0.0, "fast": 0.0, "exact": 0.0, "own": 0.0}
    n = 0
    for prev, cur in zip(records, records[1:], strict=False):
        for prev_E, cur_E in zip(prev["loads"], cur["loads"], strict=True):
            E = len(cur_E)
            slots_K = strategy_slots([float(x) for x in prev_E], E, N, S)
            plan.validate_slots(slots_K, E, N, S)
            # Each expert's global count spread over the source ranks at random.
            p_QE = torch.rand(N, E, generator=gen) + 0.5
            counts_QE = torch.zeros(N, E, dtype=torch.int64)
            for e, total in enumerate(cur_E):
                if total == 0:
                    continue
                idx = torch.multinomial(p_QE[:, e], total, replacement=True, generator=gen)
                counts_QE[:, e] = torch.bincount(idx, minlength=N)
            flows = {
                "even": even_split_tokens(counts_QE, slots_K, S),
                "fast": split_tokens(counts_QE, slots_K, S, method="fast"),
                "exact": split_tokens(counts_QE, slots_K, S, method="exact"),
            }
            for name, flow_QK in flows.items():
                check_flow(flow_QK, counts_QE, slots_K, S)
                sums[name] += plan.max_over_mean(rank_load_from_flow(flow_QK, S).tolist())
            own_K = strategy_slots([float(x) for x in cur_E], E, N, S)
            sums["own"] += plan.max_over_mean(
                rank_load_from_flow(even_split_tokens(counts_QE, own_K, S), S).tolist()
            )
            n += 1
    mean = {k: v / n for k, v in sums.items()}
    print(
        f"\ntrace E=8 N=4 S=4 top-2, {n} layer-iterations, mean max_over_mean: "
        f"even split {mean['even']:.3f}, min-max fast {mean['fast']:.4f}, "
        f"min-max exact {mean['exact']:.4f}, even split on a plan from the iteration's own loads "
        f"{mean['own']:.3f}"
    )
    assert mean["exact"] <= mean["fast"] <= mean["exact"] * 1.02
    assert mean["fast"] <= 1.03, f"got min-max {mean['fast']:.4f}, want about 1.01"
    assert mean["even"] >= mean["fast"] + 0.05, f"got even {mean['even']:.3f}, want well above"


# ---------------------------------------------------------------- sparse form


def assert_sparse_equals_dense(sparse, flow_QK: torch.Tensor) -> None:
    """(q_F, k_F, amount_F) are exactly the nonzero entries of flow_QK, each once."""
    q_F, k_F, amt_F = sparse
    for name, a in (("q_F", q_F), ("k_F", k_F), ("amount_F", amt_F)):
        assert isinstance(a, np.ndarray) and a.dtype == np.int64, f"{name}: got {a.dtype}"
    assert q_F.shape == k_F.shape == amt_F.shape
    dense_QK = flow_QK.numpy()
    want_q, want_k = np.nonzero(dense_QK)
    order = np.lexsort((k_F, q_F))  # row-major, as np.nonzero lists them
    assert q_F[order].tolist() == want_q.tolist(), "sparse support differs from the dense one"
    assert k_F[order].tolist() == want_k.tolist(), "sparse support differs from the dense one"
    assert amt_F[order].tolist() == dense_QK[want_q, want_k].tolist()


def test_sparse_equals_dense_random():
    rng = random.Random(23)
    gen = torch.Generator().manual_seed(23)
    seen_node_tier = 0
    for trial in range(300):
        N, S = rng.choice([1, 2, 3, 4, 5, 8, 12, 17]), rng.choice([1, 2, 3, 4])
        E = rng.randint(1, N * S)
        tokens = rng.choice([0, 1, 7, 50, 400, 3000])
        counts_QE = zipf_counts_QE(gen, N, E, tokens, rng.random() * 2)
        if trial % 3 == 0:
            slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
        else:
            slots_K = random_slots(rng, E, N, S)
        rpn = rng.choice([0, 1, 2, 3, 4, 5, 8, N, N + 1])  # short last nodes included
        seen_node_tier += 0 < rpn < N
        method = "exact" if trial % 5 == 0 else rng.choice(["auto", "fast"])
        dense = split_tokens(counts_QE, slots_K, S, rpn, method)
        # Every input form of the counts and plan gives the same answer.
        counts = counts_QE.numpy() if trial % 2 else counts_QE
        slots = torch.tensor(slots_K) if trial % 2 else slots_K
        assert_sparse_equals_dense(
            reference.split_tokens_sparse(counts, slots, S, rpn, method), dense
        )
    assert seen_node_tier > 100


def test_sparse_equals_dense_at_scale_and_on_even_source_counts():
    """Larger clusters, node tier on, and the simulator's per-source counts (L_e // N each,
    remainders to the lowest ranks), where every source holds tokens of every expert."""
    gen = torch.Generator().manual_seed(4)
    for N, E, S, rpn in [(64, 96, 4, 8), (30, 40, 2, 4), (128, 64, 2, 8)]:
        counts_QE = zipf_counts_QE(gen, N, E, 60 * N * S, 1.0)
        L_E = counts_QE.sum(0)
        even_QE = (L_E[None, :] // N + (torch.arange(N)[:, None] < (L_E % N)[None, :])).long()
        for c_QE in (counts_QE, even_QE):
            slots_K = strategy_slots(c_QE.sum(0).double().tolist(), E, N, S)
            for r in (0, rpn):
                dense = split_tokens(c_QE, slots_K, S, r)
                assert_sparse_equals_dense(
                    reference.split_tokens_sparse(c_QE, slots_K, S, r), dense
                )


def overlapping_tiers(monkeypatch):
    """A case (counts_QE [8, 6], slots_K, S = 2) whose split gets an extra piece of 5 tokens on
    a (source, slot) pair the local tier already used, as were a later tier to hit it."""
    gen = torch.Generator().manual_seed(9)
    counts_QE = zipf_counts_QE(gen, 8, 6, 400, 1.2)
    slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), 6, 8, 2)
    real = tiers.route_tiers

    def overlapping(c_QE, plan_, demand_K, rpn, *args):
        pieces, sup_HQ, da = real(c_QE, plan_, demand_K, rpn, *args)
        idx, amt = pieces[0]
        hit = int(np.flatnonzero(amt)[0])
        return pieces + [(idx[hit : hit + 1], np.array([5]))], sup_HQ, da

    monkeypatch.setattr(tiers, "route_tiers", overlapping)
    return counts_QE, slots_K


def test_sparse_sums_overlapping_tiers(monkeypatch):
    """Were a later tier to hit a (source, slot) pair an earlier one used, the sparse form still
    sums it as the dense one does."""
    counts_QE, slots_K = overlapping_tiers(monkeypatch)
    for rpn in (0, 4):
        dense = split_tokens(counts_QE, slots_K, 2, rpn)
        assert int(dense.sum()) == int(counts_QE.sum()) + 5
        assert_sparse_equals_dense(reference.split_tokens_sparse(counts_QE, slots_K, 2, rpn), dense)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(counts_QE=[[1.5, 2.0]], slots=[0, 1], slots_per_rank=2), "integer token counts"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1, 0], slots_per_rank=2), "want counts_QE.shape"),
        (dict(counts_QE=[[1, 2]], slots=[0, 0], slots_per_rank=2), "expert 1 has 2 tokens"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1], slots_per_rank=2, method="lp"), "method"),
        (dict(counts_QE=[[1, 2]], slots=[0, 1], slots_per_rank=2, ranks_per_node=-1), "node"),
    ],
)
def test_sparse_bad_input_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reference.split_tokens_sparse(**kwargs)


# ---------------------------------------------------------------- one rank's part


def random_case(rng: random.Random, gen: torch.Generator, trial: int, ranks, tokens):
    """(N, S, counts_QE, slots_K, idle): N from ranks, Zipf counts of a total from tokens, a plan
    by the strategy rule every third trial and a shuffled static layout otherwise; every fourth
    trial (from the second) one expert is idle and has no slot (idle is True then)."""
    N, S = rng.choice(ranks), rng.choice([1, 2, 3, 4])
    E = rng.randint(1, N * S)
    counts_QE = zipf_counts_QE(gen, N, E, rng.choice(tokens), rng.random() * 2)
    if trial % 3 == 0:
        slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
    else:
        slots_K = random_slots(rng, E, N, S)
    idle = E > 1 and trial % 4 == 1
    if idle:
        gone = slots_K[0]
        other = next(e for e in range(E) if e != gone)
        slots_K = [other if e == gone else e for e in slots_K]
        counts_QE[:, gone] = 0
    return N, S, counts_QE, slots_K, idle


def assert_rank_split_equals_dense(counts_QE, slots_K, S, rpn, method, ranks=None) -> None:
    """split_tokens_for_rank is the dense flow's row and slot columns, for every rank asked."""
    if method == "even":
        dense = even_split_tokens(counts_QE, slots_K, S)
    else:
        dense = split_tokens(counts_QE, slots_K, S, rpn, method)
    N = dense.shape[0]
    load_R = rank_load_from_flow(dense, S)
    assert torch.equal(split.split_rank_loads(counts_QE, slots_K, S, rpn, method), load_R)
    for r in range(N) if ranks is None else ranks:
        rs = split.split_tokens_for_rank(counts_QE, slots_K, S, r, rpn, method)
        for name, t in rs._asdict().items():
            if name == "node_local":
                assert t is False  # no cost parameters: never priced
                continue
            if name == "planned":  # the whole stage 1, not priced: what every slot receives
                assert t.ms is None and t.sums is None
                assert t.demand_K.dtype == np.int64
                assert t.demand_K.reshape(N, S).sum(axis=1).tolist() == load_R.tolist()
                continue
            assert t.dtype == torch.int64, f"{name}: got {t.dtype}"
        assert torch.equal(rs.send_K, dense[r]), f"rank {r}: send row differs"
        assert torch.equal(rs.recv_QS, dense[:, r * S : (r + 1) * S]), f"rank {r}: columns differ"
        assert torch.equal(rs.load_R, load_R)


def test_rank_split_equals_dense_random():
    rng = random.Random(31)
    gen = torch.Generator().manual_seed(31)
    seen = {"node": 0, "idle": 0, "even": 0}
    for trial in range(250):
        N, S, counts_QE, slots_K, idle = random_case(
            rng, gen, trial, [1, 2, 3, 4, 5, 8, 12], [0, 1, 7, 50, 400, 3000]
        )
        seen["idle"] += idle
        rpn = rng.choice([0, 1, 2, 3, 4, 5, 8, N, N + 1])
        seen["node"] += 0 < rpn < N
        method = rng.choice(["auto", "fast", "exact", "even"])
        seen["even"] += method == "even"
        assert_rank_split_equals_dense(counts_QE, slots_K, S, rpn, method)
    assert min(seen.values()) > 20, seen


def test_rank_split_equals_dense_at_scale():
    gen = torch.Generator().manual_seed(5)
    N, E, S = 256, 256, 4
    counts_QE = zipf_counts_QE(gen, N, E, 256 * N, 1.1)
    slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
    for rpn in (0, 8):
        assert_rank_split_equals_dense(counts_QE, slots_K, S, rpn, "auto", ranks=[0, 7, 130, 255])


def test_rank_split_sums_overlapping_tiers(monkeypatch):
    """As the dense flow does, a (source, slot) pair hit by two tiers gets their sum."""
    counts_QE, slots_K = overlapping_tiers(monkeypatch)
    for rpn in (0, 4):
        assert int(split_tokens(counts_QE, slots_K, 2, rpn).sum()) == int(counts_QE.sum()) + 5
        dense = split_tokens(counts_QE, slots_K, 2, rpn)
        for r in range(8):  # the NumPy split (native=False): the test patches its routing
            rs = split.split_tokens_for_rank(counts_QE, slots_K, 2, r, rpn, native=False)
            assert torch.equal(rs.send_K, dense[r])
            assert torch.equal(rs.recv_QS, dense[:, 2 * r : 2 * r + 2])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=2), r"rank must be an integer in 0\.\.1"),
        (dict(rank=-1), "rank must be"),
        (dict(rank=True), "rank must be"),
        (dict(rank=0, method="lp"), "method must be one of auto, fast, exact, even"),
        (dict(rank=0, slots=[0, 0, 0, 0]), "expert 1 has"),
    ],
)
def test_rank_split_bad_input_names_the_field(kwargs, match):
    args = dict(counts_QE=[[1, 2], [3, 4]], slots=[0, 1, 1, 0], slots_per_rank=2)
    with pytest.raises(ValueError, match=match):
        split.split_tokens_for_rank(**{**args, **kwargs})


# ---------------------------------------------------------------- traffic sums


def traffic_from_pieces(sparse, N: int, S: int, rpn: int, w_R=None):
    """x_K, si, ri, se, re (and weighted si, se) summed over split_tokens_sparse's pieces."""
    q_F, k_F, amt_F = sparse
    r_F = k_F // S
    node = (lambda r: r // rpn) if 0 < rpn < N else (lambda r: r * 0)
    away = q_F != r_F
    inter = away & (node(q_F) != node(r_F))
    intra = away & ~inter
    out = [np.bincount(k_F, amt_F, minlength=N * S).astype(np.int64)]
    for m in (intra, inter):
        out.append(np.bincount(q_F[m], amt_F[m], minlength=N).astype(np.int64))
        out.append(np.bincount(r_F[m], amt_F[m], minlength=N).astype(np.int64))
    if w_R is not None:
        wa = amt_F * w_R[r_F]
        out += [np.bincount(q_F[m], wa[m], minlength=N) for m in (intra, inter)]
    return out


def test_traffic_equals_the_pieces_sums():
    rng = random.Random(41)
    gen = torch.Generator().manual_seed(41)
    nprng = np.random.default_rng(41)
    seen_nodes = 0
    for trial in range(200):
        N, S, counts_QE, slots_K, _ = random_case(
            rng, gen, trial, [1, 2, 3, 4, 6, 8, 12, 17], [0, 1, 9, 300, 4000]
        )
        rpn = rng.choice([0, 1, 2, 3, 4, 8, N, N + 1])
        seen_nodes += 0 < rpn < N
        method = rng.choice(["auto", "exact"])
        w_R = nprng.uniform(0.5, 3.0, size=N)
        want = traffic_from_pieces(
            reference.split_tokens_sparse(counts_QE, slots_K, S, rpn, method), N, S, rpn, w_R
        )
        tr = traffic.split_traffic(counts_QE, slots_K, S, rpn, method)
        got = [tr.x_K, tr.si_Q, tr.ri_R, tr.se_Q, tr.re_R]
        for name, g, w in zip(("x_K", "si", "ri", "se", "re"), got, want[:5], strict=True):
            assert g.dtype == np.int64 and g.tolist() == w.tolist(), f"trial {trial}: {name}"
        si_w, se_w = tr.sent_weighted(w_R)
        np.testing.assert_allclose(si_w, want[5], rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(se_w, want[6], rtol=1e-9, atol=1e-6)
    assert seen_nodes > 60


def test_traffic_at_scale_and_bad_method():
    gen = torch.Generator().manual_seed(6)
    N, E, S, rpn = 128, 96, 4, 8
    counts_QE = zipf_counts_QE(gen, N, E, 200 * N, 1.0)
    slots_K = strategy_slots(counts_QE.sum(0).double().tolist(), E, N, S)
    w_R = np.linspace(1.0, 2.0, N)
    want = traffic_from_pieces(
        reference.split_tokens_sparse(counts_QE, slots_K, S, rpn), N, S, rpn, w_R
    )
    tr = traffic.split_traffic(counts_QE, slots_K, S, rpn)
    assert [a.tolist() for a in (tr.x_K, tr.si_Q, tr.ri_R, tr.se_Q, tr.re_R)] == [
        a.tolist() for a in want[:5]
    ]
    si1, se1 = tr.sent_weighted(np.ones(N))  # weights 1: the unweighted sums
    assert si1.tolist() == tr.si_Q.tolist() and se1.tolist() == tr.se_Q.tolist()
    # A second call reuses what does not depend on the weights.
    np.testing.assert_allclose(np.concatenate(tr.sent_weighted(w_R)), np.concatenate(want[5:]))
    with pytest.raises(ValueError, match="method must be one of auto, fast, exact"):
        traffic.split_traffic(counts_QE, slots_K, S, method="even")


def test_read_only_counts_are_accepted_without_warnings():
    c_QE = np.array([[3, 1, 0, 2], [0, 4, 1, 1]], dtype=np.int64)
    c_QE.setflags(write=False)
    slots = [0, 1, 2, 3, 0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a read-only numpy array
        flow = split_tokens(c_QE, slots, 3)
        rs = split.split_tokens_for_rank(c_QE, slots, 3, rank=1)
    assert int(flow.sum()) == 12 and int(rs.load_R.sum()) == 12
