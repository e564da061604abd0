"""What the engine counts: the load statistics on each block, and what one ``step()`` saw.

Load statistics of training-mode forwards live on the block as non-persistent buffers, updated
under ``no_grad`` and read and reset at ``step()``, never in a process-global list:
``swiftmoe_loads_E`` (global assignments per expert) and ``swiftmoe_dropped`` (assignments the
capacity factor dropped).

Shape legend: L MoE layers, E experts of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "DROPPED_BUFFER",
    "LOADS_BUFFER",
    "StepStats",
    "add_stat_buffers",
    "dropped_of",
    "in_recompute",
    "loads_of",
    "reset_stats",
]

LOADS_BUFFER = "swiftmoe_loads_E"
DROPPED_BUFFER = "swiftmoe_dropped"


@dataclass
class StepStats:
    """What one ``step()`` saw. Lists have one entry per MoE layer.

    Attributes:
        iteration: the iteration the stats are for.
        loads_LE: global token assignments per expert.
        max_over_mean_L: busiest rank / mean rank load under the placement in force (replicate:
            the split that ran; observe: the placement the job started with).
        dropped_L: assignments dropped by the capacity factor (0 when dropless).
        plan_event: "accepted", "fallback" (a valid plan the planner served instead of its
            strategy's: the last valid or the static plan; adopted like any), "kept" (no plan
            arrived), "none" (no plan source), "rejected: <reason>" or "error: <reason>".
        placement_changed: the placement differs from the one before.
        predicted_max_over_mean_L: observe mode: the ratio the plan received at the previous
            step would have given on this iteration's loads (None before the first plan).
        plan_events: every plan event so far, counted by kind.
        plan_source: rank 0, for a source that says where its plan came from (the sidecar):
            "strategy", "last_valid" or "static_fallback"; "" otherwise.
        plan_note: rank 0: the planner's note on that plan (why it fell back).
        expert_step: False when no backward reached the expert layers since the last step, so
            the expert optimizer did not step (torch optimizers likewise skip parameters
            without gradients); the plan and the remap still ran.
        bursts_L: replicate mode: burst replicas made per layer in this iteration's training
            forwards (``SwiftMoEConfig.burst_slots_per_rank``); observe mode: empty.
        node_local_L: replicate mode: this iteration's training forwards per layer whose token
            split took the amounts that keep tokens in their node, because the cost model priced
            them cheaper than the compute-balancing ones (``split_method="auto"`` on more than
            one node, ``swiftmoe.engine.split.priced``); observe mode: empty.
        decisions_L, stopped_L: replicate mode with burst replicas: this iteration's training
            forwards per layer whose burst decision ran, and those whose decision the gate
            stopped (``SwiftMoEConfig.burst_decision_ms``); both past the threshold. Else empty.
        decision_ms: replicate mode with burst replicas: the decision's host time the gate uses
            from the next iteration on (rank 0's figure; 0: no gate).
    """

    iteration: int
    loads_LE: list[list[int]]
    max_over_mean_L: list[float]
    dropped_L: list[int]
    plan_event: str
    placement_changed: bool = False
    predicted_max_over_mean_L: list[float] | None = None
    plan_events: dict[str, int] = field(default_factory=dict)
    plan_source: str = ""
    plan_note: str = ""
    expert_step: bool = True
    bursts_L: list[int] = field(default_factory=list)
    node_local_L: list[int] = field(default_factory=list)
    decisions_L: list[int] = field(default_factory=list)
    stopped_L: list[int] = field(default_factory=list)
    decision_ms: float = 0.0


def in_recompute() -> bool:
    """True while the autograd engine runs a backward: a forward then is activation
    checkpointing's recompute, whose tokens were counted by the first forward already.

    Uses ``torch._C._current_graph_task_id()`` (-1 outside a backward; verified with reentrant
    and non-reentrant checkpointing in torch 2.15). It is a private API: without it, or if it
    fails, every forward counts (the behaviour before this check). A forward deliberately run
    inside a backward hook is not counted either.
    """
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    if task_id is None:
        return False
    try:
        return int(task_id()) != -1
    except Exception:  # a changed private API must not break training
        return False


def add_stat_buffers(block: nn.Module, num_experts: int, device: torch.device) -> None:
    """Register the two statistics buffers on ``block``; ValueError when it already has them."""
    for name, shape in ((LOADS_BUFFER, (num_experts,)), (DROPPED_BUFFER, ())):
        if name in block._buffers:
            raise ValueError(
                f"replicate_: block {type(block).__name__} already carries {name}; "
                "swiftmoe.replicate_ was applied to this model twice"
            )
        block.register_buffer(
            name, torch.zeros(shape, dtype=torch.long, device=device), persistent=False
        )


def loads_of(block: nn.Module) -> torch.Tensor:
    """The block's global assignments per expert this iteration (int64 [E])."""
    return getattr(block, LOADS_BUFFER)


def dropped_of(block: nn.Module) -> torch.Tensor:
    """The block's dropped assignments this iteration (int64 scalar)."""
    return getattr(block, DROPPED_BUFFER)


def reset_stats(block: nn.Module) -> None:
    loads_of(block).zero_()
    dropped_of(block).zero_()
