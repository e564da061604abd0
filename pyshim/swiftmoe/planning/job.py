"""One job on a sidecar, driven in the order the sidecar's contract fixes.

The plan ``RegisterJob`` answers is in force at iteration 0; the plan ``ReportLoads`` answers for
iteration t's loads is in force at t+1 (the sidecar keeps a job's state between calls, so a
job's reports go in iteration order). Every driver of the sidecar follows this sequence through
:class:`SidecarJob`: a training job (``PlanService``, one report per step, registered again with
the placement in force after the sidecar lost the job), and the replays of a recorded trace (the
simulator's plan feed, the report's replicas plot).

Shape legend: I iterations, L MoE layers, E experts of a layer, K = N*S slots of a layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from swiftmoe.planning.client import JobSpec, Registration, SidecarPlan

__all__ = ["SidecarJob"]


class SidecarJob:
    """A job registered (or to register) on a sidecar through ``client``.

    Args:
        client: a :class:`~swiftmoe.planning.client.SidecarClient` (or anything with its
            ``register_job`` and ``report_loads``); it may be replaced (``job.client = ...``)
            when the sidecar restarts.
        spec: the job's shape, needed to register; None for a job registered elsewhere.
        job_id: the id to register under ("": the sidecar picks one), or of the job to drive.

    ``rpc_s`` sums the seconds spent in ``report``.
    """

    def __init__(self, client: Any, spec: JobSpec | None = None, job_id: str = "") -> None:
        self.client, self.spec, self.job_id = client, spec, job_id
        self.registration: Registration | None = None
        self.rpc_s = 0.0

    def register(self, spec: JobSpec | None = None, timeout_s: float | None = None) -> Registration:
        """RegisterJob with ``spec`` (default: the job's), under the job's id once it has one;
        SidecarError on failure. The answer's initial plan is in force at iteration 0."""
        spec = self.spec if spec is None else spec
        if spec is None:
            raise ValueError("SidecarJob.register: no spec; pass the JobSpec to register")
        reg = self.client.register_job(spec, self.job_id, timeout_s)
        self.job_id, self.registration = reg.job_id, reg
        return reg

    def report(self, iteration: int, loads_LE: Any, timeout_s: float | None = None) -> SidecarPlan:
        """ReportLoads of ``iteration``; the plan it answers is in force at ``iteration + 1``."""
        t0 = time.perf_counter()
        try:
            return self.client.report_loads(self.job_id, iteration, loads_LE, timeout_s=timeout_s)
        finally:
            self.rpc_s += time.perf_counter() - t0

    def replay(
        self,
        loads_ILE: Sequence[Any],
        timeout_s: float | None = None,
        wait: Callable[[int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[SidecarPlan]:
        """Reports iterations 0 .. I-2 of a trace in order and yields each answer: the plans in
        force at iterations 1 .. I-1. ``wait(it)`` runs before iteration it is reported (a trace
        still being drawn); the replay ends early, before a report, once ``stop()`` is true."""
        for it in range(len(loads_ILE) - 1):
            if wait is not None:
                wait(it)
            if stop is not None and stop():
                return
            yield self.report(it, loads_ILE[it], timeout_s)
