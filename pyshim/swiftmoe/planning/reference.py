"""The swiftmoe strategy's first two steps in plain Python: replica counts proportional to load
and LPT packing under the plan rule.

For tests and benchmarks that run without a sidecar (and as their reference of the rule);
training plans through the sidecar, whose strategy (plugins/swiftmoe) also refines the packing,
searches the counts of small layers and spreads replicas over nodes.

* :func:`replica_counts`: one replica per expert, then every extra slot to the expert with the
  highest load per replica (EPLB's rule), ties to the lower id. With ``cap_at_ranks`` an expert
  takes more than N replicas only once every expert has N: two replicas on one rank add nothing
  to the min-max split, whose amounts are per (expert, rank).
* :func:`lpt_pack`: replicas heaviest (load / replicas) first, each onto the open rank holding
  the fewest replicas of its expert, then the least loaded, then the lowest id; then swaps
  until no rank holds more than ceil(r_e / N) replicas of expert e (the plan rule of
  ``swiftmoe.engine.plan.validate_slots``).

Shape legend: L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots, R = N ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["lpt_pack", "plan_layer", "plan_layers", "replica_counts"]


def replica_counts(
    loads_E: Sequence[float], N: int, S: int, *, cap_at_ranks: bool = False
) -> list[int]:
    """reps_E (sum N*S): replicas per expert, proportional to load (see the module doc)."""
    E = len(loads_E)
    if N * S < E:
        raise ValueError(f"{N} ranks x {S} slots cannot hold {E} experts: raise the slots")
    reps_E = [1] * E
    cap = N if cap_at_ranks else None
    for _ in range(N * S - E):
        cand = [e for e in range(E) if cap is None or reps_E[e] < cap]
        if not cand:
            cap += N
            cand = list(range(E))
        e = max(cand, key=lambda e: (loads_E[e] / reps_E[e], -e))
        reps_E[e] += 1
    return reps_E


def lpt_pack(loads_E: Sequence[float], reps_E: Sequence[int], N: int, S: int) -> list[int]:
    """slots_K: the replicas packed onto ranks (see the module doc); valid under the plan rule."""
    E = len(loads_E)
    units = sorted(
        ((loads_E[e] / reps_E[e], e) for e in range(E) for _ in range(reps_E[e])),
        key=lambda u: (-u[0], u[1]),
    )
    load_R = [0.0] * N
    held: list[list[int]] = [[] for _ in range(N)]
    for w, e in units:
        r = min(
            (r for r in range(N) if len(held[r]) < S),
            key=lambda r: (held[r].count(e), load_R[r], r),
        )
        load_R[r] += w
        held[r].append(e)
    limit_E = [-(-r // N) for r in reps_E]
    for r in range(N):
        for e in sorted(set(held[r])):
            while held[r].count(e) > limit_E[e]:
                r2, i2 = next(
                    (r2, i2)
                    for r2 in range(N)
                    if held[r2].count(e) < limit_E[e]
                    for i2, f in enumerate(held[r2])
                    if f != e and held[r].count(f) < limit_E[f]
                )
                f = held[r2][i2]
                held[r2][i2] = e
                held[r][held[r].index(e)] = f
    return [e for r in range(N) for e in held[r]]


def plan_layer(
    loads_E: Sequence[float], N: int, S: int, *, cap_at_ranks: bool = False
) -> list[int]:
    """slots_K of one layer: :func:`replica_counts`, then :func:`lpt_pack`."""
    loads = [float(x) for x in loads_E]
    return lpt_pack(loads, replica_counts(loads, N, S, cap_at_ranks=cap_at_ranks), N, S)


def plan_layers(
    loads_LE: Sequence[Sequence[float]], N: int, S: int, *, cap_at_ranks: bool = False
) -> list[list[int]]:
    """slots_LK: :func:`plan_layer` of every layer (pure)."""
    return [plan_layer(loads_E, N, S, cap_at_ranks=cap_at_ranks) for loads_E in loads_LE]
