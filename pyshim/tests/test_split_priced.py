"""The split's stage 1 chosen by the cost model (swiftmoe.engine.split.priced): the node-local
and the node-balanced amounts, the choice between them and the min-max amounts, and that every
form of the split (a rank's part, the whole flow, the simulator's sums, the loads) makes the
same choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from split_reference import rank_load_from_flow, split_tokens

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine.split import demand as demand_mod
from swiftmoe.engine.split import priced, split_rank_loads, split_tokens_for_rank
from swiftmoe.engine.split.demand import min_max_demand
from swiftmoe.engine.split.plan_index import node_plans, prepare
from swiftmoe.engine.split.tiers import tier_sums
from swiftmoe.sim import traffic

D_MODEL = 768
P = 3 * D_MODEL * 3072


def cost(N, rpn, inter, flops=5.8e14, intra=3e11):
    """H200-like cost parameters of GPT-Small experts (bf16)."""
    return cm.CostParams(
        ranks=N,
        ranks_per_node=rpn,
        token_bytes=2 * D_MODEL,
        expert_bytes=2 * P,
        flops_per_token=6 * P,
        flops_per_s=flops,
        intra_bw=intra,
        inter_bw=inter,
    )


def price(p, c_QE, slots, S, rpn, demand_K):
    _, plan, _ = prepare(c_QE, slots, S)
    load_R = demand_K.reshape(plan.N, S).sum(axis=1)
    return cm.compute_ms(p, load_R) + cm.a2a_ms(p, *tier_sums(c_QE, plan, demand_K, rpn))


def two_nodes_case():
    """4 ranks in 2 nodes; experts 0 and 1 each have a replica in both nodes (ranks 0/2 hold
    expert 0, ranks 1/3 expert 1). Node 0 sends expert 0 all its 2,000 tokens; node 1 sends
    expert 1 200."""
    slots = [0, 1, 0, 1]
    c = np.array([[1000, 0], [1000, 0], [0, 100], [0, 100]])
    return c, slots, 1, 2


def test_node_local_amounts_keep_each_nodes_tokens_in_it():
    c, slots, S, rpn = two_nodes_case()
    _, plan, L_E = prepare(c, slots, S)
    x_P = priced.amounts_node_local(c, plan, L_E, rpn)
    # pairs by expert then rank: (0, 0), (0, 2), (1, 1), (1, 3)
    assert x_P.tolist() == [2000, 0, 0, 200]
    d_K = demand_mod.slot_demand(plan, x_P)
    assert tier_sums(c, plan, d_K, rpn)[2].sum() == 0  # nothing crosses
    _, _, d_mm, _ = min_max_demand(c, slots, S, rpn, "fast")
    assert d_mm.reshape(4, 1).sum(axis=1).max() < 2000  # min-max evens ranks 0 and 2 out
    assert tier_sums(c, plan, d_mm, rpn)[2].sum() > 0  # ... across the nodes


def _random_case(rng, N, rpn, every_node_holds_all):
    E = int(rng.integers(2, 3 * N))
    S = int(rng.integers(1, 4))
    while N * S < E or (every_node_holds_all and rpn * S < E):
        S += 1
    if every_node_holds_all:  # each node holds every expert once, the rest at random
        slots = np.concatenate(
            [
                rng.permutation(np.concatenate([np.arange(E), rng.integers(0, E, rpn * S - E)]))
                for _ in range(N // rpn)
            ]
        )
    else:
        slots = rng.permutation(np.concatenate([np.arange(E), rng.integers(0, E, N * S - E)]))
    p_E = rng.dirichlet(np.full(E, 0.3))
    c = rng.multinomial(int(rng.integers(0, 5000)), p_E, size=N)
    return c.astype(np.int64), slots, S


def _node_cases(seed, every_node_holds_all, n=60):
    """n random cases on 4 to 12 ranks in nodes of 2 to 4: (c, slots, S, rpn, plan, L_E)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        N = int(rng.choice([4, 6, 8, 12]))
        rpn = int(rng.choice([d for d in (2, 3, 4) if N % d == 0 and d < N]))
        c, slots, S = _random_case(rng, N, rpn, every_node_holds_all)
        _, plan, L_E = prepare(c, slots, S)
        yield c, slots, S, rpn, plan, L_E


@pytest.mark.parametrize("every_node_holds_all", [False, True])
def test_node_local_amounts_are_exact_and_cross_only_for_nodes_without_a_replica(
    every_node_holds_all,
):
    for c, _, _, rpn, plan, L_E in _node_cases(11, every_node_holds_all):
        N = plan.N
        x_P = priced.amounts_node_local(c, plan, L_E, rpn)
        assert x_P.dtype == np.int64 and (x_P >= 0).all()
        np.testing.assert_array_equal(np.bincount(plan.e_P, x_P, minlength=plan.E), L_E)
        if every_node_holds_all:
            d_K = demand_mod.slot_demand(plan, x_P)
            si, ri, se, re_ = tier_sums(c, plan, d_K, rpn)
            # Up to a token of rounding per (expert, node), every token stays in its node.
            assert se.sum() <= plan.E * (N // rpn), se.sum()


def uneven_sources_case():
    """4 ranks in 2 nodes of 2, one expert with a replica on every rank. Rank 0 routes it 1,500
    tokens and rank 1 500 (node 0: 2,000); ranks 2 and 3, 800 and 200 (node 1: 1,000)."""
    return np.array([[1500], [500], [800], [200]]), [0, 0, 0, 0], 1, 2


def test_node_balanced_amounts_even_each_node_and_keep_its_tokens():
    c, slots, S, rpn = uneven_sources_case()
    _, plan, L_E = prepare(c, slots, S)
    # Node-local: each rank keeps its own tokens, ranks 0 and 2 are the busiest of their node.
    assert priced.amounts_node_local(c, plan, L_E, rpn).tolist() == [1500, 500, 800, 200]
    # Node-balanced: the same 2,000 and 1,000 per node, even inside each node (to the min-max
    # amounts' tolerance, 0.75%).
    x_P = priced.amounts_node_balanced(c, plan, L_E, rpn)
    assert x_P[:2].sum() == 2000 and x_P[2:].sum() == 1000
    assert x_P[:2].max() <= 1000 * 1.0075 and x_P[2:].max() <= 500 * 1.0075, x_P
    d_K = demand_mod.slot_demand(plan, x_P)
    assert tier_sums(c, plan, d_K, rpn)[2].sum() == 0  # nothing crosses nodes
    # The min-max split evens all four (750 each), moving tokens across nodes.
    _, _, d_mm, _ = min_max_demand(c, slots, S, rpn, "fast")
    assert d_mm.max() <= 750 * 1.0075 and tier_sums(c, plan, d_mm, rpn)[2].sum() > 0
    # Slow links: the node-balanced amounts win, cheaper than the node-local ones too (1.5x
    # the compute); fast links: the min-max amounts.
    d_loc = demand_mod.slot_demand(plan, priced.amounts_node_local(c, plan, L_E, rpn))
    for inter, want in ((1e8, d_K), (1e13, d_mm)):
        p = cost(4, rpn, inter)
        _, _, got, _, pr = demand_mod.priced_demand(c, slots, S, rpn, "auto", p)
        np.testing.assert_array_equal(got, want)
        assert pr.node_local is (inter == 1e8)
        t = price(p, c, slots, S, rpn, got)
        assert t == min(price(p, c, slots, S, rpn, d) for d in (d_mm, d_K))
        assert t < price(p, c, slots, S, rpn, d_loc)


@pytest.mark.parametrize("every_node_holds_all", [False, True])
def test_node_balanced_amounts_keep_the_node_local_totals_and_no_busier(every_node_holds_all):
    evened = 0
    for c, _, S, rpn, plan, L_E in _node_cases(31, every_node_holds_all):
        N = plan.N
        x_loc = priced.amounts_node_local(c, plan, L_E, rpn)
        x_bal = priced.amounts_node_balanced(c, plan, L_E, rpn)
        assert x_bal.dtype == np.int64 and (x_bal >= 0).all()
        # Each node takes exactly the node-local amounts' tokens of each expert.
        M = N // rpn
        g_P = plan.e_P * M + plan.r_P // rpn
        np.testing.assert_array_equal(
            np.bincount(g_P, x_bal, minlength=plan.E * M),
            np.bincount(g_P, x_loc, minlength=plan.E * M),
        )
        # No node's busiest rank is above the node-local amounts' (up to rounding: a token
        # per pair, twice).
        y_loc = np.bincount(plan.r_P, x_loc, minlength=N).reshape(M, rpn).max(axis=1)
        y_bal = np.bincount(plan.r_P, x_bal, minlength=N).reshape(M, rpn).max(axis=1)
        assert (y_bal <= y_loc + 2 * S).all(), (y_bal, y_loc)
        evened += int((y_bal < y_loc).any())
        # The nodes' own plans are indexed once per plan.
        assert node_plans(plan, rpn) is node_plans(plan, rpn)
    assert evened >= 10, evened


def test_slow_links_keep_tokens_in_their_node_and_fast_links_min_max():
    c, slots, S, rpn = two_nodes_case()
    _, _, d_mm, _ = min_max_demand(c, slots, S, rpn, "fast")
    _, plan, L_E = prepare(c, slots, S)
    # One replica of each expert per node: node-balanced is node-local.
    d_loc = demand_mod.slot_demand(plan, priced.amounts_node_balanced(c, plan, L_E, rpn))
    assert d_loc.tolist() == [2000, 0, 0, 200]
    slow, fast = cost(4, rpn, 1e8), cost(4, rpn, 1e13)
    for p, want in ((slow, d_loc), (fast, d_mm)):
        _, _, got, _ = min_max_demand(c, slots, S, rpn, "auto", p)
        np.testing.assert_array_equal(got, want)
        # The choice is the cheaper of the two by the cost model.
        t = price(p, c, slots, S, rpn, got)
        assert t == min(price(p, c, slots, S, rpn, d) for d in (d_mm, d_loc))


def test_without_cost_on_one_node_or_with_fast_it_is_the_min_max_split():
    rng = np.random.default_rng(5)
    for _ in range(30):
        N, rpn = 8, 4
        c, slots, S = _random_case(rng, N, rpn, False)
        _, _, d_fast, _ = min_max_demand(c, slots, S, rpn, "fast")
        p = cost(N, rpn, 1e6)  # very slow links: node-balanced wins whenever it differs
        for args in (
            (rpn, "auto", None),  # no cost
            (rpn, "fast", p),  # min-max asked for
            (0, "auto", cost(N, 0, 1e6)),  # one node
            (rpn, "auto", cost(N, rpn, 0.0)),  # links between nodes not priced
            (rpn, "auto", cost(N, rpn, 1e6, flops=0.0)),  # compute not priced
        ):
            want = d_fast if args[0] else min_max_demand(c, slots, S, 0, "fast")[2]
            np.testing.assert_array_equal(min_max_demand(c, slots, S, *args)[2], want)


def test_every_form_of_the_split_makes_the_same_choice():
    rng = np.random.default_rng(23)
    chose = {"local": 0, "min-max": 0}
    for trial in range(40):
        N = int(rng.choice([4, 8]))
        rpn = N // 2
        c, slots, S = _random_case(rng, N, rpn, trial % 2 == 0)
        p = cost(N, rpn, float(rng.choice([1e8, 1e10, 1e12])))
        _, plan, L_E = prepare(c, slots, S)
        _, _, d_auto, _ = min_max_demand(c, slots, S, rpn, "auto", p)
        _, _, d_fast, _ = min_max_demand(c, slots, S, rpn, "fast")
        if not np.array_equal(d_auto, d_fast):
            chose["local"] += 1
        elif not np.array_equal(
            d_fast, demand_mod.slot_demand(plan, priced.amounts_node_balanced(c, plan, L_E, rpn))
        ):
            chose["min-max"] += 1
        dense = split_tokens(c, slots, S, rpn, "auto", p)
        load_R = rank_load_from_flow(dense, S)
        assert load_R.tolist() == d_auto.reshape(N, S).sum(axis=1).tolist()
        assert torch.equal(split_rank_loads(c, slots, S, rpn, "auto", cost=p), load_R)
        took_local = not np.array_equal(d_auto, d_fast)
        for r in range(N):
            rs = split_tokens_for_rank(c, slots, S, r, rpn, "auto", cost=p)
            assert rs.node_local is took_local  # what the engine's step stats count
            assert torch.equal(rs.send_K, dense[r])
            assert torch.equal(rs.recv_QS, dense[:, r * S : (r + 1) * S])
        tr = traffic.split_traffic(c, slots, S, rpn, "auto", weighted=False, cost=p)
        assert tr.x_K.tolist() == d_auto.tolist()
        want = tier_sums(c, plan, d_auto, rpn)
        for got, w in zip((tr.si_Q, tr.ri_R, tr.se_Q, tr.re_R), want, strict=True):
            assert got.tolist() == w.tolist()
    assert min(chose.values()) >= 5, chose


def test_cost_of_another_job_is_refused():
    c, slots, S, rpn = two_nodes_case()
    for p, words in (
        (cost(8, rpn, 1e9), "ranks=8"),
        (cost(4, 1, 1e9), "ranks_per_node=1"),
    ):
        with pytest.raises(ValueError, match=words) as err:
            min_max_demand(c, slots, S, rpn, "auto", p)
        assert "pass the cost parameters of this job" in str(err.value)
    # ranks_per_node >= N and 0 both mean one node.
    min_max_demand(c, slots, S, 0, "auto", cost(4, 4, 1e9))
    _, plan, L_E = prepare(c, slots, S)
    for G in (0, 4, 5):
        with pytest.raises(ValueError, match="node-local amounts need two nodes or more"):
            priced.amounts_node_local(c, plan, L_E, G)
