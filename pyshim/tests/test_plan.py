"""Plan rules against the shared vectors (testdata/vectors/plan_rules.json) and their own laws.

Shape legend: E experts, N ranks, S slots per rank, K = N*S slots, R = N ranks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from generated import assert_current

from swiftmoe.engine import plan

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "testdata" / "vectors" / "plan_rules.json"
CASES = json.loads(VECTORS.read_text())


def test_vectors_cover_every_rule():
    errors = [c["error"] for c in CASES if not c["valid"]]
    for fragment in (
        "topology needs",
        "num_experts must be",
        "want world_size*slots_per_rank",
        "cannot hold",
        "want 0..",
        "has no slot",
        "at most",
    ):
        assert any(fragment in e for e in errors), f"no invalid case for rule {fragment!r}"
    assert sum(c["valid"] for c in CASES) >= 8, "want at least 8 valid cases"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plan_rules_vector(case):
    args = (case["num_experts"], case["world_size"], case["slots_per_rank"])
    if case["valid"]:
        plan.validate_slots(case["slots"], *args)
        assert plan.replicas(case["slots"], case["num_experts"]) == case["replicas"]
        loads_R = plan.rank_loads_even(
            case["slots"], case["loads"], case["world_size"], case["slots_per_rank"]
        )
        assert loads_R == case["rank_loads"], f"got {loads_R}, want {case['rank_loads']}"
        assert plan.max_over_mean(loads_R) == case["max_over_mean"]
        # Tensors in give the same answers as lists in.
        slots_K = torch.tensor(case["slots"], dtype=torch.int64)
        plan.validate_slots(slots_K, *args)
        assert plan.rank_loads_even(
            slots_K, torch.tensor(case["loads"]), case["world_size"], case["slots_per_rank"]
        ) == pytest.approx(case["rank_loads"])
    else:
        with pytest.raises(plan.InvalidPlanError) as info:
            plan.validate_slots(case["slots"], *args)
        assert str(info.value) == case["error"]
        assert isinstance(info.value, ValueError)


def test_vectors_file_is_current():
    assert_current("gen_plan_vectors.py")


@pytest.mark.parametrize(
    "E,N,S", [(e, n, s) for e in (1, 2, 3, 5, 8, 16) for n in (1, 2, 3, 4, 7) for s in (1, 2, 4, 5)]
)
def test_static_slots_is_valid_and_even(E, N, S):
    if N * S < E:
        with pytest.raises(ValueError, match="raise slots_per_rank"):
            plan.static_slots(E, N, S)
        return
    slots_K = plan.static_slots(E, N, S)
    assert slots_K == [k % E for k in range(N * S)]
    plan.validate_slots(slots_K, E, N, S)
    reps_E = plan.replicas(slots_K, E)
    assert max(reps_E) - min(reps_E) <= 1, f"got replicas {reps_E}, want uniform within 1"


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_static_slots_rejects_bad_arguments(bad):
    for pos, name in enumerate(("num_experts", "world_size", "slots_per_rank")):
        args = [2, 2, 2]
        args[pos] = bad
        with pytest.raises(ValueError, match=name):
            plan.static_slots(*args)


def test_validate_rejects_non_integer_slots():
    with pytest.raises(plan.InvalidPlanError, match=r"slots\[1\]"):
        plan.validate_slots([0, 1.5, 0, 1], 2, 2, 2)
    with pytest.raises(plan.InvalidPlanError, match="integer expert ids"):
        plan.validate_slots(torch.tensor([0.0, 1.0]), 2, 1, 2)
    with pytest.raises(plan.InvalidPlanError, match="1-D"):
        plan.validate_slots(torch.zeros(2, 2, dtype=torch.int64), 2, 2, 2)


def test_random_plans_respect_rank_limit():
    """Random plans: validate_slots accepts exactly those meeting the per-rank limit."""
    rng = random.Random(7)
    for _ in range(500):
        N, S = rng.randint(1, 5), rng.randint(1, 4)
        E = rng.randint(1, N * S)
        slots_K = [rng.randrange(E) for _ in range(N * S)]
        reps_E = [slots_K.count(e) for e in range(E)]
        ok = all(reps_E) and all(
            slots_K[r * S : (r + 1) * S].count(e) <= -(-reps_E[e] // N)
            for r in range(N)
            for e in range(E)
        )
        if ok:
            plan.validate_slots(slots_K, E, N, S)
        else:
            with pytest.raises(plan.InvalidPlanError):
                plan.validate_slots(slots_K, E, N, S)


def test_rank_loads_even_conserves_load():
    rng = random.Random(3)
    for _ in range(100):
        N, S = rng.randint(1, 6), rng.randint(1, 4)
        E = rng.randint(1, N * S)
        slots_K = plan.static_slots(E, N, S)
        rng.shuffle(slots_K)
        loads_E = [rng.random() * 1000 for _ in range(E)]
        loads_R = plan.rank_loads_even(slots_K, loads_E, N, S)
        assert sum(loads_R) == pytest.approx(sum(loads_E))
    with pytest.raises(ValueError, match="want world_size\\*slots_per_rank = 4"):
        plan.rank_loads_even([0, 1, 0], [1.0, 1.0], 2, 2)


@pytest.mark.parametrize(
    "v,want",
    [([], 1.0), ([0, 0, 0], 1.0), ([1, 1], 1.0), ([3, 1], 1.5), ([4, 0, 0, 0], 4.0)],
)
def test_max_over_mean(v, want):
    assert plan.max_over_mean(v) == want
    assert plan.max_over_mean(torch.tensor(v, dtype=torch.float64)) == want
    assert plan.max_over_mean(torch.tensor(v, dtype=torch.int64)) == want  # token counts
