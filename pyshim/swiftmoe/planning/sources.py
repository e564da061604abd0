"""Plan sources: the planning wing's answers to the engine's ``PlanSource`` protocol.

* :class:`StaticPlanSource`: a fixed placement, or none (keep the one the job started with).
* :class:`WorkerPlanSource`: the submit/poll machinery of a source that plans in one worker
  thread, so that ``submit`` never blocks and ``poll`` never waits past its deadline.
* :class:`CallablePlanSource`: a Python function run in that worker, so that a raising,
  garbage-returning or slow function never stops or corrupts training.

The sidecar-backed source, :class:`swiftmoe.planning.service.PlanService`, is a
``WorkerPlanSource`` too. The protocol and its contract are in ``swiftmoe.engine.plan_source``.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from swiftmoe.engine.plan_source import as_plan

__all__ = ["StaticPlanSource", "CallablePlanSource", "WorkerPlanSource"]

log = logging.getLogger("swiftmoe.plan_source")


class StaticPlanSource:
    """Always answers ``plan`` (or ``None``: keep the placement the job started with)."""

    def __init__(self, plan: Sequence[Sequence[int]] | None = None) -> None:
        self._plan = None if plan is None else as_plan(plan)

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        return None

    def poll(self, deadline_s: float) -> list[list[int]] | None:
        return None if self._plan is None else [list(p) for p in self._plan]


class WorkerPlanSource:
    """The submit/poll machinery of a plan source that plans in one worker thread.

    ``submit`` hands the latest loads to the worker (a newer submission replaces a pending one)
    and never blocks or raises; ``poll(deadline_s)`` waits at most ``deadline_s`` for the answer
    to the latest submission and returns the newest answer not yet returned, or ``None``.
    Subclasses implement ``_plan(iteration, loads_LE)`` (per-layer slots or ``None``; it runs in
    the worker and must not raise), start the worker with ``_start_worker(name)`` and stop it
    with ``_stop_worker(timeout_s)``. ``events`` counts what happened, ``last_error`` says the
    latest failure.
    """

    _log_prefix = "plan source"

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: tuple[int, list[list[int]]] | None = None
        self._result: list[list[int]] | None = None
        self._submitted = 0
        self._answered = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        #: The newest plan ``poll`` returned: the placement the engine adopted.
        self._in_force: list[list[int]] | None = None
        self.events: collections.Counter[str] = collections.Counter(submitted=0, planned=0)
        self.last_error = ""

    def _plan(self, iteration: int, loads_LE: list[list[int]]) -> list[list[int]] | None:
        raise NotImplementedError

    def _start_worker(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _stop_worker(self, timeout_s: float) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=timeout_s)

    def _note(self, kind: str, msg: str) -> None:
        with self._cv:
            self.events[kind] += 1
            self.last_error = msg
        log.warning("%s: %s", self._log_prefix, msg)

    def submit(self, iteration: int, loads_LE: Any) -> None:
        """Queues iteration's loads for the worker; never blocks, never raises."""
        try:
            loads = [
                [int(v) for v in (row.tolist() if hasattr(row, "tolist") else row)]
                for row in loads_LE
            ]
        except (TypeError, ValueError) as e:
            self._note("bad_input", f"submit: loads_LE is not a list of integer lists: {e}")
            return
        with self._cv:
            if self._closed:
                return
            self._pending = (int(iteration), loads)
            self._submitted += 1
            self.events["submitted"] += 1
            self._cv.notify_all()

    def poll(self, deadline_s: float) -> list[list[int]] | None:
        """The newest plan not yet returned, waiting at most ``deadline_s``; else ``None``."""
        try:
            end = time.monotonic() + max(0.0, float(deadline_s))
        except (TypeError, ValueError):
            end = time.monotonic()
        with self._cv:
            while self._answered < self._submitted and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            out, self._result = self._result, None
            if out is not None:
                self._in_force = out
            return out

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                iteration, loads = self._pending
                self._pending = None
                ticket = self._submitted
            plan = self._plan(iteration, loads)
            with self._cv:
                if plan is not None:
                    self._result = plan
                    self.events["planned"] += 1
                self._answered = max(self._answered, ticket)
                self._cv.notify_all()


class CallablePlanSource(WorkerPlanSource):
    """Plans with ``fn(iteration, loads_LE) -> per-layer slots | None`` in a worker thread.

    ``submit``/``poll`` are those of :class:`WorkerPlanSource`. A function that raises or
    returns something that is not a list of integer lists is logged and counted in ``events``
    ("raised", "garbage"); a slow one only delays its plan. ``close()`` stops the worker (a
    function stuck forever keeps a daemon thread, never the process).
    """

    def __init__(self, fn: Callable[[int, list[list[int]]], Any], name: str = "") -> None:
        if not callable(fn):
            raise ValueError(
                f"CallablePlanSource: fn must be callable as fn(iteration, loads_LE), got "
                f"{type(fn).__name__}"
            )
        super().__init__()
        self._fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self._log_prefix = f"plan source {self.name}"
        self.events.update(raised=0, garbage=0)
        self._start_worker(f"swiftmoe-plan-{self.name}")

    def close(self) -> None:
        self._stop_worker(timeout_s=1.0)

    def _plan(self, iteration: int, loads_LE: list[list[int]]) -> list[list[int]] | None:
        try:
            raw = self._fn(iteration, loads_LE)
        except Exception as e:  # the user's function must never stop training
            self._note("raised", f"{self.name} raised {type(e).__name__}: {e}")
            return None
        if raw is None:
            return None
        try:
            return as_plan(raw)
        except ValueError as e:
            self._note("garbage", f"{self.name} returned garbage: {e}")
            return None
