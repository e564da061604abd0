"""scripts/bench_step.py: its pure parts, and a tiny 2-rank run checking the JSON it writes.

Timings are not checked (a benchmark, not a test); the structure and the balance figures are.

Shape legend: T tokens, E experts, K top-k, N ranks, S slots per rank.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swiftmoe.adapters.base import find_adapter
from swiftmoe.engine.plan import validate_slots

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_step_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": 0, "shift_every": 10, "zipf": 1.2, **kw})


@pytest.mark.parametrize("N,S,E", [(2, 6, 8), (2, 5, 8), (4, 3, 8), (4, 4, 16), (3, 3, 7)])
def test_python_plan_is_valid_and_replicates_hot_experts(N, S, E):
    g = torch.Generator().manual_seed(N * 100 + S * 10 + E)
    for _ in range(50):
        loads_E = (torch.rand(E, generator=g) ** 4 * 1000).long().tolist()
        (slots_K,) = bench.python_plan([loads_E], N, S)
        validate_slots(slots_K, E, N, S)
        reps_E = [slots_K.count(e) for e in range(E)]
        hot = max(range(E), key=lambda e: (loads_E[e], -e))
        assert reps_E[hot] == max(reps_E), (loads_E, slots_K)


def test_replica_counts_follow_load():
    got = bench.replica_counts([900, 50, 50, 0], 2, 3)
    assert got == [2, 2, 1, 1], f"got {got}, want [2, 2, 1, 1] (at most N=2 replicas each)"
    assert sum(bench.replica_counts([5, 1, 1, 1], 4, 2)) == 8


def test_routing_schedules():
    T, E, K = 64, 8, 2
    a = _args()
    bal = bench.routing("balanced", 3, 0, 1, T, E, K, a)
    counts = torch.bincount(bal.reshape(-1), minlength=E).tolist()
    assert counts == [T * K // E] * E, f"balanced counts {counts}, want all {T * K // E}"
    assert all(len(set(row)) == K for row in bal.tolist())

    s1 = bench.routing("skew", 4, 1, 0, 2048, E, K, a)
    s2 = bench.routing("skew", 4, 1, 0, 2048, E, K, a)
    assert torch.equal(s1, s2), "the schedule must be deterministic"
    assert not torch.equal(s1, bench.routing("skew", 4, 1, 1, 2048, E, K, a)), "ranks differ"
    assert all(len(set(row)) == K for row in s1.tolist())
    # Within a phase the hot expert stays; the share of the hottest is well above 1/E.
    hot = [
        int(torch.bincount(bench.routing("skew", it, 0, 0, 2048, E, K, a).reshape(-1)).argmax())
        for it in range(0, 40)
    ]
    assert all(len(set(hot[p * 10 : p * 10 + 10])) == 1 for p in range(4)), hot
    assert len(set(hot[::10])) > 1, f"the hot set never moved: {hot[::10]}"
    share = float(torch.bincount(s1.reshape(-1), minlength=E).max()) / s1.numel()
    assert share > 2.0 / E, f"hottest expert share {share}, want a skew well above 1/E"

    uni = bench.routing("uniform", 0, 0, 0, 4096, E, K, a)
    c = torch.bincount(uni.reshape(-1), minlength=E).float()
    assert float(c.max() / c.mean()) < 1.1


def test_adapter_is_registered_for_the_bench_block():
    block = bench.ScheduledMoE(8, 16, 4, 2)
    assert find_adapter(block) is bench.ADAPTER
    ids = torch.tensor([[0, 1], [3, 2], [1, 3]])
    block.set_routing(ids)
    route = bench.ADAPTER.route(block, torch.randn(3, 8))
    assert torch.equal(route.topk_ids_TK, ids)
    assert torch.allclose(route.topk_weights_TK.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="set_routing"):
        bench.ADAPTER.route(block, torch.randn(5, 8))


def test_parse_args_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        bench.parse_args(["--static-slots", "3"])  # 3 x 2 ranks != 8 experts
    with pytest.raises(SystemExit):
        bench.parse_args(["--tokens", "10"])  # not a multiple of 8


def test_tiny_run_writes_the_figures(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--tokens", "32", "--dim", "8", "--hidden", "16",
        "--iters", "2", "--uniform-iters", "2", "--warmup", "1",
        "--planner", "python", "--plan-deadline-ms", "10000",
        "--timeout", "150", "--collective-timeout", "60",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IN-PROCESS PYTHON PLANNER" in proc.stdout
    rep = json.loads(out.read_text())
    assert rep["planner"] == "python"
    assert rep["config"]["static_slots_per_rank"] == 4
    assert rep["config"]["swiftmoe_slots_per_rank"] == 5
    assert len(rep["loadavg_before"]) == 3 and len(rep["loadavg_start"]) == 3
    sections = rep["sections"]
    assert set(sections) == {"skew", "uniform"}
    assert set(sections["skew"]["systems"]) == {"static", "swiftmoe", "bound"}
    assert set(sections["uniform"]["systems"]) == {"static", "swiftmoe"}
    for sec in sections.values():
        for name, s in sec["systems"].items():
            assert s["iterations"] == 2
            for k in ("median_ms", "p10_ms", "p90_ms", "cpu_median_ms", "cpu_path_median_ms"):
                assert math.isfinite(s[k]) and s[k] > 0, (name, k, s[k])
            assert set(s["median_phase_ms"]) == {"forward", "backward", "step"}
            if name == "swiftmoe":  # the planner answered every step and the engine took it
                assert s["plan_events"] == {"accepted": 2}, s["plan_events"]
            else:
                assert s["plan_events"] == {"none": 2}, s["plan_events"]
        for r in sec["ratios"].values():
            assert r["of_medians"] > 0 and r["paired_median"] > 0 and r["cpu_path_of_medians"] > 0
        for tk in ("targets", "targets_cpu_path"):
            assert all(isinstance(v, bool) for v in sec[tk].values()), sec[tk]
    skew = sections["skew"]["systems"]
    assert skew["bound"]["mean_max_over_mean"] == 1.0, "the bound must be perfectly balanced"
    assert skew["static"]["mean_max_over_mean"] > 1.0
    assert set(sections["skew"]["ratios"]) == {
        "swiftmoe_over_bound",
        "static_over_swiftmoe",
        "static_over_bound",
    }
    assert set(sections["uniform"]["ratios"]) == {"swiftmoe_over_static"}
