"""Each job's plan sequence from the sidecar, fetched ahead of the simulation in the background.

A job's plan for iteration t+1 depends only on the loads of iterations 0..t, which the trace
holds from the start, so the ReportLoads chain of every job can run while the simulation splits
tokens. One thread per job replays the trace through its
:class:`~swiftmoe.planning.job.SidecarJob` (ReportLoads in iteration order) and hands each
answer over through a bounded queue; jobs are independent of each other. The simulation reads
plan t+1 when it reaches iteration t+1.

Shape legend: I iterations, L layers, E experts, K slots of a layer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from swiftmoe.planning.client import SidecarClient, SidecarError
from swiftmoe.planning.job import SidecarJob

__all__ = ["FetchedPlan", "PlanFeed"]

_POLL_S = 0.5  # how often a blocked producer checks whether the feed was closed


@dataclass(frozen=True)
class FetchedPlan:
    iteration: int  # the plan is in force at this iteration
    slots_LK: list[np.ndarray]  # int64, one array per layer
    source: str
    note: str
    migrated_bytes: int


class PlanFeed:
    """ReportLoads for every job over loads_ILE[0 .. I-2], at most ``ahead`` plans in advance.

    ``next(j)`` returns job j's plans in order (in force at iterations 1 .. I-1); a sidecar error
    in a job's thread is raised there, and waiting longer than the RPC timeout plus a margin
    raises SidecarError, so a stuck sidecar fails the run instead of hanging it. ``close()``
    stops and joins the threads (also on error); ``rpc_s`` sums the time spent in ReportLoads.
    With ``wait`` (a StreamedTrace's), iteration it's loads are reported after wait(it).
    """

    def __init__(
        self,
        client: SidecarClient,
        job_ids: list[str],
        loads_ILE: np.ndarray,
        timeout_s: float,
        wait: Callable[[int], None] | None = None,
        ahead: int = 8,
    ):
        if ahead < 1:
            raise ValueError(f"ahead is {ahead!r}: pass an integer >= 1")
        self._client = client
        self._loads = loads_ILE
        self._wait = wait
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._queues: list[queue.Queue] = [queue.Queue(maxsize=ahead) for _ in job_ids]
        self._jobs = [SidecarJob(client, job_id=jid) for jid in job_ids]
        self._threads = [
            threading.Thread(
                target=self._produce, args=(j,), name=f"sim-plans-{job.job_id}", daemon=True
            )
            for j, job in enumerate(self._jobs)
        ]
        for t in self._threads:
            t.start()

    @property
    def rpc_s(self) -> float:
        return float(sum(job.rpc_s for job in self._jobs))

    def _put(self, j: int, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queues[j].put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, j: int) -> None:
        try:
            plans = self._jobs[j].replay(
                self._loads, self._timeout_s, self._wait, self._stop.is_set
            )
            for it, plan in enumerate(plans, 1):
                item = FetchedPlan(
                    it,
                    [np.array(r, dtype=np.int64) for r in plan.slots_LK],
                    plan.source,
                    plan.note,
                    plan.remap_migrated_bytes,
                )
                if not self._put(j, item):
                    return
        except BaseException as e:  # handed to the reader, which raises it
            self._put(j, e)

    def next(self, j: int) -> FetchedPlan:
        """Job j's next plan; raises what its thread raised, or SidecarError on a stall."""
        wait_s = self._timeout_s + 30.0
        try:
            item = self._queues[j].get(timeout=wait_s)
        except queue.Empty:
            raise SidecarError(
                f"no plan from the sidecar within {wait_s:g}s (ReportLoads timeout "
                f"{self._timeout_s:g}s): the sidecar or a plugin is stuck"
            ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
