"""The one factory from a ``SwiftMoEConfig`` with a ``strategy`` to a started plan source.

``swiftmoe.replicate_`` hands :func:`plan_source_for` to the engine, which calls it on rank 0
once, before it builds the layers (the ``PlanSourceFactory`` protocol of
``swiftmoe.engine.plan_source``).
"""

from __future__ import annotations

import logging
from typing import Any

from swiftmoe.engine.plan_source import JobShape, StartedPlanSource

__all__ = ["plan_source_for"]

log = logging.getLogger("swiftmoe")


def plan_source_for(config: Any, job: JobShape) -> StartedPlanSource:
    """Start the bundled sidecar (or attach to ``config.sidecar_address``), register the job
    with ``config.strategy`` and return the :class:`~swiftmoe.planning.service.PlanService`
    that plans for it, with the slots per rank in force (the sidecar's choice when
    ``job.slots_per_rank`` is 0).

    Raises ValueError when the sidecar refuses the job's configuration (INVALID_ARGUMENT: a
    strategy option the strategy does not declare, or a value it refuses), SidecarError for
    anything else, each with the reason and the fix; nothing is left running then.
    """
    import grpc

    from swiftmoe.planning.client import JobSpec, SidecarError
    from swiftmoe.planning.service import PlanService

    spec = JobSpec(
        world_size=job.world_size,
        slots_per_rank=job.slots_per_rank,
        experts_per_layer=list(job.experts_per_layer),
        expert_param_numel=list(job.expert_param_numel),
        strategy=config.strategy,
        strategy_options=dict(config.strategy_options),
        ranks_per_node=job.ranks_per_node,
        bytes_per_param=job.bytes_per_param,
        current_slots=None if job.initial_slots is None else [list(s) for s in job.initial_slots],
        intra_node_bandwidth=job.intra_node_bandwidth,
        inter_node_bandwidth=job.inter_node_bandwidth,
        token_bytes=job.token_bytes,
        flops_per_second=job.flops_per_second,
        burst_slots_per_rank=job.burst_slots_per_rank,
        burst_threshold=job.burst_threshold,
    )
    svc = PlanService(spec, address=config.sidecar_address, plugins_dir=config.plugins_dir)
    try:
        svc.start()  # logs each value the sidecar filled in, with its source
    except SidecarError as e:
        svc.close()
        if e.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise ValueError(
                f"strategy {config.strategy!r} with strategy_options "
                f"{dict(config.strategy_options)!r}: the sidecar refused the job: {e}"
            ) from None
        raise SidecarError(
            f"through the sidecar: {e}; check `swiftmoe doctor`, or set sidecar_address to a "
            "running sidecar",
            e.code,
        ) from e
    except BaseException:
        svc.close()
        raise
    chosen = svc.spec.slots_per_rank
    if job.slots_per_rank == 0:
        log.info("swiftmoe: the sidecar chose %d slots per rank", chosen)
    log.info("swiftmoe: strategy %r planning through the sidecar", config.strategy)
    return StartedPlanSource(
        svc, chosen, svc.spec.intra_node_bandwidth, svc.spec.inter_node_bandwidth
    )
