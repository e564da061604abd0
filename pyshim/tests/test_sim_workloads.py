"""The simulator's workload classes, its perfect-balance bound, its burst replicas and the cost
model it hands the swiftmoe strategy."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from sim_harness import (
    cluster,
    linear_time,
    module_sidecar,
    needs_sidecar,
    run_sim,
)

from swiftmoe import cli
from swiftmoe.sim import model
from swiftmoe.sim.calibration import ExpertTime
from swiftmoe.sim.workloads import WORKLOADS, default_hot_experts, workload_iterations


@pytest.fixture(scope="module")
def sidecar_address():
    with module_sidecar() as address:
        yield address


def draw(name, E=32, k=2, it=12, tokens=20000, **kw):
    return np.stack(list(workload_iterations(name, E, 1, it, tokens, k, **kw)))[:, 0]


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("E,k", [(32, 2), (16, 4)])
def test_every_workload_is_deterministic_and_routes_every_token(name, E, k):
    a = draw(name, E, k, seed=3)
    b = draw(name, E, k, seed=3)
    assert np.array_equal(a, b)
    assert a.shape == (12, E) and a.dtype == np.int64
    assert (a.sum(axis=1) == 20000 * k).all()  # k distinct experts per token
    assert (a <= 20000).all()
    assert not np.array_equal(a, draw(name, E, k, seed=4))


def hot_share(loads_E, h):
    return np.sort(loads_E)[::-1][:h].sum() / loads_E.sum()


@pytest.mark.parametrize("E,k", [(64, 8), (32, 2)])
def test_hot_sets_take_about_half_and_move_as_told(E, k):
    h = default_hot_experts(k, 0.5)
    assert h == {8: 5, 2: 2}[k]
    fixed = draw("fixed-hot", E, k, it=9, tokens=16384)
    moving = draw("moving-hot", E, k, it=9, tokens=16384)
    for it in range(9):
        assert 0.45 < hot_share(fixed[it], h) < 0.55
        assert 0.45 < hot_share(moving[it], h) < 0.55

    def hot_set(row):
        return frozenset(np.argsort(-row, kind="stable")[:h].tolist())

    assert len({hot_set(r) for r in fixed}) == 1
    sets = [hot_set(r) for r in moving]
    for it in range(1, 9):
        assert (sets[it] == sets[it - 1]) == (it % 3 != 0), (it, sets)


def test_burst_every_fourth_iteration():
    a = draw("burst", 32, 2, it=12, tokens=16384)
    shares = [hot_share(r, 2) for r in a]
    for it, sh in enumerate(shares):
        if it % 4 == 3:
            assert 0.45 < sh < 0.55, (it, shares)
        else:
            assert sh < 0.3, (it, shares)
    bursts = [frozenset(np.argsort(-a[it])[:2].tolist()) for it in (3, 7, 11)]
    assert len(set(bursts)) == 3  # a new hot set each burst


def test_half_idle_and_uniform():
    idle = draw("half-idle", 32, 2, it=5)
    zero = idle == 0
    assert (zero.sum(axis=1) == 16).all() and (zero == zero[0]).all()
    uni = draw("uniform", 32, 2, it=5, tokens=64000)
    assert uni.max() / uni.mean() < 1.05


def test_workload_errors_name_the_flag():
    with pytest.raises(ValueError, match="--workload is 'nope'"):
        draw("nope")
    with pytest.raises(ValueError, match="raise --hot-experts to at least 5"):
        draw("fixed-hot", 64, 8, hot_experts=3)
    with pytest.raises(ValueError, match="--hot-share is 1.5"):
        draw("moving-hot", hot_share=1.5)
    with pytest.raises(ValueError, match="--burst-every is 1"):
        draw("burst", burst_every=1)
    with pytest.raises(ValueError, match="--shift-every is 0"):
        draw("moving-hot", shift_every=0)


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_sim_workload_flags():
    with pytest.raises(SystemExit) as e:
        _cli(["sim", "--help"])
    assert e.value.code == 0
    rc, _, err = _cli(["sim", "--trace", "x.jsonl", "--workload", "burst"])
    assert rc == 2 and "--workload burst draws a synthetic trace" in err
    rc, _, err = _cli(
        ["sim", "--synthetic-experts", "8", "--workload", "fixed-hot", "--hot-share", "0.9",
         "--hot-experts", "2", "--top-k", "4", "--iterations", "2"]
    )  # fmt: skip
    assert rc == 2 and "raise --hot-experts to at least" in err
    rc, _, err = _cli(["sim", "--synthetic-experts", "8", "--swiftmoe-option", "objective"])
    assert rc == 2 and "--swiftmoe-option 'objective': pass KEY=VALUE" in err


def test_bound_is_perfect_balance():
    c = cluster(gpus=4, per_node=2, compute_model="grouped")
    b = model.bound_layer(c, linear_time(), 8000, 3)
    # every rank computes 2000 tokens; every source sends 500 to each rank, 1000 across nodes
    assert b.compute_ms == pytest.approx(2.0)
    assert b.a2a_ms == pytest.approx(4 * 1e3 * max(500 * 128 / 1e9, 1000 * 128 / 0.5e9))
    assert b.transfer_ms == pytest.approx(model.transfer_ms(c, 3))
    assert np.allclose(b.load_R, 2000)
    # a static layout that keeps every token in its node moves less: its all-to-all is taken
    assert model.bound_layer(c, linear_time(), 8000, 3, 0.25).a2a_ms == 0.25
    per_slot = model.bound_layer(cluster(compute_model="per-slot"), linear_time(), 8000, 4)
    assert per_slot.compute_ms == pytest.approx(4 * 0.5)  # four slots of 500 tokens


def test_marginal_flops_of_a_table():
    # 1 ms fixed, then about 1 ms per 1000 tokens: 1e6 tokens/s at the margin
    et = ExpertTime("t", "gpu", "s", np.array([1.0, 1e6]), np.array([1.0, 1001.0]))
    assert et.flops_per_s(6.0, 1000) == pytest.approx(6.0 * 1e6, rel=1e-5)


def skewed(it=8, E=8, hot=4000, rest=500):
    loads = np.full((it, 1, E), rest)
    for i in range(it):
        loads[i, 0, (i // 2) % E] = hot  # a hot expert that moves every 2 iterations
    return loads


@needs_sidecar
def test_bursts_cut_the_step_where_the_hot_expert_moves(sidecar_address):
    # 4 GPUs in 2 nodes, 2 slots each; 1 ms per 1000 tokens, so a token is worth 1 us of compute
    # and copying an expert (16 KiB of weights) within a node 33 ns.
    loads = skewed()
    res = run_sim(
        sidecar_address, loads, "bound,swiftmoe,swiftmoe-burst", 2, 2, flops_per_s=6 * 16384e6
    )
    sw, bu = res.per_iteration["swiftmoe"], res.per_iteration["swiftmoe-burst"]
    moved = [2, 4, 6]  # the plan (from the previous iteration) misses the new hot expert
    assert (bu["bursts"][moved] > 0).all(), bu["bursts"]
    # The planned slots' compute (hundreds of us) hides the 33 ns copies: nothing charged.
    assert (bu["copy_ms"] == 0).all()
    assert (bu["step_ms"][moved] < 0.9 * sw["step_ms"][moved]).all(), (bu["step_ms"], sw["step_ms"])
    assert (bu["step_ms"] <= sw["step_ms"] + 1e-9).all()  # a burst that does not pay is not made
    quiet = bu["bursts"] == 0
    assert np.allclose(bu["step_ms"][quiet], sw["step_ms"][quiet])


@needs_sidecar
def test_decision_ms_charges_every_layer_call_whose_decision_ran(sidecar_address):
    # The burst decision's host time (--decision-ms) is charged where its threshold is passed,
    # whether or not it makes bursts (without a throughput it has nothing to weigh a copy
    # against: none made); nothing else changes. Without the decision's gate (below).
    loads = skewed()
    systems = "bound,swiftmoe,swiftmoe-burst"
    for flops, made in ((6 * 16384e6, True), (0.0, False)):
        kw = dict(flops_per_s=flops, decision_gate=False)
        base = run_sim(sidecar_address, loads, systems, 2, 2, **kw)
        res = run_sim(sidecar_address, loads, systems, 2, 2, decision_ms=0.25, **kw)
        b0, b1 = base.per_iteration["swiftmoe-burst"], res.per_iteration["swiftmoe-burst"]
        # One layer, a hot expert in every iteration: one decision an iteration.
        np.testing.assert_array_equal(b1["decision_ms"], np.full(len(loads), 0.25))
        assert (b1["bursts"] > 0).all() if made else (b1["bursts"] == 0).all(), b1["bursts"]
        np.testing.assert_allclose(b1["step_ms"], b0["step_ms"] + 0.25)
        assert (b0["decision_ms"] == 0).all()
        for name in ("bound", "swiftmoe"):  # the other systems are not charged
            r1, r0 = res.per_iteration[name], base.per_iteration[name]
            np.testing.assert_allclose(r1["step_ms"], r0["step_ms"])
            assert (r1["decision_ms"] == 0).all()
    # Uniform loads never pass the threshold: nothing charged.
    flat = run_sim(
        sidecar_address, np.full((4, 1, 8), 1000), systems, 2, 2, decision_ms=0.25,
        flops_per_s=6 * 16384e6,
    )  # fmt: skip
    assert (flat.per_iteration["swiftmoe-burst"]["decision_ms"] == 0).all()
    with pytest.raises(ValueError, match="--decision-ms"):
        run_sim(sidecar_address, loads, "swiftmoe-burst", 2, 2, decision_ms=-1.0)
    # --decision-ms measured: each decision's own wall time here, on the same calls.
    kw = dict(flops_per_s=6 * 16384e6, decision_gate=False)
    base = run_sim(sidecar_address, loads, systems, 2, 2, **kw)
    res = run_sim(sidecar_address, loads, systems, 2, 2, decision_measured=True, **kw)
    b0, b1 = base.per_iteration["swiftmoe-burst"], res.per_iteration["swiftmoe-burst"]
    assert ((b1["decision_ms"] > 0) & (b1["decision_ms"] < 10_000)).all(), b1["decision_ms"]
    np.testing.assert_allclose(b1["step_ms"], b0["step_ms"] + b1["decision_ms"])
    np.testing.assert_array_equal(b1["bursts"], b0["bursts"])
    flat = run_sim(
        sidecar_address, np.full((4, 1, 8), 1000), systems, 2, 2, decision_measured=True, **kw
    )
    assert (flat.per_iteration["swiftmoe-burst"]["decision_ms"] == 0).all()


@needs_sidecar
def test_decision_gate_stops_decisions_that_cannot_pay(sidecar_address):
    # The engine's gate (burst_run.DecisionGate) with --decision-ms as the decision's host time:
    # the first decision runs; past it one runs only where the planned step exceeds the step
    # the last decision reached by more than its host time. A decision dearer than any gain
    # (1 s) then never runs again in 8 iterations (the gate lifts after 16 stopped in a row);
    # a stopped one is charged nothing and makes no burst.
    loads = skewed()
    systems = "bound,swiftmoe,swiftmoe-burst"
    kw = dict(flops_per_s=6 * 16384e6)
    dear = run_sim(sidecar_address, loads, systems, 2, 2, decision_ms=1e3, **kw)
    b = dear.per_iteration["swiftmoe-burst"]
    np.testing.assert_array_equal(b["decision_ms"], [1e3] + [0.0] * (len(loads) - 1))
    assert b["bursts"][0] > 0 and (b["bursts"][1:] == 0).all(), b["bursts"]
    sw = dear.per_iteration["swiftmoe"]
    np.testing.assert_allclose(b["step_ms"][1:], sw["step_ms"][1:])  # the planned placement's
    # A decision that costs next to nothing runs wherever the planned step is above the last
    # reached one, which here is wherever the ungated decision made bursts.
    cheap = run_sim(sidecar_address, loads, systems, 2, 2, decision_ms=1e-9, **kw)
    free = run_sim(sidecar_address, loads, systems, 2, 2, decision_ms=1e-9, decision_gate=False,
                   **kw)  # fmt: skip
    c, f = cheap.per_iteration["swiftmoe-burst"], free.per_iteration["swiftmoe-burst"]
    np.testing.assert_array_equal(c["bursts"], f["bursts"])
    np.testing.assert_allclose(c["step_ms"], f["step_ms"], atol=1e-6)


@needs_sidecar
def test_split_ms_charges_every_layer_call_of_the_swiftmoe_systems(sidecar_address):
    # The engine's split on the host (--split-ms) is charged to each layer call of swiftmoe and
    # swiftmoe-burst, balanced or not, and to no other system; nothing else changes.
    L = 3
    loads = np.concatenate([skewed()] * L, axis=1)  # three layers an iteration
    systems = "bound,swiftmoe,swiftmoe-burst,static-nopad,flexmoe-10"
    kw = dict(flops_per_s=6 * 16384e6)
    base = run_sim(sidecar_address, loads, systems, 2, 2, **kw)
    res = run_sim(sidecar_address, loads, systems, 2, 2, split_ms=0.125, **kw)
    for name in ("swiftmoe", "swiftmoe-burst"):
        r0, r1 = base.per_iteration[name], res.per_iteration[name]
        np.testing.assert_array_equal(r1["split_ms"], np.full(len(loads), L * 0.125))
        np.testing.assert_allclose(r1["step_ms"], r0["step_ms"] + L * 0.125)
        np.testing.assert_array_equal(r1["bursts"], r0["bursts"])
        assert (r0["split_ms"] == 0).all()
    for name in ("bound", "static-nopad", "flexmoe-10"):
        r0, r1 = base.per_iteration[name], res.per_iteration[name]
        np.testing.assert_allclose(r1["step_ms"], r0["step_ms"])
        assert (r1["split_ms"] == 0).all()
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--split-ms is"):
            run_sim(sidecar_address, loads, "swiftmoe", 2, 2, split_ms=bad)


@needs_sidecar
def test_new_placement_charges_where_the_placement_changed(sidecar_address):
    # --split-new-ms and --decision-new-ms replace the two charges on a layer call whose
    # placement changed since the iteration before, and in the first iteration: the engine's
    # first split of a new placement costs more. The hot expert moves, so some iterations keep
    # their placement and some do not; the iterations charged the new figures are the first
    # and those the plan changed (the job's placement_changes).
    loads = skewed()
    kw = dict(flops_per_s=6 * 16384e6, decision_gate=False)
    res = run_sim(
        sidecar_address, loads, "bound,swiftmoe-burst", 2, 2, split_ms=0.1, split_new_ms=0.3,
        decision_ms=0.25, decision_new_ms=0.5, **kw,
    )  # fmt: skip
    b = res.per_iteration["swiftmoe-burst"]
    new = b["split_ms"] == 0.3
    assert ((b["split_ms"] == 0.1) | new).all(), b["split_ms"]
    assert new[0] and new.sum() == 1 + res.jobs["swiftmoe-burst"]["placement_changes"]
    assert 0 < new.sum() < len(loads), new  # both kinds happen
    np.testing.assert_array_equal(b["decision_ms"], np.where(new, 0.5, 0.25))
    # Left out, they are the plain charges.
    plain = run_sim(
        sidecar_address, loads, "bound,swiftmoe-burst", 2, 2, split_ms=0.1, decision_ms=0.25, **kw
    )
    p = plain.per_iteration["swiftmoe-burst"]
    np.testing.assert_array_equal(p["split_ms"], np.full(len(loads), 0.1))
    np.testing.assert_array_equal(p["decision_ms"], np.full(len(loads), 0.25))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="--split-new-ms is"):
            run_sim(sidecar_address, loads, "swiftmoe", 2, 2, split_new_ms=bad)


@needs_sidecar
def test_swiftmoe_plans_for_step_time_with_the_clusters_cost_model(sidecar_address):
    # 8 GPUs in 2 nodes, slow links between them: with the cost model, SwiftMoE keeps tokens in
    # their node and moves fewer of them than when it balances compute alone.
    c = cluster(gpus=8, per_node=4, compute_model="grouped", intra=100e9, inter=0.1e9)
    loads = np.tile(np.array([9000, 5000, 3000, 2000, 1500, 1000, 800, 700]), (4, 1, 1))
    kw = dict(cluster=c, flops_per_s=6 * 16384e6)
    step = run_sim(sidecar_address, loads, "swiftmoe", 2, 2, **kw).per_iteration["swiftmoe"]
    comp = run_sim(
        sidecar_address, loads, "swiftmoe", 2, 2, swift={"objective": "compute"}, **kw
    ).per_iteration["swiftmoe"]
    assert (step["a2a_ms"][1:] < 0.8 * comp["a2a_ms"][1:]).all(), (step["a2a_ms"], comp["a2a_ms"])
    assert (step["step_ms"][1:] < comp["step_ms"][1:]).all()


@needs_sidecar
def test_swiftmoe_splits_as_the_engine_does_with_its_stage_1_priced(sidecar_address):
    # 8 GPUs in 2 nodes with slow links between them, a hot set that moves: SwiftMoE's split
    # (and its burst decision) takes the node-local amounts where the cost model prices them
    # cheaper. The simulator's compute and all-to-all are the cost model's here (1 us per token
    # on either side), so no iteration is slower than with the min-max split, and the ones after
    # a move are faster. FlexMoE's split is the min-max one either way.
    c = cluster(gpus=8, per_node=4, compute_model="grouped", intra=100e9, inter=0.2e9)
    loads = draw("moving-hot", E=32, k=4, it=8, tokens=16000)[:, None, :]
    kw = dict(cluster=c, flops_per_s=6 * 16384e6)
    systems = "swiftmoe-burst,flexmoe-3"
    auto = run_sim(sidecar_address, loads, systems, 6, 6, **kw)
    fast = run_sim(sidecar_address, loads, systems, 6, 6, split_method="fast", **kw)
    for f in ("step_ms", "a2a_ms", "compute_ms"):
        np.testing.assert_array_equal(
            auto.per_iteration["flexmoe-3"][f], fast.per_iteration["flexmoe-3"][f]
        )
    np.testing.assert_array_equal(auto.replicas["swiftmoe-burst"], fast.replicas["swiftmoe-burst"])
    a, f = auto.per_iteration["swiftmoe-burst"], fast.per_iteration["swiftmoe-burst"]
    assert (a["step_ms"] <= f["step_ms"] + 1e-9).all(), (a["step_ms"], f["step_ms"])
    assert (a["step_ms"] < 0.97 * f["step_ms"]).sum() >= 2, (a["step_ms"], f["step_ms"])
