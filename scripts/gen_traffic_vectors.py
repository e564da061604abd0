#!/usr/bin/env python3
"""Write testdata/vectors/traffic.json: the engine split's per-rank traffic for placements the
swiftmoe strategy's step model (plugins/swiftmoe/traffic.go) estimates.

The step model assumes what its plans are packed for: every rank routes the same share of each
expert's load, and each replica processes its expert's load split evenly. These cases meet that
exactly (counts[q, e] = load_e / N, loads multiples of N x replicas), so the engine's even split
(``even_demand``) and its tiers (``tier_sums``: local, then the node tier in proportion, then
the rest) give the traffic the model should price; plugins/swiftmoe/traffic_test.go compares
them rank by rank. The engine's tiers work in whole tokens (floors, remainders to the first
members of a group), the model in reals: the Go test allows a token per slot.

    python3 scripts/gen_traffic_vectors.py          # rewrite the file
    python3 scripts/gen_traffic_vectors.py --check  # exit 1 when the committed file is stale

Every case: name, ranks, ranks_per_node, slots_per_rank, loads (per expert), slots (the
placement, slot k on rank k // slots_per_rank), and the engine's per-rank si, ri, se, re
(tokens sent to / received from other ranks of the node, sent to / received from other nodes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "vectors" / "traffic.json"
sys.path.insert(0, str(ROOT / "pyshim"))

import vectors_file  # noqa: E402

from swiftmoe.engine.split.demand import even_demand  # noqa: E402
from swiftmoe.engine.split.plan_index import prepare  # noqa: E402
from swiftmoe.engine.split.tiers import tier_sums  # noqa: E402


def _case(name: str, seed: int, nodes: int, rpn: int, S: int, E: int, kind: str) -> dict:
    rng = np.random.default_rng(seed)
    N = nodes * rpn
    if kind == "static":
        slots = np.arange(N * S) % E
    else:  # every expert once, the rest drawn by a skewed weight, shuffled
        w = rng.pareto(1.2, E) + 0.05
        slots = np.concatenate([np.arange(E), rng.choice(E, N * S - E, p=w / w.sum())])
        rng.shuffle(slots)
    reps = np.bincount(slots, minlength=E)
    share = rng.integers(1, 40, E) * reps * 64  # per rank: a multiple of the replicas
    counts = np.tile(share, (N, 1))
    c_QE, plan, L_E = prepare(counts, slots.tolist(), S)
    si, ri, se, re = tier_sums(c_QE, plan, even_demand(plan, L_E), rpn)
    return dict(
        name=name,
        ranks=N,
        ranks_per_node=rpn,
        slots_per_rank=S,
        loads=[int(x) for x in L_E],
        slots=[int(x) for x in slots],
        si=si.tolist(),
        ri=ri.tolist(),
        se=se.tolist(),
        re=re.tolist(),
    )


def build() -> list[dict]:
    return [
        _case("static, 2 nodes of 4, 2 slots, E=8", 1, 2, 4, 2, 8, "static"),
        _case("static, 4 nodes of 8, 6 slots, E=64", 2, 4, 8, 6, 64, "static"),
        _case("skewed replicas, 2 nodes of 8, 6 slots, E=64", 3, 2, 8, 6, 64, "skewed"),
        _case("skewed replicas, 4 nodes of 8, 6 slots, E=64", 4, 4, 8, 6, 64, "skewed"),
        _case("skewed replicas, 4 nodes of 8, 4 slots, E=32", 5, 4, 8, 4, 32, "skewed"),
        _case("skewed replicas, 3 nodes of 5, 3 slots, E=20", 6, 3, 5, 3, 20, "skewed"),
        _case("skewed replicas, 7 nodes of 2, 5 slots, E=9", 7, 7, 2, 5, 9, "skewed"),
        _case("skewed replicas, 2 nodes of 8, 4 slots, E=16", 8, 2, 8, 4, 16, "skewed"),
    ]


def render(cases: list[dict]) -> str:
    return json.dumps(cases, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    sys.exit(vectors_file.main(__doc__, OUT, Path(__file__).name, build, render))
