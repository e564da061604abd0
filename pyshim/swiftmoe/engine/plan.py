"""Plan rules: the placement of experts into slots, shared with the Go SDK.

A plan is, per MoE layer, a vector of N*S expert ids: slot s of rank r is entry r*S+s. These
functions hold exactly the rules of plugins/sdk/plan.go (StaticSlots, ValidateSlots, Replicas,
RankLoads, MaxOverMean); testdata/vectors/plan_rules.json keeps the two languages equal.

Shape legend:
    E  experts of one MoE layer (num_experts)
    N  ranks (world_size)
    S  slots per rank (slots_per_rank)
    K  slots of the layer, K = N*S; slot k = r*S + s lives on rank r = k // S
    R  ranks, R = N (used for per-rank vectors such as loads_R)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from swiftmoe._checks import is_int

__all__ = [
    "InvalidPlanError",
    "max_over_mean",
    "rank_loads_even",
    "replicas",
    "static_slots",
    "validate_slots",
]


class InvalidPlanError(ValueError):
    """A plan breaks a rule of DESIGN.md "Plans"; the message names the rule and the fix."""


def _ints(slots_K: Sequence[int] | torch.Tensor, name: str = "slots") -> list[int]:
    if isinstance(slots_K, torch.Tensor):
        if slots_K.dim() != 1:
            raise InvalidPlanError(
                f"{name} must be a 1-D vector of expert ids, got shape {tuple(slots_K.shape)}"
            )
        if slots_K.is_floating_point() or slots_K.is_complex():
            raise InvalidPlanError(
                f"{name} must hold integer expert ids, got dtype {slots_K.dtype}"
            )
        return [int(x) for x in slots_K.tolist()]
    out = []
    for i, x in enumerate(slots_K):
        if isinstance(x, bool) or not isinstance(x, int) and not hasattr(x, "__index__"):
            raise InvalidPlanError(f"{name}[{i}] is {x!r}, want an integer expert id")
        out.append(int(x))
    return out


def static_slots(num_experts: int, world_size: int, slots_per_rank: int) -> list[int]:
    """Expert parallelism as DeepSpeed-MoE lays it out: slot k holds expert k % num_experts.

    Returns slots_K (len world_size*slots_per_rank). It is the plan every job starts from and the
    fallback when no valid plan has arrived. Raises ValueError when an argument is below 1 or the
    slots cannot hold every expert.
    """
    for name, v in (
        ("num_experts", num_experts),
        ("world_size", world_size),
        ("slots_per_rank", slots_per_rank),
    ):
        if not is_int(v, 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    total = world_size * slots_per_rank
    if total < num_experts:
        need = -(-num_experts // world_size)
        raise ValueError(
            f"world_size*slots_per_rank = {total} slots cannot hold {num_experts} experts; "
            f"raise slots_per_rank to at least {need}"
        )
    return [k % num_experts for k in range(total)]


def validate_slots(
    slots: Sequence[int] | torch.Tensor, num_experts: int, world_size: int, slots_per_rank: int
) -> None:
    """Check one layer's plan; raise InvalidPlanError with the reason, or return None.

    The rules, in the order Go's sdk.ValidateSlots checks them: world_size and slots_per_rank >= 1;
    num_experts >= 1; exactly world_size*slots_per_rank entries; enough slots for every expert;
    every id in [0, num_experts); every expert in at least one slot; with r_e replicas of expert e,
    no rank holds more than ceil(r_e / world_size) of them.
    """
    N, S, E = world_size, slots_per_rank, num_experts
    if not isinstance(N, int) or not isinstance(S, int) or N < 1 or S < 1:
        raise InvalidPlanError(
            f"topology needs world_size >= 1 and slots_per_rank >= 1, got {N} and {S}"
        )
    if not isinstance(E, int) or E < 1:
        raise InvalidPlanError(f"num_experts must be >= 1, got {E}")
    slots_K = _ints(slots)
    total = N * S
    if len(slots_K) != total:
        raise InvalidPlanError(f"{len(slots_K)} slots, want world_size*slots_per_rank = {total}")
    if total < E:
        raise InvalidPlanError(
            f"{total} slots cannot hold {E} experts; raise slots_per_rank to at least {-(-E // N)}"
        )
    replicas_E = [0] * E
    for k, e in enumerate(slots_K):
        if e < 0 or e >= E:
            raise InvalidPlanError(f"slot {k} (rank {k // S}) holds expert {e}, want 0..{E - 1}")
        replicas_E[e] += 1
    for e, n in enumerate(replicas_E):
        if n == 0:
            raise InvalidPlanError(
                f"expert {e} has no slot; every expert needs at least one replica"
            )
    for r in range(N):
        held: dict[int, int] = {}
        for e in slots_K[r * S : (r + 1) * S]:
            held[e] = held.get(e, 0) + 1
            limit = -(-replicas_E[e] // N)
            if held[e] > limit:
                raise InvalidPlanError(
                    f"rank {r} holds {held[e]} replicas of expert {e}, at most {limit} allowed "
                    f"with {replicas_E[e]} replicas over {N} ranks"
                )


def replicas(slots: Sequence[int] | torch.Tensor, num_experts: int) -> list[int]:
    """Slots of each expert, replicas_E (len num_experts). Ids out of range are ignored."""
    out_E = [0] * num_experts
    for e in _ints(slots):
        if 0 <= e < num_experts:
            out_E[e] += 1
    return out_E


def rank_loads_even(
    slots: Sequence[int] | torch.Tensor,
    loads_E: Sequence[float] | torch.Tensor,
    world_size: int,
    slots_per_rank: int,
) -> list[float]:
    """Tokens per rank, loads_R (len world_size), when each expert's load is split evenly.

    loads_E has one entry per expert. Rank r gets loads_E[e] / replicas_E[e] for each of its slots
    holding e, summed in slot order exactly as Go's sdk.RankLoads sums them, so both languages give
    bit-identical floats. Ids out of range are ignored; slots must have world_size*slots_per_rank
    entries.
    """
    if isinstance(loads_E, torch.Tensor):
        loads_E = loads_E.tolist()
    loads = [float(x) for x in loads_E]
    slots_K = _ints(slots)
    if len(slots_K) != world_size * slots_per_rank:
        raise ValueError(
            f"slots has {len(slots_K)} entries, want world_size*slots_per_rank = "
            f"{world_size * slots_per_rank}"
        )
    replicas_E = replicas(slots_K, len(loads))
    out_R = [0.0] * world_size
    for k, e in enumerate(slots_K):
        if e < 0 or e >= len(loads) or replicas_E[e] == 0:
            continue
        out_R[k // slots_per_rank] += loads[e] / float(replicas_E[e])
    return out_R


def max_over_mean(v: Sequence[float] | torch.Tensor) -> float:
    """max(v) / mean(v); 1.0 is perfect balance, and an all-zero or empty v counts as balanced."""
    if isinstance(v, torch.Tensor):  # the engine's per-rank loads, every layer and step
        t = v.detach().flatten().to(torch.float64)
        if t.numel() == 0:
            return 1.0
        total = float(t.sum())
        return float(t.max()) / (total / t.numel()) if total > 0 else 1.0
    vals = [float(x) for x in v]
    if not vals:
        return 1.0
    total = 0.0
    hi = 0.0
    for x in vals:
        total += x
        if x > hi:
            hi = x
    if total <= 0:
        return 1.0
    return hi / (total / float(len(vals)))
