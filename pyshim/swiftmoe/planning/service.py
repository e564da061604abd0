"""The sidecar-backed plan source rank 0 of the engine uses: :class:`PlanService`.

``submit`` hands an iteration's loads to one worker thread and never blocks, ``poll(deadline_s)``
returns the newest plan or ``None`` and says where it came from (``origin``: the strategy, or a
fallback the sidecar served), the ``PlanSource`` protocol of ``swiftmoe.engine.plan_source``.
When the sidecar dies or hangs, the worker restarts the sidecar it owns and registers the same
job again, logging what happened; meanwhile ``poll`` returns ``None`` and the engine keeps its
placement.

Trust survives the restarts: the service keeps the plugin digest the job's first registration
reported (``pin``) and sends it with every registration, so a restarted sidecar refuses a
plugin binary replaced meanwhile (``refusal``, an error log line, ``events["refused"]``) and
serves the placement in force instead. ``state_dict``/``load_state_dict`` carry the job's load
history through a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc

from swiftmoe.engine.plan_source import PlanOrigin
from swiftmoe.planning.client import (
    JobSpec,
    Registration,
    SidecarClient,
    SidecarError,
    SidecarPlan,
    history_to_proto,
)
from swiftmoe.planning.job import SidecarJob
from swiftmoe.planning.process import ManagedSidecar
from swiftmoe.planning.sources import WorkerPlanSource

__all__ = ["PlanService"]

log = logging.getLogger("swiftmoe.sidecar")

# The deadline of RegisterJob: the sidecar may wait up to 5 s for hardware discovery when the job
# leaves slots or bandwidths to it.
_REGISTER_TIMEOUT_S = 10.0

# What PlanService.state_dict() returns is tagged with this kind.
STATE_KIND = "swiftmoe.planning.PlanService"

# A fallback plan is logged at once, then at most once per this many seconds (with a count).
_FALLBACK_LOG_EVERY_S = 30.0

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
    with a growing back-off between failed attempts. ``events`` counts what happened
    ("fallback": plans the sidecar served instead of the strategy's; "refused": registrations
    whose plugin binary was refused). ``pin`` is the plugin digest the job trusts, ``refusal``
    why its plugin is refused ("" when it is not).
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
        #: The plugin digest the job first saw ("" until a registration reports one).
        self.pin = spec.strategy_sha256
        #: Why the strategy's plugin is refused for this job ("" while it is trusted).
        self.refusal = ""
        # One job RPC at a time: the worker's reports and registrations, and checkpoints'.
        self._rpc = threading.RLock()
        # A restored load history the sidecar has not taken yet (it was down at the restore).
        self._resume_history: dict[str, Any] | None = None
        self._fallback_logged_at = -math.inf
        self._fallbacks_unlogged = 0

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
        self._adopt(reg)
        if self.refusal:
            self.close()
            raise SidecarError(
                f"the sidecar at {address} refused the plugin of strategy {self.spec.strategy!r}: "
                f"{self.refusal}; reinstall the plugin (`swiftmoe doctor` checks the digests)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        log.info(
            "registered job %s with strategy %s at %s (plugin sha256 %s)",
            reg.job_id,
            self.spec.strategy,
            address,
            self.pin or "unknown",
        )
        for line in reg.defaults:
            log.info("job %s: %s (from the sidecar's hardware discovery)", reg.job_id, line)
        self._start_worker("swiftmoe-plan-service")
        return reg

    def _adopt(self, reg: Registration) -> None:
        """Takes what a registration says about trust: the first digest seen becomes the pin
        every later registration sends; a refusal is logged at error level and counted."""
        digest = str(reg.strategy.get("sha256") or "")
        if not self.pin and digest:
            self.pin = digest
            self.spec = replace(self.spec, strategy_sha256=digest)
        self.refusal = reg.plugin_refused
        if self.refusal:
            with self._cv:
                self.events["refused"] += 1
            log.error(
                "plan service: job %s: the sidecar refused the %r strategy's plugin: %s; "
                "training goes on with the placement in force",
                reg.job_id,
                self.spec.strategy,
                self.refusal,
            )

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

    def _answer(
        self, iteration: int, loads_LE: list[list[int]]
    ) -> tuple[list[list[int]] | None, PlanOrigin | None]:
        with self._rpc:
            if not (self._healthy or self._recover()):
                return None, None
            plan = self._report(iteration, loads_LE)
        if plan is None:
            return None, None
        with self._cv:
            self.latest = plan
        origin = PlanOrigin(plan.origin, plan.note, plan.fallback_reason)
        if origin.fallback:
            self._fallback(iteration, plan)
        return plan.slots_LK, origin

    def _fallback(self, iteration: int, plan: SidecarPlan) -> None:
        """Counts a fallback plan and logs it: the first at once, then at most once per
        _FALLBACK_LOG_EVERY_S seconds with how many came in between."""
        with self._cv:
            self.events["fallback"] += 1
        now = time.monotonic()
        if now - self._fallback_logged_at < _FALLBACK_LOG_EVERY_S:
            self._fallbacks_unlogged += 1
            return
        also = (
            f" ({self._fallbacks_unlogged} more fallback plans since the last such line)"
            if self._fallbacks_unlogged
            else ""
        )
        self._fallback_logged_at, self._fallbacks_unlogged = now, 0
        log.warning(
            "plan service: job %s iteration %d: the sidecar served a fallback (%s, reason %s), "
            "not the strategy's plan: %s%s",
            self.job_id,
            iteration,
            plan.origin,
            plan.fallback_reason or "unknown",
            plan.note,
            also,
        )

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
            if self._resume_history is not None:
                spec = replace(spec, history=self._resume_history)
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
        self._resume_history = None
        with self._cv:
            self.events["reregistered"] += 1
        log.warning("plan service: job %s registered again at %s", reg.job_id, self.client.address)
        self._adopt(reg)
        return True

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What the job's plans depend on besides the loads to come: its load history on the
        sidecar (ExportJob), with the strategy and the plugin digest the job trusts. Waits for
        a report in flight first (at most the RPC deadline). When the sidecar cannot answer,
        ``history`` is None and a warning says so: a job resumed from it predicts from fresh
        reports."""
        if not self._wait_idle(self.rpc_timeout_s + 1.0):
            log.warning("plan service: a report still runs; the checkpoint may miss its loads")
        history, why = None, ""
        with self._rpc:
            if self._resume_history is not None:  # restored, not yet taken by the sidecar
                history = self._resume_history
            elif self.client is not None:
                try:
                    history = self.client.export_job(self.job_id, self.rpc_timeout_s)
                except SidecarError as e:
                    why = str(e)
        if history is None:
            log.warning(
                "plan service: job %s: the checkpoint holds no load history (%s); a job resumed "
                "from it predicts from fresh reports",
                self.job_id,
                why or "the sidecar is not running",
            )
        return {
            "kind": STATE_KIND,
            "strategy": self.spec.strategy,
            "strategy_options": dict(self.spec.strategy_options),
            "strategy_sha256": self.pin,
            "history": history,
        }

    def _checked_history(self, state: Any) -> dict[str, Any] | None:
        """The load history of a ``state_dict()`` (None for none), checked against this job;
        ValueError naming the problem otherwise."""
        if state is None:
            return None
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"plan_source: the checkpoint's plan-source state is {kind!r}, not what "
                f"{STATE_KIND} saves; load a checkpoint of a job that planned through the sidecar"
            )
        digest = state.get("strategy_sha256", "")
        if not isinstance(digest, str):
            raise ValueError(f"plan_source.strategy_sha256 is {digest!r}: want a hex digest")
        history = state.get("history")
        if history is not None:
            try:
                history_to_proto(history, self.spec.experts_per_layer)
            except ValueError as e:
                raise ValueError(
                    f"plan_source: {e}; the checkpoint's load history does not fit this model"
                ) from None
        if (
            state.get("strategy") == self.spec.strategy
            and digest
            and self.pin
            and digest != self.pin
        ):
            log.warning(
                "plan service: the checkpoint's job trusted the %r plugin with sha256 %s; this "
                "run's plugin has %s (`swiftmoe doctor --checkpoint FILE` compares them)",
                self.spec.strategy,
                digest,
                self.pin,
            )
        return history

    def load_state_dict(self, state: Any, placement: Sequence[Sequence[int]]) -> None:
        """Registers the job again with the placement being restored and the checkpoint's load
        history, so that it plans as the job that saved the state would have. ValueError, with
        nothing changed, when the state does not fit the job or the sidecar refuses it; a
        sidecar that cannot be reached gets both when the worker next registers the job."""
        history = self._checked_history(state)
        slots = [list(s) for s in placement]
        spec = replace(self.spec, current_slots=slots, history=history)
        if not self._wait_idle(self.rpc_timeout_s + 1.0):
            log.warning("plan service: a report still runs while the checkpoint is restored")
        with self._rpc:
            try:
                reg = self._job.register(spec, self.rpc_timeout_s)
            except SidecarError as e:
                if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(
                        f"plan_source: the sidecar refused the checkpoint's state: {e}"
                    ) from None
                self._resume_history = history
                self._healthy, self._next_attempt = False, 0.0
                self._need_restart = e.code in _RESTART_CODES
                log.warning(
                    "plan service: job %s: restoring the checkpoint on the sidecar failed (%s); "
                    "the placement and load history go with the next registration",
                    self.job_id,
                    e,
                )
            else:
                self._healthy, self._resume_history = True, None
                self._adopt(reg)
            with self._cv:
                # Plans answered for the iterations before the restore are not in force.
                self._pending, self._result, self._result_origin = None, None, None
                self._answered = self._submitted
                self._in_force = slots
                if self._healthy:
                    self.latest = reg.initial_plan
