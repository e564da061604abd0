#!/usr/bin/env python3
"""Write testdata/vectors/plan_rules.json: plan-rule cases both languages are tested against.

Every case is written by hand below with its expected verdict (valid, and for an invalid plan the
exact reason Go's sdk.ValidateSlots and Python's swiftmoe.engine.plan.validate_slots give, without the
"invalid plan: " prefix). This script fills in the derived figures (replicas, rank_loads,
max_over_mean) with its own direct arithmetic, then cross-checks the whole file against
swiftmoe.engine.plan and refuses to write when they disagree.

    python3 scripts/gen_plan_vectors.py          # rewrite the file
    python3 scripts/gen_plan_vectors.py --check  # exit 1 when the committed file is stale

Fields of each case: name, world_size, slots_per_rank, num_experts, slots, loads (one per expert),
valid, error ("" when valid), and for valid plans replicas, rank_loads (each expert's load split
evenly over its replicas, summed in slot order) and max_over_mean; those three are null for
invalid plans.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import vectors_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "vectors" / "plan_rules.json"

# (name, world_size, slots_per_rank, num_experts, slots, loads, error); error "" means valid.
# fmt: off
CASES = [
    ("static e8 n4 s4", 4, 4, 8, [k % 8 for k in range(16)],
     [914, 332, 806, 367, 526, 306, 433, 412], ""),
    ("static e16 n16 s4", 16, 4, 16, [k % 16 for k in range(64)],
     [float(3 * e + 1) for e in range(16)], ""),
    ("static e3 n2 s4 uneven replicas", 2, 4, 3, [0, 1, 2, 0, 1, 2, 0, 1], [10, 20, 30], ""),
    ("one expert per slot", 2, 2, 4, [0, 1, 2, 3], [1, 2, 3, 4], ""),
    ("hot expert three replicas", 4, 2, 5, [0, 1, 0, 2, 0, 3, 4, 1],
     [1000, 100, 50, 50, 50], ""),
    ("loads that do not divide evenly", 3, 2, 4, [0, 1, 0, 2, 0, 3], [100, 7, 11, 13], ""),
    ("fractional loads", 2, 3, 3, [0, 1, 2, 0, 1, 0], [0.5, 1.25, 3.75], ""),
    ("all-zero loads", 2, 2, 3, [0, 1, 2, 0], [0, 0, 0], ""),
    ("single rank", 1, 4, 2, [0, 0, 1, 1], [5, 9], ""),
    ("single rank single slot", 1, 1, 1, [0], [42], ""),
    ("slots exceed experts twice on a rank (forced)", 2, 4, 2, [0, 0, 1, 1, 0, 0, 1, 1],
     [8, 4], ""),
    ("expert in every slot but one", 3, 2, 2, [0, 1, 0, 0, 0, 0], [12, 3], ""),
    ("five replicas over two ranks, three on one", 2, 4, 3, [0, 0, 0, 1, 0, 0, 2, 1],
     [50, 10, 10], ""),
    ("world_size zero", 0, 4, 2, [], [1, 1],
     "topology needs world_size >= 1 and slots_per_rank >= 1, got 0 and 4"),
    ("slots_per_rank zero", 2, 0, 2, [], [1, 1],
     "topology needs world_size >= 1 and slots_per_rank >= 1, got 2 and 0"),
    ("num_experts zero", 2, 2, 0, [0, 0, 0, 0], [], "num_experts must be >= 1, got 0"),
    ("too few slots listed", 2, 2, 2, [0, 1, 0], [1, 1],
     "3 slots, want world_size*slots_per_rank = 4"),
    ("too many slots listed", 2, 2, 2, [0, 1, 0, 1, 0], [1, 1],
     "5 slots, want world_size*slots_per_rank = 4"),
    ("fewer slots than experts", 2, 2, 5, [0, 1, 2, 3], [1, 1, 1, 1, 1],
     "4 slots cannot hold 5 experts; raise slots_per_rank to at least 3"),
    ("negative expert id", 2, 2, 3, [0, 1, -1, 2], [1, 1, 1],
     "slot 2 (rank 1) holds expert -1, want 0..2"),
    ("expert id too large", 2, 2, 3, [0, 1, 2, 3], [1, 1, 1],
     "slot 3 (rank 1) holds expert 3, want 0..2"),
    ("expert without a slot", 2, 2, 3, [0, 1, 0, 1], [1, 1, 1],
     "expert 2 has no slot; every expert needs at least one replica"),
    ("last expert without a slot", 4, 4, 8, [k % 7 for k in range(16)], [1] * 8,
     "expert 7 has no slot; every expert needs at least one replica"),
    ("two replicas on one rank when two ranks exist", 2, 2, 2, [0, 0, 1, 1], [1, 1],
     "rank 0 holds 2 replicas of expert 0, at most 1 allowed with 2 replicas over 2 ranks"),
    ("three replicas on one rank when ceil(4/2) is two", 2, 4, 2, [0, 0, 0, 1, 0, 1, 1, 1],
     [1, 1], "rank 0 holds 3 replicas of expert 0, at most 2 allowed with 4 replicas over 2 ranks"),
    ("doubled replica on a later rank", 4, 2, 5, [0, 1, 2, 3, 4, 4, 0, 1], [1] * 5,
     "rank 2 holds 2 replicas of expert 4, at most 1 allowed with 2 replicas over 4 ranks"),
]
# fmt: on


def _case(name, n, s, e, slots, loads, error):
    loads = [float(x) for x in loads]
    out = {
        "name": name,
        "world_size": n,
        "slots_per_rank": s,
        "num_experts": e,
        "slots": slots,
        "loads": loads,
        "valid": error == "",
        "error": error,
        "replicas": None,
        "rank_loads": None,
        "max_over_mean": None,
    }
    if error:
        return out
    reps = [slots.count(x) for x in range(e)]
    rank_loads = [0.0] * n
    for k, x in enumerate(slots):
        rank_loads[k // s] += loads[x] / float(reps[x])
    total = sum(rank_loads)
    mom = 1.0 if total <= 0 else max(rank_loads) / (total / n)
    out.update(replicas=reps, rank_loads=rank_loads, max_over_mean=mom)
    return out


def build() -> list[dict]:
    return [_case(*c) for c in CASES]


def cross_check(cases: list[dict]) -> list[str]:
    """Problems found when swiftmoe.engine.plan is run on every case; empty when it agrees."""
    sys.path.insert(0, str(ROOT / "pyshim"))
    from swiftmoe.engine import plan

    problems = []
    for c in cases:
        try:
            plan.validate_slots(c["slots"], c["num_experts"], c["world_size"], c["slots_per_rank"])
            got = ""
        except plan.InvalidPlanError as err:
            got = str(err)
        if got != c["error"]:
            problems.append(f"{c['name']}: validate_slots gave {got!r}, want {c['error']!r}")
        if not c["valid"]:
            continue
        args = (c["world_size"], c["slots_per_rank"])
        checks = [
            ("replicas", plan.replicas(c["slots"], c["num_experts"])),
            ("rank_loads", plan.rank_loads_even(c["slots"], c["loads"], *args)),
            (
                "max_over_mean",
                plan.max_over_mean(plan.rank_loads_even(c["slots"], c["loads"], *args)),
            ),
        ]
        for field, got in checks:
            if got != c[field]:
                problems.append(f"{c['name']}: {field} gave {got}, want {c[field]}")
    return problems


def render(cases: list[dict]) -> str:
    lines = ["["]
    for i, c in enumerate(cases):
        lines.append("  " + json.dumps(c) + ("," if i + 1 < len(cases) else ""))
    lines.append("]")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    heading = "swiftmoe.engine.plan disagrees with the hand-written cases"
    sys.exit(
        vectors_file.main(__doc__, OUT, Path(__file__).name, build, render, cross_check, heading)
    )
