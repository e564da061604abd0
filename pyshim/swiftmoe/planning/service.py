"""The sidecar-backed plan source rank 0 of the engine uses: :class:`PlanService`.

``submit`` hands an iteration's loads to one worker thread and never blocks, ``poll(deadline_s)``
returns the newest plan or ``None`` (the ``PlanSource`` protocol of
``swiftmoe.engine.plan_source``). When the sidecar dies or hangs, the worker restarts the
sidecar it owns and registers the same job again, logging what happened; meanwhile ``poll``
returns ``None`` and the engine keeps its placement.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace

import grpc

from swiftmoe.planning.client import (
    JobSpec,
    Registration,
    SidecarClient,
    SidecarError,
    SidecarPlan,
)
from swiftmoe.planning.job import SidecarJob
from swiftmoe.planning.process import ManagedSidecar
from swiftmoe.planning.sources import WorkerPlanSource

__all__ = ["PlanService"]

log = logging.getLogger("swiftmoe.sidecar")

# The deadline of RegisterJob: the sidecar may wait up to 5 s for hardware discovery when the job
# leaves slots or bandwidths to it.
_REGISTER_TIMEOUT_S = 10.0

# Codes after which the sidecar is presumed dead or hung: restart it (when owned), re-register.
_RESTART_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


class PlanService(WorkerPlanSource):
    """Rank 0's plan source backed by the sidecar (``submit``/``poll`` of ``PlanSource``).

    ``start()`` starts the bundled sidecar (unless ``address`` attaches to a running one) and
    registers the job; it raises SidecarError when that fails. Afterwards nothing raises:
    ``submit`` queues the loads for one worker thread (a newer submit replaces a pending one),
    ``poll(deadline_s)`` returns the newest plan's per-layer slots that arrived by the deadline,
    else ``None``. A failed report is logged; after a dead or hung sidecar the worker restarts the
    sidecar it owns (an attached one is only re-registered) and registers the same job_id again,
    with a growing back-off between failed attempts. ``events`` counts what happened.
    """

    _log_prefix = "plan service"

    def __init__(
        self,
        spec: JobSpec,
        *,
        address: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        plugins_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        job_id: str = "",
        rpc_timeout_s: float = 2.0,
        start_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not isinstance(spec, JobSpec):
            raise ValueError(f"PlanService spec is {type(spec).__name__}: pass a JobSpec")
        for name, v in (("rpc_timeout_s", rpc_timeout_s), ("max_backoff_s", max_backoff_s)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"PlanService {name} is {v!r}: pass seconds > 0")
        self.spec = spec
        self.rpc_timeout_s = float(rpc_timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._address = address
        self._sidecar_args = dict(
            binary=binary,
            plugins_dir=plugins_dir,
            extra_args=tuple(extra_args),
            start_timeout_s=start_timeout_s,
        )
        super().__init__()
        self.sidecar: ManagedSidecar | None = None
        self._job = SidecarJob(None, spec, job_id)  # its client is set by start()
        self.latest: SidecarPlan | None = None
        self._healthy = False
        self._need_restart = False
        self._backoff_s = 0.0
        self._next_attempt = 0.0

    @property
    def owns_sidecar(self) -> bool:
        return self._address is None

    @property
    def client(self) -> SidecarClient | None:
        """The client of the sidecar in use (None before ``start()``)."""
        return self._job.client

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def registration(self) -> Registration | None:
        """The latest RegisterJob answer (None before ``start()``)."""
        return self._job.registration

    def start(self) -> Registration:
        """Starts (or attaches to) the sidecar and registers the job; SidecarError on failure."""
        if self._thread is not None:
            raise SidecarError("PlanService.start() was already called: create one service per job")
        if self.owns_sidecar:
            self.sidecar = ManagedSidecar(**self._sidecar_args)
            address = self.sidecar.address
        else:
            address = self._address
        self._job.client = SidecarClient(address, self.rpc_timeout_s)
        try:
            reg = self._job.register(self.spec, max(self.rpc_timeout_s, _REGISTER_TIMEOUT_S))
        except SidecarError:
            self.close()
            raise
        topo = reg.topology
        if not topo.get("slots_per_rank"):
            if self.spec.slots_per_rank == 0:
                self.close()
                raise SidecarError(
                    f"the sidecar at {address} registered job {reg.job_id} without choosing "
                    "slots_per_rank: it predates automatic slots; update it, or set slots_per_rank"
                )
        else:
            # Re-registrations keep what was chosen now (the engine's buffers are sized by the
            # slots) and need no discovery.
            self.spec = replace(
                self.spec,
                slots_per_rank=topo["slots_per_rank"],
                intra_node_bandwidth=topo["intra_node_bandwidth"],
                inter_node_bandwidth=topo["inter_node_bandwidth"],
            )
        self._healthy = True
        self.latest = reg.initial_plan
        log.info(
            "registered job %s with strategy %s at %s", reg.job_id, self.spec.strategy, address
        )
        for line in reg.defaults:
            log.info("job %s: %s (from the sidecar's hardware discovery)", reg.job_id, line)
        self._start_worker("swiftmoe-plan-service")
        return reg

    def close(self) -> None:
        """Stops the worker, the client and the owned sidecar."""
        self._stop_worker(timeout_s=self.rpc_timeout_s + 1.0)
        if self.client is not None:
            self.client.close()
        if self.sidecar is not None:
            self.sidecar.shutdown()

    def __enter__(self) -> PlanService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker

    def _plan(self, iteration: int, loads_LE: list[list[int]]) -> list[list[int]] | None:
        if not (self._healthy or self._recover()):
            return None
        plan = self._report(iteration, loads_LE)
        if plan is None:
            return None
        with self._cv:
            self.latest = plan
        return plan.slots_LK

    def _report(self, iteration: int, loads: list[list[int]]) -> SidecarPlan | None:
        assert self.client is not None
        try:
            return self._job.report(iteration, loads, self.rpc_timeout_s)
        except ValueError as e:
            self._note("bad_input", f"iteration {iteration}: {e}")
            return None
        except SidecarError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                self._note(
                    "job_lost", f"iteration {iteration}: {e}; registering job {self.job_id} again"
                )
            elif e.code in _RESTART_CODES:
                what = "restarting it" if self.owns_sidecar else "registering again"
                self._note(
                    "sidecar_failed", f"iteration {iteration}: {e}; keeping the placement, {what}"
                )
            else:
                self._note("rejected", f"iteration {iteration}: {e}")
                return None
            self._healthy = False
            self._need_restart = e.code != grpc.StatusCode.NOT_FOUND
            self._next_attempt = 0.0
            self._recover()
            return None

    def _recover(self) -> bool:
        """Restarts the owned sidecar and re-registers the job; False (with back-off) on failure."""
        now = time.monotonic()
        if now < self._next_attempt or self._closed:
            return False
        assert self.client is not None
        try:
            sc = self.sidecar
            if self.owns_sidecar and sc is not None and (self._need_restart or not sc.alive()):
                sc.restart()
                self._job.client.close()
                self._job.client = SidecarClient(sc.address, self.rpc_timeout_s)
                self._need_restart = False
                with self._cv:
                    self.events["restarts"] += 1
            with self._cv:
                in_force = self._in_force
            # The engine adopts the plans poll() hands it, so the newest of them is the
            # placement in force (the engine keeps its current one only if it rejects a plan).
            spec = self.spec if in_force is None else replace(self.spec, current_slots=in_force)
            reg = self._job.register(spec, self.rpc_timeout_s)
        except (SidecarError, OSError) as e:
            self._backoff_s = min(self.max_backoff_s, max(0.5, 2 * self._backoff_s))
            self._next_attempt = time.monotonic() + self._backoff_s
            self._note(
                "recover_failed",
                f"recovering the sidecar failed: {e}; next try in {self._backoff_s:.1f}s",
            )
            return False
        self._healthy, self._backoff_s = True, 0.0
        with self._cv:
            self.events["reregistered"] += 1
        log.warning("plan service: job %s registered again at %s", reg.job_id, self.client.address)
        return True
