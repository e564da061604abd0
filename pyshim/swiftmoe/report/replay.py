"""Replicas per expert a strategy gives a recorded trace, planned by the real sidecar and plugin
exactly as a training job's plans are (``swiftmoe report --plan-strategy``).

Shape legend: I iterations, L MoE layers, E experts, K = N*S slots of a layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["plans_from_sidecar"]


def plans_from_sidecar(
    loads_ILE: Sequence[Sequence[Sequence[int]]],
    strategy: str,
    world_size: int,
    slots_per_rank: int,
    *,
    options: Mapping[str, str] | None = None,
    ranks_per_node: int = 0,
    expert_param_numel: int = 2 * 768 * 3072,
    binary: str | None = None,
    plugins_dir: str | None = None,
    timeout_s: float = 10.0,
) -> list[list[list[int]]]:
    """Replicas per expert in force at every iteration, replicas_ILE, as a training job gets them.

    Starts the sidecar, registers a job with the strategy, and replays the trace through the job
    (``SidecarJob.replay``: ReportLoads in order); the initial plan is in force at iteration 0,
    the answer to iteration t's loads at t+1 (last-iteration prediction, the loop a training job
    runs).
    """
    from swiftmoe.engine.plan import replicas
    from swiftmoe.planning.client import JobSpec, SidecarClient
    from swiftmoe.planning.job import SidecarJob
    from swiftmoe.planning.process import ManagedSidecar

    if not loads_ILE:
        raise ValueError("plans_from_sidecar: the trace is empty")
    E_L = [len(layer) for layer in loads_ILE[0]]
    spec = JobSpec(
        world_size=world_size,
        slots_per_rank=slots_per_rank,
        experts_per_layer=E_L,
        expert_param_numel=[expert_param_numel],
        strategy=strategy,
        strategy_options=dict(options or {}),
        ranks_per_node=ranks_per_node,
    )

    def replicas_LE(slots_LK: list[list[int]]) -> list[list[int]]:
        return [replicas(slots_K, E) for E, slots_K in zip(E_L, slots_LK, strict=True)]

    with ManagedSidecar(binary=binary, plugins_dir=plugins_dir) as sidecar:
        with SidecarClient(sidecar.address, timeout_s) as client:
            job = SidecarJob(client, spec)
            out = [replicas_LE(job.register().initial_plan.slots_LK)]
            out += [replicas_LE(plan.slots_LK) for plan in job.replay(loads_ILE)]
    return out
