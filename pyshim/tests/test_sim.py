"""The simulator's accounting on hand-computable cases, driven by the real sidecar and plugins.

Real-sidecar tests are skipped only when bin/swiftmoe-sidecar is absent (`make build`). A linear
calibration table (1 microsecond per token) makes compute times exact: t(n) = n / 1000 ms.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from sim_harness import (
    LINEAR,
    REPO,
    cluster,
    linear_time,
    module_sidecar,
    needs_sidecar,
    run_sim,
)

from swiftmoe import cli
from swiftmoe.sim import calibration, model, trace
from swiftmoe.sim.calibration import ExpertTime
from swiftmoe.sim.run import FIELDS
from swiftmoe.sim.systems import DEFAULT_SYSTEMS, parse_systems


@pytest.fixture(scope="module")
def sidecar_address():
    with module_sidecar() as address:
        yield address


# ---------------------------------------------------------------- pure parts


def test_calibration_interpolation(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(
        json.dumps(
            {
                "device": "cpu",
                "shapes": {
                    "a (d256 f512 swiglu)": [
                        {"tokens": 200, "fwd_bwd_ms": 3.0},
                        {"tokens": 100, "fwd_bwd_ms": 2.0},
                    ],
                    "b (d1024 f4096 gelu)": [{"tokens": 10, "fwd_bwd_ms": 1.0}],
                },
            }
        )
    )
    et = calibration.load_table(p, shape="a")
    got = et(np.array([0, 1, 100, 150, 200, 400]))
    want = [0.0, 2.0, 2.0, 2.5, 3.0, 6.0]  # zero; floor; point; linear; point; scaled
    assert np.allclose(got, want), f"got {got}, want {want}"
    assert not et.is_gpu
    cpu = ExpertTime("t", "CPU (AMD EPYC, 1 torch thread)", "x", et.tokens_P, et.ms_P)
    gpu = ExpertTime("t", "NVIDIA H200", "x", et.tokens_P, et.ms_P)
    assert not cpu.is_gpu and gpu.is_gpu  # auto compute model: per-slot on CPU, grouped on GPU
    assert calibration.load_table(p, d_model=300, d_ff=600).shape.startswith("a ")
    assert calibration.load_table(p, d_model=900, d_ff=3000).shape.startswith("b ")
    with pytest.raises(ValueError, match="matches no shape"):
        calibration.load_table(p, shape="zzz")
    with pytest.raises(ValueError, match="cannot be read"):
        calibration.load_table(tmp_path / "missing.json", shape="a")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shapes": {"x": [{"tokens": 0, "fwd_bwd_ms": 1}]}}))
    with pytest.raises(ValueError, match="distinct token counts >= 1"):
        calibration.load_table(bad, shape="x")


def test_default_table_is_the_h200_one():
    et = calibration.load_table(None, d_model=768, d_ff=3072)
    assert et.is_gpu and et.shape.startswith("gpt-small"), et.shape
    assert Path(et.table).name == "h200-expert-ffn.json"


def test_source_counts_spread_evenly_remainders_to_lowest_ranks():
    got = trace.source_counts(np.array([10, 3, 0, 8]), 4)
    want = np.array([[3, 1, 0, 2], [3, 1, 0, 2], [2, 1, 0, 2], [2, 0, 0, 2]])
    assert np.array_equal(got, want), f"got {got.tolist()}, want {want.tolist()}"
    big = np.random.default_rng(1).integers(0, 10**6, size=37)
    got = trace.source_counts(big, 13)
    assert np.array_equal(got.sum(axis=0), big)
    assert (got.max(axis=0) - got.min(axis=0) <= 1).all()
    with pytest.raises(ValueError, match="num_ranks"):
        trace.source_counts(big, 0)


def test_scale_loads_hits_the_total_deterministically():
    a = np.array([[[1, 1, 1]], [[0, 0, 0]], [[5, 0, 2]]])
    got = trace.scale_loads(a, 10)
    assert got.sum(axis=-1).tolist() == [[10], [10], [10]]
    assert got[0, 0].tolist() == [4, 3, 3]  # ties to the lower id
    assert got[1, 0].tolist() == [4, 3, 3]  # zeros spread evenly
    assert got[2, 0].tolist() == [7, 0, 3]
    with pytest.raises(ValueError, match="integer >= 1"):
        trace.scale_loads(a, 0)


def test_read_trace_and_its_errors(tmp_path):
    real = trace.read_trace(REPO / "testdata/traces/cheaders-e8-top2-aux0.jsonl", 5)
    assert real.shape == (5, 4, 8)
    assert (real.sum(axis=2) == 4096).all()
    p = tmp_path / "t.jsonl"
    p.write_text('{"iteration": 0, "loads": [[1, 2]]}\n{"iteration": 1, "loads": [[1, -2]]}\n')
    with pytest.raises(ValueError, match=r":2: loads\[0\]\[1\] is -2"):
        trace.read_trace(p)
    p.write_text('{"iteration": 0, "loads": [[1, 2]]}\n{"iteration": 1, "loads": [[1, 2, 3]]}\n')
    with pytest.raises(ValueError, match="same shape"):
        trace.read_trace(p)


@pytest.mark.parametrize(
    "lines, match",
    [
        (
            [
                '{"iteration": 0, "loads": [[1, 2]]}',
                '{"iteration": 1, "loads": [[1, 9223372036854775808]]}',
            ],
            r":2: loads\[0\]\[1\] is 9223372036854775808, over the largest count 9223372036854775807",
        ),
        (
            ['{"iteration": 0, "loads": [[1, 99999999999999999999999999999999]]}'],
            r":1: loads\[0\]\[1\] is 9{32}, over the largest count",
        ),
        (
            ['{"iteration": 0, "loads": [[4611686018427387904, 4611686018427387904]]}'],
            r":1: the token counts up to this line sum to 9223372036854775808, over",
        ),
        (
            ['{"iteration": 0, "loads": [[' + "9" * 5000 + "]]}"],
            r":1: not a JSON value this reader",
        ),
        (
            ["[" * 100_000 + "]" * 100_000],
            r":1: not a JSON value this reader takes \(RecursionError",
        ),
    ],
)
def test_trace_counts_beyond_int64_are_refused_by_line_and_field(tmp_path, lines, match):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        trace.read_trace(p)
    # The command says the same, without a traceback.
    rc, out, err = _cli(
        ["sim", "--trace", str(p), "--gpus", "2", "--gpus-per-node", "2", "--slots", "2"]
    )
    assert rc == 2 and "Traceback" not in err and re.search(match, err), err


@pytest.mark.parametrize("k", [1, 2, 3])
def test_synthetic_trace_is_deterministic_and_top_k_distinct(k):
    a = trace.synthetic_trace(16, 2, 30, 5000, k, zipf=1.2, drift=2, shift_every=10, seed=3)
    b = trace.synthetic_trace(16, 2, 30, 5000, k, zipf=1.2, drift=2, shift_every=10, seed=3)
    c = trace.synthetic_trace(16, 2, 30, 5000, k, zipf=1.2, drift=2, shift_every=10, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a.sum(axis=2) == 5000 * k).all()
    assert a.max() <= 5000  # a token picks an expert at most once
    assert (a.max(axis=2) > 2 * 5000 * k / 16).all()  # skewed


def test_streamed_trace_fills_what_synthetic_trace_draws():
    args = (12, 3, 9, 2000, 2, 1.1, 2, 4, 5)  # 3 layers, a new hot set every 4 iterations
    want = trace.synthetic_trace(*args)
    st = trace.StreamedTrace(want.shape, trace.synthetic_iterations(*args))
    try:
        for it in range(want.shape[0]):
            st.wait(it)
            assert np.array_equal(st.loads_ILE[it], want[it])
    finally:
        st.close()

    def failing():
        yield want[0]
        raise ValueError("draw failed")

    st = trace.StreamedTrace(want.shape, failing())
    try:
        st.wait(0)
        with pytest.raises(ValueError, match="draw failed"):
            st.wait(1)
    finally:
        st.close()
    st = trace.StreamedTrace(want.shape, iter(want[:2]))
    with pytest.raises(ValueError, match="ended after 2 of 9 iterations"):
        st.wait(5)
    st.close()
    st = trace.StreamedTrace(want.shape, iter(list(want) + [want[0] + 1]))  # one row too many
    st.wait(8)
    st.close()
    assert np.array_equal(st.loads_ILE, want), "more rows than the shape: the first ones count"
    with pytest.raises(IndexError, match="outside the trace's 0..8"):
        st.wait(9)
    with pytest.raises(ValueError, match="top-k 13 exceeds the 12 experts"):
        trace.synthetic_iterations(12, 1, 2, 100, 13)  # checked before any draw


def test_streamed_trace_close_wakes_a_waiting_reader():
    gate = threading.Event()

    def slow():
        yield np.zeros((1, 4), dtype=np.int64)
        gate.wait(10)
        yield np.zeros((1, 4), dtype=np.int64)

    st = trace.StreamedTrace((3, 1, 4), slow())
    st.wait(0)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            st.wait(2)
        except BaseException as e:  # noqa: BLE001 (what the reader saw is the point)
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    closer = threading.Thread(target=st.close)
    closer.start()
    assert st._stop.wait(10)
    gate.set()  # the filler draws its next row, sees the stop and ends
    closer.join(10)
    t.join(10)
    assert not t.is_alive(), "a reader waiting on an unfilled iteration was never woken"
    assert errors and "closed after" in str(errors[0]), errors


def test_synthetic_top2_matches_sampling_without_replacement():
    # Zipf 1.2 over 8 experts: the hottest expert is in a token's top-2 with probability
    # p0 + sum_j p_j p0 / (1 - p_j), not 2 p0 (sampling with replacement).
    w = 1 / np.arange(1, 9) ** 1.2
    p = w / w.sum()
    want = p[0] + sum(p[j] * p[0] / (1 - p[j]) for j in range(1, 8))
    a = trace.synthetic_trace(8, 1, 1, 400_000, 2, zipf=1.2, drift=0, seed=0)
    got = a.max() / 400_000
    assert abs(got - want) < 0.005, f"got {got:.4f}, want {want:.4f}"


def test_parse_systems():
    names = [s.name for s in parse_systems(DEFAULT_SYSTEMS)]
    assert names[:4] == ["bound", "swiftmoe", "swiftmoe-burst", "static-nopad"]
    assert "static-cf2.0" in names
    sw, burst = parse_systems("swiftmoe,swiftmoe-burst", swiftmoe_options={"objective": "compute"})
    assert sw.job_key != burst.job_key and burst.burst and not sw.burst  # burst has its own job
    assert sw.options == {"objective": "compute"}
    flex = parse_systems("flexmoe-7", {"threshold": "1.1"})[0]
    assert flex.options == {"interval": "7", "threshold": "1.1"}
    for bad, msg in (("nope", "unknown system"), ("swiftmoe,swiftmoe", "twice"), ("", "at least")):
        with pytest.raises(ValueError, match=msg):
            parse_systems(bad)


def test_a2a_by_tier_by_hand():
    c = cluster()  # 4 ranks, 2 per node, 128-byte tokens, intra 1 GB/s, inter 0.5 GB/s
    F = np.zeros((4, 4))
    F[0, 1] = 1000  # intra-node: 128 kB at 1 GB/s = 0.128 ms
    F[0, 2] = 500  # inter-node: 64 kB at 0.5 GB/s = 0.128 ms
    F[3, 3] = 10**6  # stays on its rank: free
    assert math.isclose(model.a2a_ms(c, F), 4 * 0.128)
    F[2, 0] = 1500  # rank 0 now receives 192 kB across nodes: 0.384 ms
    assert math.isclose(model.a2a_ms(c, F), 4 * 0.384)
    w = np.array([100.0, 200.0, 300.0, 400.0])
    assert math.isclose(model.a2a_cols_ms(c, w), model.a2a_ms(c, np.tile(w, (4, 1))))


def dense_padded_a2a(c, F_QR: np.ndarray, buf_R: np.ndarray) -> float:
    """The padded all-to-all on the dense matrix: each column scaled to the rank's buffer, a rank
    without real tokens fed buf / N by every source."""
    real_R = F_QR.sum(axis=0)
    has = real_R > 0
    scale_R = np.where(has, buf_R / np.where(has, real_R, 1.0), 0.0)
    F = F_QR * scale_R[None, :]
    F[:, ~has] = buf_R[~has] / c.gpus
    return model.a2a_ms(c, F)


def test_sparse_flow_matches_the_dense_model():
    """Flow (sums over the split's nonzero pieces, or split_traffic's per-rank sums) gives what
    the dense [N, N*S] flow gives: slot loads, the all-to-all of the rank matrix, and the padded
    all-to-all."""
    import split_reference

    from swiftmoe.sim.traffic import split_traffic

    rng = np.random.default_rng(3)
    et = linear_time()
    for trial in range(40):
        N = int(rng.choice([1, 2, 3, 4, 6, 8, 16]))
        G = int(rng.choice([1, 2, 3, 4, 8]))
        S = int(rng.integers(1, 4))
        E = int(rng.integers(1, N * S + 1))
        c = cluster(gpus=N, per_node=G, compute_model=["per-slot", "grouped"][trial % 2])
        L_E = rng.integers(0, 5000, E) * (rng.random(E) < 0.8)
        slots_K = np.concatenate([np.arange(E), rng.integers(0, E, N * S - E)])
        rng.shuffle(slots_K)
        counts_QE = trace.source_counts(L_E, N)
        dense_QK = split_reference.split_tokens(counts_QE, slots_K, S, c.ranks_per_node).numpy()
        sparse = split_reference.split_tokens_sparse(counts_QE, slots_K, S, c.ranks_per_node)
        F_QR = dense_QK.reshape(N, N, S).sum(axis=2).astype(np.float64)
        x_RS = dense_QK.reshape(N, N, S).sum(axis=0).astype(np.float64)
        traffic = split_traffic(counts_QE, slots_K, S, c.ranks_per_node)
        sums = split_traffic(counts_QE, slots_K, S, c.ranks_per_node, weighted=False)
        for f in ("x_K", "si_Q", "ri_R", "se_Q", "re_R"):
            assert np.array_equal(getattr(sums, f), getattr(traffic, f)), f
        with pytest.raises(ValueError, match="weighted=True"):
            sums.sent_weighted(np.ones(N))
        flows = (sparse, dense_QK, traffic)
        for flow in (model.flow_of(c, S, f) for f in flows):
            assert np.array_equal(flow.x_RS, x_RS)
            cost = model.flow_layer(c, et, flow, S)
            assert cost.a2a_ms == model.a2a_ms(c, F_QR), "integer tier sums must be exact"
            assert cost.compute_ms == model.compute_ms(et, x_RS, c.compute_model)
            assert np.array_equal(cost.load_R, x_RS.sum(axis=1))
            buf_R = x_RS.sum(axis=1) + rng.integers(0, 300, N) * (rng.random(N) < 0.5)
            got = model._padded_a2a(c, flow, buf_R)
            assert math.isclose(got, dense_padded_a2a(c, F_QR, buf_R), rel_tol=1e-12)
    # A hand case: rank 1 of 2 (one node) gets no real token; its buffer of 600 comes 300 from
    # each source, and rank 0's 100 real tokens from rank 1 become 400.
    c = cluster(gpus=2, per_node=2)
    flow = model.flow_of(c, 1, (np.array([1, 0]), np.array([0, 0]), np.array([100, 50])))
    t_ms = 1e3 * 128 / c.intra_bw  # one token across the node
    assert math.isclose(model._padded_a2a(c, flow, np.array([600.0, 600.0])), 4 * 400 * t_ms)


# ---------------------------------------------------------------- real sidecar


# Hand values for 4 GPUs (2 per node), 2 slots each, 8 experts of 1000 tokens: 2000 tokens per
# rank, 1 us per token; 128-byte tokens; expert 64x128x2 = 16384 params of 2 bytes.
UNIFORM_COMPUTE = 2.0  # two slots x 1000 tokens
UNIFORM_A2A = 4 * 1000 * 128 / 0.5e9 * 1e3  # 1000 tokens leave each rank across nodes
UNIFORM_XFER = 2 * max(1 * 16384 / 1e9, 2 * 16384 / 0.5e9) * 1e3  # per peer 2*32768/4 B


@needs_sidecar
def test_uniform_trace_every_system_equals_the_bound(sidecar_address):
    loads = np.full((6, 1, 8), 1000)
    res = run_sim(sidecar_address, loads, DEFAULT_SYSTEMS, 2, 2)
    b = res.per_iteration["bound"]
    assert np.allclose(b["compute_ms"], UNIFORM_COMPUTE)
    assert np.allclose(b["a2a_ms"], UNIFORM_A2A)
    assert np.allclose(b["transfer_ms"], UNIFORM_XFER)
    assert np.allclose(b["step_ms"], UNIFORM_COMPUTE + UNIFORM_A2A + UNIFORM_XFER)
    for s in res.systems:
        r = res.per_iteration[s.name]
        assert (r["dropped"] == 0).all(), f"{s.name} dropped {r['dropped']}"
        assert np.allclose(r["max_over_mean"], 1.0), f"{s.name}: {r['max_over_mean']}"
        assert (r["migration_ms"] == 0).all(), s.name
        if s.name == "static-cf2.0":  # buffers padded to capacity 2000: twice the work
            assert np.allclose(r["compute_ms"], 2 * UNIFORM_COMPUTE)
            assert np.allclose(r["a2a_ms"], 2 * UNIFORM_A2A)
        else:
            assert np.allclose(r["step_ms"], b["step_ms"]), f"{s.name}: {r['step_ms']}"
    for name, job in res.jobs.items():
        assert job["fallback_plans"] == 0, (name, job["fallback_notes"])


@needs_sidecar
def test_one_hot_expert(sidecar_address):
    # 4 experts on 4 GPUs; expert 0 gets 5000 tokens, the others 1000 each: 2000 per rank.
    loads = np.tile(np.array([5000, 1000, 1000, 1000]), (5, 1, 1))
    res = run_sim(
        sidecar_address,
        loads,
        "bound,swiftmoe,static-dropless,static-cf1.0,static-cf2.0",
        slots=2,
        static_slots=1,
    )
    p = res.per_iteration
    assert np.allclose(p["bound"]["compute_ms"], 2.0)
    assert np.allclose(p["static-dropless"]["compute_ms"], 5.0)  # every slot padded to 5000
    assert (p["static-dropless"]["dropped"] == 0).all()
    # capacity 1.0: 8000/4 = 2000 per expert, expert 0 drops 3000; buffers of 2000 tokens
    assert np.allclose(p["static-cf1.0"]["compute_ms"], 2.0)
    assert (p["static-cf1.0"]["dropped"] == 3000).all()
    # capacity 2.0: 4000 per expert, expert 0 drops 1000; buffers of 4000 tokens
    assert np.allclose(p["static-cf2.0"]["compute_ms"], 4.0)
    assert (p["static-cf2.0"]["dropped"] == 1000).all()
    # static dropless pays the padding in its all-to-all too: each rank receives a 5000-token
    # buffer, 3/4 of it (the static layout's flow pattern) from other ranks
    assert (p["static-dropless"]["a2a_ms"] > 2 * p["bound"]["a2a_ms"]).all()
    # SwiftMoE runs the static placement in iteration 0, its own from iteration 1
    sw = p["swiftmoe"]
    assert sw["compute_ms"][0] > 2.4
    assert np.all(sw["compute_ms"][1:] <= 2.0 * 1.05), sw["compute_ms"]
    assert np.all(sw["max_over_mean"][1:] <= 1.05), sw["max_over_mean"]
    assert (sw["dropped"] == 0).all()
    assert res.jobs["swiftmoe"]["placement_changes"] >= 1


@needs_sidecar
def test_flexmoe_threshold_triggers_exactly_once(sidecar_address):
    # 4 experts, 4 GPUs x 2 slots: the static layout gives every expert 2 replicas, ranks 0 and 2
    # hold experts {0, 1}, ranks 1 and 3 hold {2, 3}. With loads 3000/1000/1000/1000 the even-split
    # max_over_mean is 2000/1500 = 1.33 > 1.2; one move (a cold replica becomes expert 0) makes it
    # 1.0, so the check at iteration 10 moves and the one at 20 does not.
    loads = np.tile(np.array([3000, 1000, 1000, 1000]), (25, 1, 1))
    res = run_sim(sidecar_address, loads, "flexmoe-10", slots=2, static_slots=2)
    mig = res.per_iteration["flexmoe-10"]["migration_ms"]
    hit = np.flatnonzero(mig)
    assert hit.tolist() == [10], f"migration in iterations {hit.tolist()}, want [10]"
    job = res.jobs["flexmoe-10"]
    per_move = 16384 * (2 + 12)  # weights + optimizer state of one expert
    assert job["migrated_bytes"] % per_move == 0 and job["migrated_bytes"] > 0
    assert math.isclose(mig[10], job["migrated_bytes"] / 0.5e9 * 1e3)  # over the inter-node link
    assert job["placement_changes"] == 1
    step = res.per_iteration["flexmoe-10"]["step_ms"]
    assert step[10] > step[11]
    mom = res.per_iteration["flexmoe-10"]["max_over_mean"]
    assert (mom[11:] < mom[:10].min()).all()


# ---------------------------------------------------------------- the command


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_sim_help_and_errors():
    with pytest.raises(SystemExit) as e:
        _cli(["sim", "--help"])
    assert e.value.code == 0
    rc, _, err = _cli(["sim"])
    assert rc == 2 and "--trace FILE and --synthetic-experts" in err
    with pytest.raises(SystemExit) as e:
        _cli(["sim", "--synthetic-experts", "8", "--json", "--table"])
    assert e.value.code == 2
    rc, _, err = _cli(["sim", "--synthetic-experts", "8", "--systems", "static-cfx"])
    assert rc == 2 and "unknown system 'static-cfx'" in err
    rc, _, err = _cli(
        ["sim", "--synthetic-experts", "64", "--iterations", "2", "--gpus", "4", "--slots", "2",
         "--static-slots", "16"]
    )  # fmt: skip
    assert rc == 2 and "raise --slots to at least 16" in err
    with pytest.raises(SystemExit) as e:
        _cli(["sim", "--synthetic-experts", "8", "--split", "even"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        _cli(["sim", "--synthetic-experts", "8", "--decision-ms", "fast"])
    assert e.value.code == 2
    rc, _, err = _cli(["sim", "--synthetic-experts", "8", "--decision-ms", "-1"])
    assert rc == 2 and "--decision-ms is -1.0" in err, err
    from swiftmoe.sim.run import SimConfig

    with pytest.raises(ValueError, match="--split is 'even': pass one of auto, fast, exact"):
        SimConfig(cluster=None, slots=2, static_slots=2, split_method="even")


def test_sim_refuses_unwritable_outputs_before_running(tmp_path):
    base = ["sim", "--synthetic-experts", "8", "--iterations", "2", "--gpus", "4", "--slots", "2"]
    for flag in ("--output", "--write-trace"):
        rc, _, err = _cli([*base, flag, str(tmp_path / "missing" / "x.json")])
        assert rc == 2 and f"{flag} " in err and "does not exist; create it first" in err, err
        rc, _, err = _cli([*base, flag, str(tmp_path)])
        assert rc == 2 and "is a folder" in err, err
    assert "simulated" not in err  # refused before the run


@needs_sidecar
def test_sim_json_output_shape(tmp_path):
    table = tmp_path / "lin.json"
    table.write_text(json.dumps(LINEAR))
    argv = [
        "sim", "--synthetic-experts", "8", "--iterations", "4", "--tokens-per-iter", "4000",
        "--gpus", "4", "--gpus-per-node", "2", "--slots", "3", "--calibration", str(table),
        "--d-model", "64", "--d-ff", "128", "--json", "--output", str(tmp_path / "o.json"),
    ]  # fmt: skip
    rc, out, err = _cli(argv)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc == json.loads((tmp_path / "o.json").read_text())
    names = DEFAULT_SYSTEMS.split(",")
    assert doc["systems"] == names
    assert doc["calibration"]["shape"] == "lin (d64 f128 gelu)"
    assert doc["calibration"]["compute_model"] == "per-slot"
    assert len(doc["iterations"]) == 4
    for row in doc["iterations"]:
        assert set(row["systems"]) == set(names)
        for n, v in row["systems"].items():
            if n == "bound":
                assert set(v) == set(FIELDS)
                continue
            assert set(v) == set(FIELDS) | {"replicas"}
            reps = np.array(v["replicas"])  # [L][E] in force, N*S slots per layer
            assert reps.shape == (1, 8) and reps.sum() == 4 * 3 and reps.min() >= 1
    summ = doc["summary"]
    assert set(summ["systems"]) == set(names)
    assert summ["systems"]["bound"]["over_bound"] == 1.0
    assert set(summ["baseline_over_swiftmoe"]) == set(names) - {"bound", "swiftmoe"}
    rc, out, err = _cli(argv[:-3])  # the table
    assert rc == 0, err
    assert "lin (d64 f128 gelu)" in out and "baseline step / swiftmoe step" in out


def test_progress_lines_on_stderr():
    from swiftmoe.sim.cli import Progress

    now = [100.0]
    progress = Progress(every_s=5.0, clock=lambda: now[0])
    err = io.StringIO()
    with redirect_stderr(err):
        for done, t in ((1, 101.0), (2, 105.0), (3, 106.0), (4, 110.0)):
            now[0] = t
            progress(done, 10)
    assert err.getvalue().splitlines() == [
        "swiftmoe sim: iteration 2/10, 5s elapsed, ~20s left",
        "swiftmoe sim: iteration 4/10, 10s elapsed, ~15s left",
    ]


def test_plan_feed_order_and_errors():
    """PlanFeed hands each job's plans over in iteration order and re-raises a job's error."""
    from types import SimpleNamespace

    from swiftmoe.planning.client import SidecarError
    from swiftmoe.sim.plans import PlanFeed

    class FakeClient:
        def __init__(self):
            self.calls = []

        def report_loads(self, job_id, it, loads_LE, timeout_s=None):
            self.calls.append((job_id, it))
            if job_id == "bad" and it == 2:
                raise SidecarError("plugin crashed")
            slots = [int(v) + it for v in loads_LE[0]]
            return SimpleNamespace(
                slots_LK=[slots], source="S", note="", remap_migrated_bytes=it * 10
            )

    loads_ILE = np.arange(6 * 1 * 3).reshape(6, 1, 3)
    client = FakeClient()
    feed = PlanFeed(client, ["a", "bad"], loads_ILE, timeout_s=5.0, ahead=2)
    try:
        for it in range(1, 6):
            fp = feed.next(0)
            assert fp.iteration == it
            assert fp.slots_LK[0].tolist() == (loads_ILE[it - 1, 0] + it - 1).tolist()
            assert fp.migrated_bytes == (it - 1) * 10
        assert [feed.next(1).iteration for _ in range(2)] == [1, 2]
        with pytest.raises(SidecarError, match="plugin crashed"):
            feed.next(1)
    finally:
        feed.close(timeout_s=5.0)
    assert [c for c in client.calls if c[0] == "a"] == [("a", i) for i in range(5)]
