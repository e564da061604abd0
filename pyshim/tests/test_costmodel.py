"""The shared step-time cost model (swiftmoe.engine.costmodel): values by hand, the simulator's
all-to-all, what it degrades to, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from swiftmoe.engine import costmodel as cm
from swiftmoe.sim import model as sim_model


def params(**kw):
    base = dict(
        ranks=4,
        ranks_per_node=2,
        token_bytes=1000.0,
        expert_bytes=1e6,
        flops_per_token=6e6,
        flops_per_s=1e12,
        intra_bw=1e9,
        inter_bw=1e8,
    )
    base.update(kw)
    return cm.CostParams(**base)


def test_compute_ms_is_the_busiest_rank():
    p = params()
    # 1e3 * 6e6 * 500 / 1e12 = 3 ms
    assert cm.compute_ms(p, [100, 500, 0, 20]) == pytest.approx(3.0)
    assert cm.compute_ms(p, [0, 0, 0, 0]) == 0.0


def test_a2a_ms_by_hand():
    p = params()
    si = [10, 0, 0, 0]  # rank 0 sends 10 tokens inside its node: 10 * 1000 / 1e9 s
    ri = [0, 10, 0, 0]
    se = [0, 0, 3, 0]  # rank 2 sends 3 tokens to the other node: 3 * 1000 / 1e8 s = 30 us
    re_ = [3, 0, 0, 0]
    want = 4e3 * max(10 * 1000 / 1e9, 3 * 1000 / 1e8)
    assert cm.a2a_ms(p, si, ri, se, re_) == pytest.approx(want)
    assert cm.a2a_ms(p, si, ri, se, re_) == pytest.approx(0.12)


def test_copy_ms_and_copy_traffic_by_hand():
    p = params()
    # 0 -> 1 within node 0, 0 -> 3 across nodes, 2 -> 2 moves nothing.
    tr = cm.copy_traffic(p, [0, 0, 2], [1, 3, 2])
    np.testing.assert_array_equal(tr[0], [1, 0, 0, 0])  # csi
    np.testing.assert_array_equal(tr[1], [0, 1, 0, 0])  # cri
    np.testing.assert_array_equal(tr[2], [1, 0, 0, 0])  # cse
    np.testing.assert_array_equal(tr[3], [0, 0, 0, 1])  # cre
    # slowest: one expert over the inter-node link, 1e6 / 1e8 s = 10 ms, twice.
    assert cm.copy_ms(p, *tr) == pytest.approx(20.0)
    assert cm.step_ms(p, [0, 500, 0, 0], *([0] * 4,) * 4, copies=tr) == pytest.approx(23.0)
    empty = cm.copy_traffic(p, [], [])
    assert cm.copy_ms(p, *empty) == 0.0


def test_copy_exposed_ms_by_hand():
    p = params()  # 6e-3 ms a token; one copy 1 ms one way within a node, 10 ms across
    tr = cm.copy_traffic(p, [0], [1])
    # rank 0 sends while its 600 planned tokens run (3.6 ms: 1.2 forward, 2.4 backward):
    # hidden. Rank 1 has 100 planned tokens (0.2 + 0.4 ms) to hide 1 ms each way, then 300
    # burst tokens: 1 + 1 + 1.8 = 3.8 ms against the busiest compute's 3.6.
    got = cm.copy_exposed_ms(p, [600, 100, 0, 0], [0, 300, 0, 0], *tr)
    assert got == pytest.approx(0.2)
    # 300 planned tokens hide most of it (1 + 1.2 + 0.6 = 2.8 < 3.6): nothing shows.
    assert cm.copy_exposed_ms(p, [600, 300, 0, 0], [0, 100, 0, 0], *tr) == pytest.approx(0.0)
    # Nothing to hide the copy behind: the whole copy_ms.
    assert cm.copy_exposed_ms(p, [0] * 4, [0] * 4, *tr) == pytest.approx(cm.copy_ms(p, *tr))
    no_compute = params(flops_per_token=0.0)
    assert cm.copy_exposed_ms(no_compute, [600, 100, 0, 0], [0, 300, 0, 0], *tr) == (
        pytest.approx(cm.copy_ms(no_compute, *tr))
    )
    assert cm.copy_exposed_ms(p, [600, 100, 0, 0], [0, 300, 0, 0], *([0] * 4,) * 4) == 0.0


def test_copy_exposed_ms_is_between_nothing_and_the_whole_copy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = params(ranks=8, ranks_per_node=4)
        C = int(rng.integers(1, 6))
        tr = cm.copy_traffic(p, rng.integers(0, 8, C), rng.integers(0, 8, C))
        planned, burst = rng.integers(0, 2000, (2, 8))
        got = cm.copy_exposed_ms(p, planned, burst, *tr)
        assert 0.0 <= got <= cm.copy_ms(p, *tr) + 1e-12


def test_one_node_puts_everything_in_the_intra_tier():
    for G in (0, 4, 9):
        p = params(ranks_per_node=G)
        np.testing.assert_array_equal(cm.node_of(p), [0, 0, 0, 0])
        assert p.nodes == 1
        csi, cri, cse, cre = cm.copy_traffic(p, [0], [3])
        assert (csi[0], cri[3], cse.sum(), cre.sum()) == (1, 1, 0, 0)
    assert params(ranks=5, ranks_per_node=2).nodes == 3
    np.testing.assert_array_equal(cm.node_of(params(ranks=5, ranks_per_node=2)), [0, 0, 1, 1, 2])


def test_a2a_equals_the_simulators_all_to_all():
    rng = np.random.default_rng(7)
    for gpus, per_node in ((8, 4), (6, 6), (9, 4)):
        c = sim_model.Cluster(
            gpus=gpus,
            gpus_per_node=per_node,
            d_model=512,
            d_ff=1024,
            gated=True,
            bytes_per_param=2,
            optimizer_bytes=12,
            intra_bw=4.5e11,
            inter_bw=1.25e10,
            pcie_bw=5e10,
            offload=False,
            compute_model="grouped",
        )
        p = cm.CostParams(
            ranks=gpus,
            ranks_per_node=c.ranks_per_node,
            token_bytes=c.token_bytes,
            intra_bw=c.intra_bw,
            inter_bw=c.inter_bw,
        )
        for _ in range(5):
            F = rng.integers(0, 1000, size=(gpus, gpus))
            node = np.arange(gpus) // per_node
            same = node[:, None] == node[None, :]
            own = np.diag(F)
            si = (F * same).sum(1) - own
            ri = (F * same).sum(0) - own
            se = (F * ~same).sum(1)
            re_ = (F * ~same).sum(0)
            assert cm.a2a_ms(p, si, ri, se, re_) == pytest.approx(sim_model.a2a_ms(c, F), rel=1e-12)


def test_unknown_inputs_price_their_term_at_zero():
    p = params(intra_bw=0.0, inter_bw=0.0)
    assert not p.prices_network
    assert cm.a2a_ms(p, [5] * 4, [5] * 4, [5] * 4, [5] * 4) == 0.0
    assert cm.copy_ms(p, [1] * 4, [1] * 4, [1] * 4, [1] * 4) == 0.0
    assert cm.step_ms(p, [1, 2, 3, 4], *([9] * 4,) * 4) == pytest.approx(cm.compute_ms(p, [4] * 4))
    # Only the slow tier unknown: the fast one is still priced.
    q = params(inter_bw=0.0)
    assert cm.a2a_ms(q, [1, 0, 0, 0], [0] * 4, [100] * 4, [100] * 4) == pytest.approx(4e3 * 1e-6)
    for kw in ({"flops_per_s": 0.0}, {"flops_per_token": 0}):
        r = params(**kw)
        assert not r.prices_compute
        assert cm.compute_ms(r, [10, 20, 30, 40]) == 0.0
    assert params().prices_compute and params().prices_network


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"ranks": 0}, "CostParams.ranks"),
        ({"ranks": 2.0}, "CostParams.ranks"),
        ({"ranks_per_node": -1}, "CostParams.ranks_per_node"),
        ({"token_bytes": -1.0}, "CostParams.token_bytes"),
        ({"inter_bw": float("nan")}, "CostParams.inter_bw"),
        ({"flops_per_s": float("inf")}, "CostParams.flops_per_s"),
        ({"expert_bytes": "1e6"}, "CostParams.expert_bytes"),
        ({"intra_bw": True}, "CostParams.intra_bw"),
    ],
)
def test_bad_parameters_name_the_field(kw, words):
    with pytest.raises(ValueError, match=words):
        params(**kw)


def test_bad_vectors_name_the_argument_and_the_fix():
    p = params()
    with pytest.raises(ValueError, match=r"load_R has shape \(3,\), want \(4,\)"):
        cm.compute_ms(p, [1, 2, 3])
    with pytest.raises(ValueError, match="re_R holds a negative"):
        cm.a2a_ms(p, [0] * 4, [0] * 4, [0] * 4, [0, -1, 0, 0])
    with pytest.raises(ValueError, match="ranks must be in 0..3"):
        cm.copy_traffic(p, [0], [4])
    with pytest.raises(ValueError, match="one source and one destination"):
        cm.copy_traffic(p, [0, 1], [2])


def test_params_are_frozen_floats_and_round_trip_as_a_dict():
    p = params(token_bytes=512)
    assert isinstance(p.token_bytes, float)
    assert cm.CostParams(**p.as_dict()) == p
    with pytest.raises(AttributeError):
        p.ranks = 3  # type: ignore[misc]
