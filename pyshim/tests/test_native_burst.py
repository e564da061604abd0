"""The native burst decision (swiftmoe.engine.native) makes the NumPy decision's bursts, bit for
bit, and is what plan_bursts runs when its library is found."""

from __future__ import annotations

import os

import numpy as np
import pytest
from native_cases import burst_case

from swiftmoe.engine import burst, native
from swiftmoe.engine import costmodel as cm
from swiftmoe.engine.split import split_rank_loads, split_tokens_for_rank
from swiftmoe.planning import reference as planner

P = 3 * 768 * 3072  # GPT-Small experts


def _same(a: burst.BurstPlan, b: burst.BurstPlan) -> None:
    assert a.num_experts == b.num_experts
    assert a.slots_per_rank == b.slots_per_rank
    for f in ("slots_K", "expert_C", "src_C", "src_slot_C", "dst_C", "dst_slot_C"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert getattr(a, f).dtype == getattr(b, f).dtype == np.int64, f
    for f in ("before_ms", "after_ms", "copy_ms"):
        assert getattr(a, f) == getattr(b, f), (f, getattr(a, f), getattr(b, f))


def test_native_makes_the_numpy_decision_bit_for_bit(use_lib):
    assert native.available(), native.why()
    rng = np.random.default_rng(0)
    made = multi = 0
    for i in range(400):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        load = None
        if rng.random() < 0.5:
            load = split_rank_loads(c, slots, S, rpn, method, p).numpy()
        args = (c, slots, S, B, rpn, p, thr, method, load)
        want = burst.plan_bursts(*args, native=False)
        got = burst.plan_bursts(*args, native=True)
        try:
            _same(got, want)
        except AssertionError as e:
            raise AssertionError(
                f"case {i}: N={c.shape[0]} E={c.shape[1]} S={S} B={B} "
                f"rpn={rpn} thr={thr} {method} {p}: {e}"
            ) from e
        made += want.count > 0
        multi += want.slots_per_rank > S + 1
    # The cases exercise the decision: bursts made in many, several per rank in some.
    assert made >= 80, made
    assert multi >= 5, multi


def test_native_makes_the_numpy_decision_on_many_nodes(use_lib):
    """The same on 64 to 128 ranks in 8 to 32 nodes, where the lists' node scans (a home in the
    busiest rank's node, each node's best locality gain) cover many nodes: hot sets that moved,
    slow links, one and two burst slots; cross-node and in-node copies both made."""
    rng = np.random.default_rng(64)
    cross = within = 0
    for i in range(8):
        N, rpn = [(64, 8), (96, 4), (128, 8), (128, 4)][i % 4]
        E, S = int(rng.choice([64, 128, 256])), 4
        p_E = 1.0 / np.arange(1, E + 1) ** rng.uniform(0.8, 1.4)
        p_E /= p_E.sum()
        c = rng.multinomial(4096, p_E[rng.permutation(E)], size=N).astype(np.int64)
        slots = np.asarray(planner.plan_layer(p_E[rng.permutation(E)].tolist(), N, S))
        p = cm.CostParams(
            ranks=N, ranks_per_node=rpn, token_bytes=2 * 768, expert_bytes=2 * P,
            flops_per_token=6 * P, flops_per_s=5.8e14, intra_bw=3e11,
            inter_bw=float(rng.choice([1.25e10, 5e10, 3e9])),
        )  # fmt: skip
        args = (c, slots, S, 1 + i % 2, rpn, p, 1.0, "auto")
        want = burst.plan_bursts(*args, native=False)
        got = burst.plan_bursts(*args, native=True)
        try:
            _same(got, want)
        except AssertionError as e:
            raise AssertionError(f"case {i}: N={N} E={E} rpn={rpn} {p}: {e}") from e
        same_node = want.src_C // rpn == want.dst_C // rpn
        within += int(same_node.sum())
        cross += int((~same_node).sum())
    assert within > 0 and cross > 0, (within, cross)


def test_the_decision_from_a_ranks_own_split_is_the_same(use_lib):
    """plan_bursts(planned=RankSplit.planned): the decision starts from the split the layer
    made rather than making it again, and decides the same, field for field, in C and NumPy,
    whichever code made the split (a job whose hosts differ)."""
    rng = np.random.default_rng(3)
    made = 0
    for i in range(200):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        r = int(rng.integers(0, c.shape[0]))
        want = burst.plan_bursts(c, slots, S, B, rpn, p, thr, method, native=False)
        for split_native in (False, True):
            rs = split_tokens_for_rank(c, slots, S, r, rpn, method, p, native=split_native)
            for decide_native in (False, True):
                got = burst.plan_bursts(
                    c, slots, S, B, rpn, p, thr, method, rs.load_R.numpy(),
                    native=decide_native, planned=rs.planned,
                )  # fmt: skip
                try:
                    _same(got, want)
                except AssertionError as e:
                    raise AssertionError(
                        f"case {i} (split in C {split_native}, decision in C {decide_native}): "
                        f"N={c.shape[0]} E={c.shape[1]} S={S} B={B} rpn={rpn} {method}: {e}"
                    ) from e
        made += want.count > 0
    assert made >= 40, made


def test_the_simulators_split_starts_the_same_decision(use_lib):
    """swiftmoe sim passes its own split's stage 1 (split_traffic's planned, through the Flow)
    into the decision, as the engine passes a rank's: the same stage 1 as a rank's split, and
    the same decision as one made from scratch."""
    from types import SimpleNamespace

    from swiftmoe.sim import model
    from swiftmoe.sim.traffic import split_traffic

    rng = np.random.default_rng(5)
    made = 0
    for i in range(120):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        tr = split_traffic(c, slots, S, rpn, method, weighted=False, cost=p)
        rs = split_tokens_for_rank(c, slots, S, 0, rpn, method, p, native=False)
        np.testing.assert_array_equal(tr.planned.demand_K, rs.planned.demand_K)
        assert (tr.planned.ms, tr.planned.sums is None) == (rs.planned.ms, rs.planned.sums is None)
        if rs.planned.sums is not None:
            for a, b in zip(tr.planned.sums, rs.planned.sums, strict=True):
                np.testing.assert_array_equal(a, b)
        flow = model.flow_of(SimpleNamespace(gpus=c.shape[0]), S, tr)  # the Flow uses gpus
        assert flow.planned is tr.planned
        want = burst.plan_bursts(c, slots, S, B, rpn, p, thr, method, native=False)
        got = burst.plan_bursts(c, slots, S, B, rpn, p, thr, method, planned=flow.planned)
        try:
            _same(got, want)
        except AssertionError as e:
            raise AssertionError(f"case {i}: {e}") from e
        made += want.count > 0
    assert made >= 20, made


def test_a_planned_split_of_another_shape_is_refused():
    c = np.array([[900, 10, 10, 0], [900, 10, 10, 0]], dtype=np.int64)
    slots = np.array([0, 1, 0, 2], dtype=np.int64)
    p = cm.CostParams(ranks=2, ranks_per_node=0, token_bytes=2, flops_per_token=1, flops_per_s=1)
    rs = split_tokens_for_rank(c, slots, 2, 0, 0, "auto", p, native=False)
    bad = rs.planned._replace(demand_K=rs.planned.demand_K[:3])
    with pytest.raises(ValueError, match="planned must be the split on the planned placement"):
        burst.plan_bursts(c, slots, 2, 1, 0, p, 1.0, "auto", planned=bad)


def test_the_h200_cases_of_the_numpy_tests(use_lib):
    """The moved hot sets of test_burst.py (16 H200s in 2 nodes), where both lists and both
    starts of the priced split make bursts, and its hand cases of hidden copies and of the
    busiest rank's own node."""
    from test_burst import _h200_case, h200, hidden_copy_case, home_node_case

    c, slots, S = hidden_copy_case()
    for intra in (3e11, 2e10):
        args = (c, slots, S, 1, 0, h200(4, 0, intra=intra), 1.05)
        _same(burst.plan_bursts(*args, native=True), burst.plan_bursts(*args, native=False))
    c, slots, S, rpn = home_node_case()
    for inter in (1.25e10, 5e10):
        for method in ("fast", "auto"):
            args = (c, slots, S, 1, rpn, h200(8, rpn, inter=inter), 1.05, method)
            _same(burst.plan_bursts(*args, native=True), burst.plan_bursts(*args, native=False))

    for seed in range(8):
        for inter in (1.25e10, 5e10):
            c, slots, S, rpn, p = _h200_case(seed, inter)
            for method in ("fast", "auto"):
                args = (c, slots, S, 1, rpn, p, 1.1, method)
                _same(burst.plan_bursts(*args, native=True), burst.plan_bursts(*args, native=False))


def test_plan_bursts_runs_the_native_decision_when_found(use_lib, monkeypatch):
    rng = np.random.default_rng(3)
    c, slots, S, B, rpn, p, thr, method = burst_case(rng)
    calls = []
    real = native.plan_bursts
    monkeypatch.setattr(native, "plan_bursts", lambda *a: calls.append(1) or real(*a))
    burst.plan_bursts(c, slots, S, 1, rpn, p, 1.0, method)
    assert calls == [1]
    # "exact" is not ported: the NumPy decision runs, and native=True says why it cannot.
    burst.plan_bursts(c, slots, S, 1, rpn, p, 1.0, "exact")
    with pytest.raises(RuntimeError, match="'exact' is not ported"):
        burst.plan_bursts(c, slots, S, 1, rpn, p, 1.0, "exact", native=True)


def test_turned_off_or_missing_runs_numpy(lib_path, monkeypatch, tmp_path):
    c = np.array([[900, 10, 10, 10], [900, 10, 10, 10]])
    p = cm.CostParams(ranks=2, flops_per_token=6 * P, flops_per_s=5e14)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    assert not native.available() and "turned off" in native.why()
    with pytest.raises(RuntimeError, match="turned off"):
        burst.plan_bursts(c, [0, 1, 2, 3], 2, 1, 0, p, 1.0, native=True)
    assert burst.plan_bursts(c, [0, 1, 2, 3], 2, 1, 0, p, 1.0).count == 1
    monkeypatch.delenv(native.ENV_SWITCH)
    bad = tmp_path / "not-a-library.so"
    bad.write_text("x")
    monkeypatch.setenv(native.ENV_LIB, str(bad))
    native.reset()
    with pytest.raises(native.NativeError, match="SWIFTMOE_NATIVE_LIB"):
        native.available()
    native.reset()


def test_a_checkout_library_older_than_its_sources_is_not_loaded(lib_path, monkeypatch, tmp_path):
    repo = tmp_path / "repo"
    (repo / "bin").mkdir(parents=True)
    (repo / "go.mod").write_text("module x\n")
    lib = repo / "bin" / lib_path.name
    lib.write_bytes(lib_path.read_bytes())
    monkeypatch.delenv(native.ENV_LIB, raising=False)
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(native, "_PKG_DIR", tmp_path / "no-package")
    monkeypatch.setattr(native, "_REPO_DIR", repo)
    os.utime(lib, (1, 1))  # older than every source
    native.reset()
    assert not native.available()
    assert "older than its C sources" in native.why()
    os.utime(lib, None)  # now newer
    native.reset()
    assert native.available(), native.why()
    native.reset()


def test_build_says_what_to_install_without_a_compiler(tmp_path, monkeypatch, capsys):
    from swiftmoe.engine.native import build

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(FileNotFoundError, match="install one"):
        build.build_library(tmp_path / "out")
    assert build.main([str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err
    assert build.main(["--optional", str(tmp_path / "out")]) == 0  # make build goes on
    assert "NumPy decision" in capsys.readouterr().err
    assert not (tmp_path / "out" / build.LIBRARY_NAME).exists()
    monkeypatch.setenv("CC", "false")  # a compiler that fails: an error, optional or not
    with pytest.raises(RuntimeError, match="failed"):
        build.build_library(tmp_path / "out")
    assert build.main(["--optional", str(tmp_path / "out")]) == 1


def test_a_library_of_another_interface_version_is_refused(tmp_path, monkeypatch):
    import re
    import subprocess
    from pathlib import Path

    header = (Path(native.__file__).parent / "smoe.h").read_text()
    assert int(re.search(r"#define SMOE_ABI (\d+)", header).group(1)) == native._ABI
    src = tmp_path / "old.c"
    src.write_text("#include <stdint.h>\nint64_t smoe_abi(void) { return 99; }\n")
    lib = tmp_path / "libold.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, timeout=120)
    monkeypatch.setenv(native.ENV_LIB, str(lib))
    native.reset()
    with pytest.raises(native.NativeError, match="interface version 99"):
        native.available()
    native.reset()


def _simulated_decisions(monkeypatch, argv: list[str]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of every burst decision `swiftmoe sim argv` makes."""
    from swiftmoe import cli
    from swiftmoe.sim import run as sim_run

    calls: list[tuple[tuple, dict]] = []
    real = sim_run.plan_bursts

    def keep(*a, **k):
        calls.append((a, dict(k)))
        return real(*a, **k)

    monkeypatch.setattr(sim_run, "plan_bursts", keep)
    assert cli.main(["sim", "--quiet", *argv]) == 0
    monkeypatch.setattr(sim_run, "plan_bursts", real)
    return calls


def test_no_list_the_bound_skips_could_have_won(use_lib, monkeypatch, tmp_path):
    """The decision skips a list of bursts whose lower bound (compute, and the all-to-all's
    sends and receives that no split avoids) is not below the best so far. With
    smoe_check_bounds set it evaluates every list and fails where one evaluates below its
    bound: on random layer calls, on many nodes, and on the simulator's own decisions where the
    bound skips most (a hot set moving every 3 iterations on 2 nodes, bursts on 4), the bound
    holds, and the decisions are NumPy's."""
    import ctypes

    check = ctypes.c_int64.in_dll(native.library(), "smoe_check_bounds")
    cases = []
    rng = np.random.default_rng(11)
    for _ in range(300):
        c, slots, S, B, rpn, p, thr, method = burst_case(rng)
        cases.append(((c, slots, S, B, rpn, p, thr, method), {}))
    common = ["--gpus-per-node", "8", "--shape", "gpt-small", "--systems", "swiftmoe-burst"]
    for argv in (
        ["--gpus", "16", "--slots", "4", "--top-k", "2", "--synthetic-experts", "32",
         "--workload", "moving-hot", "--inter-bw", "50", "--tokens-per-iter", "65536",
         "--iterations", "12"],
        ["--gpus", "32", "--slots", "6", "--top-k", "8", "--synthetic-experts", "64",
         "--workload", "burst", "--inter-bw", "12.5", "--tokens-per-iter", "131072",
         "--iterations", "8"],
    ):  # fmt: skip
        found = _simulated_decisions(
            monkeypatch, [*argv, *common, "--output", str(tmp_path / "sim.json")]
        )
        assert len(found) >= 8, argv
        cases += found
    made = 0
    check.value = 1
    try:
        for i, (a, k) in enumerate(cases):
            want = burst.plan_bursts(*a, **k, native=False)
            try:
                _same(burst.plan_bursts(*a, **k, native=True), want)
            except (AssertionError, native.NativeError) as e:
                raise AssertionError(f"case {i}: {e}") from e
            made += want.count > 0
    finally:
        check.value = 0
    assert made >= 60, made
