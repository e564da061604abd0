"""The engine's one seam to planning: the ``PlanSource`` protocol, what a factory of plan sources
is told about the job, and the structure check of whatever a source answers.

The engine knows nothing else about planning. ``swiftmoe.planning`` provides the sources (a fixed
plan, a Python function in a worker thread, the sidecar) and the factory that turns a
``SwiftMoEConfig`` with a ``strategy`` into one; ``swiftmoe.replicate_`` hands that factory to the
engine.

Shape legend: L MoE layers, E experts of a layer, N ranks, S slots per rank, K = N*S slots of a
layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from swiftmoe._checks import is_int

__all__ = [
    "JobShape",
    "PlanOrigin",
    "PlanSource",
    "PlanSourceFactory",
    "StartedPlanSource",
    "as_plan",
]


@dataclass(frozen=True)
class PlanOrigin:
    """Where a plan came from, for a source that knows (the sidecar does).

    Attributes:
        source: "strategy" (the strategy planned it), or a fallback: "last_valid" (the
            strategy failed; this is the last valid plan) or "static_fallback" (it failed
            before any valid plan).
        note: why a fallback was served, or the strategy's remark.
        reason: the planner's reason for a fallback ("refused", "crash", "timeout", "error",
            ...), empty for a strategy plan.
    """

    source: str
    note: str = ""
    reason: str = ""

    @property
    def fallback(self) -> bool:
        return self.source != "strategy"


@runtime_checkable
class PlanSource(Protocol):
    """Where the next expert placement comes from. Only rank 0 of the engine talks to it.

    Both methods run on the training thread, so neither may block past its deadline; the
    engine validates every plan a source returns (``swiftmoe.engine.plan.validate_slots``) and
    keeps the placement in force when one is rejected.

    Optional members, which the engine uses when a source has them:

    * ``origin``: a :class:`PlanOrigin` (or None) that ``poll`` sets to where the plan it
      returned came from. A fallback is adopted like any valid plan, but reported as one:
      plan event "fallback", and ``StepStats.plan_source``/``plan_note`` on rank 0.
    * ``state_dict() -> dict`` and ``load_state_dict(state, placement_L)``: what the source's
      plans depend on besides the loads to come (a predictor's history). ``handle.state_dict()``
      saves ``state_dict()`` of rank 0's source, after waiting for any plan in flight;
      ``handle.load_state_dict()`` calls ``load_state_dict`` with what was saved (None when
      nothing was) and the placement being restored, after the rest of the checkpoint passed its
      checks and before anything is written. It raises ValueError and changes nothing when the
      state is unusable, and afterwards plans from ``placement_L``, as the source that saved the
      state would have.
    """

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        """This iteration's global token counts per layer and expert.

        Called once per iteration, as soon as every MoE layer has its counts (during the
        forward pass in replicate mode, at ``step()`` in observe mode), so the source can plan
        while backward runs. It must return at once: hand the work to a thread. It must not
        keep or change ``loads_LE`` after returning unless it copied it. An exception is counted
        as a plan event ("error") and training goes on.
        """
        ...

    def poll(self, deadline_s: float) -> list[list[int]] | None:
        """The placement for the next iteration, or ``None`` to keep the one in force.

        Called once per iteration at the remap of ``step()``, after ``submit``. It may wait at
        most ``deadline_s`` seconds. It returns per MoE layer a list of N*S expert ids (slot
        k = r*S + s), nested sequences or tensors; the engine checks the structure
        (:func:`as_plan`) and the rules. It should not raise: an exception is counted as a
        plan event ("error") and the placement in force is kept.
        """
        ...


@dataclass(frozen=True)
class JobShape:
    """What the engine tells a plan-source factory about the job, before it builds the layers.

    Attributes:
        world_size: ranks, N.
        slots_per_rank: S, or 0 when the factory's planner is to choose it
            (``slots_per_rank="auto"``).
        experts_per_layer: E of every MoE layer.
        expert_param_numel: elements of one expert's parameters, per layer.
        bytes_per_param: bytes of one expert parameter element.
        ranks_per_node: ranks per node when it divides the world (0: one node or unknown).
        initial_slots: the placement the job starts from (per layer slots_K), None when
            ``slots_per_rank`` is 0 (the planner chooses the slots and starts static).
        intra_node_bandwidth, inter_node_bandwidth: link bandwidths in bytes/s the config
            gives, 0 where the planner is to discover them.
        token_bytes: bytes of one token's row in the all-to-all (the experts' input width times
            the expert parameters' element size; 0: unknown).
        flops_per_second: one rank's expert GEMM throughput (the config's, else the device's
            default; ``swiftmoe.engine.costmodel``).
        burst_slots_per_rank, burst_threshold: the engine's burst replicas (0: off), so that a
            planner may leave imbalance within a node to them.
    """

    world_size: int
    slots_per_rank: int
    experts_per_layer: tuple[int, ...]
    expert_param_numel: tuple[int, ...]
    bytes_per_param: int
    ranks_per_node: int
    initial_slots: tuple[tuple[int, ...], ...] | None
    intra_node_bandwidth: float = 0.0
    inter_node_bandwidth: float = 0.0
    token_bytes: float = 0.0
    flops_per_second: float = 0.0
    burst_slots_per_rank: int = 0
    burst_threshold: float = 0.0


@dataclass(frozen=True)
class StartedPlanSource:
    """A factory's answer: the source and the slots per rank it stands for (the number
    chosen when the job asked for ``slots_per_rank=0``), and the link bandwidths in force
    (bytes/s: the job's, or the planner's discovered ones; 0 where unknown), which the engine's
    cost model of burst replicas uses."""

    source: PlanSource
    slots_per_rank: int
    intra_node_bandwidth: float = 0.0
    inter_node_bandwidth: float = 0.0


class PlanSourceFactory(Protocol):
    """Starts the plan source a config asks for (``SwiftMoEConfig.strategy``).

    The engine calls it on rank 0 only, once, before any layer exists, and broadcasts the
    outcome so that every rank fails or goes on together. It may block while it starts a
    planner (a sidecar process) and raises when it cannot, with the reason and the fix.
    """

    def __call__(self, config: Any, job: JobShape) -> StartedPlanSource: ...


def as_plan(obj: Any) -> list[list[int]]:
    """``obj`` as a list of per-layer lists of ints; ValueError naming the bad entry otherwise.

    Accepts nested sequences and tensors. Range and coverage checks are the engine's job
    (``swiftmoe.engine.plan.validate_slots``); this only checks the structure.
    """
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
        raise ValueError(f"plan must be a list of per-layer slot lists, got {type(obj).__name__}")
    out: list[list[int]] = []
    for li, layer in enumerate(obj):
        if hasattr(layer, "tolist"):
            layer = layer.tolist()
        if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence):
            raise ValueError(
                f"plan layer {li} must be a list of expert ids, got {type(layer).__name__}"
            )
        ids = []
        for k, e in enumerate(layer):
            if not is_int(e):
                raise ValueError(f"plan layer {li} slot {k} is {e!r}, want an integer expert id")
            ids.append(int(e))
        out.append(ids)
    return out
