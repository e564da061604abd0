"""Plan sources: where the engine's next expert placement comes from.

A plan source is asked by rank 0 only. The engine calls

* ``submit(iteration, loads_LE)`` once per iteration, as soon as every MoE layer has its global
  token counts (so the source can plan while backward runs). It must not block.
* ``poll(deadline_s)`` at the remap of ``step()``: the next placement, per MoE layer a list of
  N*S expert ids, or ``None`` to keep the current placement. ``deadline_s`` is the longest time
  in seconds ``poll`` may wait. It must never raise; the engine validates whatever comes back,
  and rejects an invalid plan with a logged reason.

Sources here: :class:`StaticPlanSource` (a fixed placement, or none) and
:class:`CallablePlanSource`, which runs a Python function in a worker thread so that a raising,
garbage-returning or slow function never stops or corrupts training. ``swiftmoe.sidecar``
provides the sidecar-backed source with the same two methods.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["PlanSource", "StaticPlanSource", "CallablePlanSource", "as_plan"]

log = logging.getLogger("swiftmoe.plan_source")


@runtime_checkable
class PlanSource(Protocol):
    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None: ...

    def poll(self, deadline_s: float) -> list[list[int]] | None: ...


def as_plan(obj: Any) -> list[list[int]]:
    """``obj`` as a list of per-layer lists of ints; ValueError naming the bad entry otherwise.

    Accepts nested sequences and tensors. Range and coverage checks are the engine's job
    (``swiftmoe.plan.validate_slots``); this only checks the structure.
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
            if isinstance(e, bool) or not isinstance(e, int):
                raise ValueError(f"plan layer {li} slot {k} is {e!r}, want an integer expert id")
            ids.append(int(e))
        out.append(ids)
    return out


class StaticPlanSource:
    """Always answers ``plan`` (or ``None``: keep the placement the job started with)."""

    def __init__(self, plan: Sequence[Sequence[int]] | None = None) -> None:
        self._plan = None if plan is None else as_plan(plan)

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        return None

    def poll(self, deadline_s: float) -> list[list[int]] | None:
        return None if self._plan is None else [list(p) for p in self._plan]


class CallablePlanSource:
    """Plans with ``fn(iteration, loads_LE) -> per-layer slots | None`` in a worker thread.

    ``submit`` hands the latest loads to the worker (a newer submit replaces a pending one);
    ``poll(deadline_s)`` waits at most ``deadline_s`` for the answer to the latest submission
    and returns the newest answer not yet returned, or ``None``. A function that raises or
    returns something that is not a list of integer lists is logged and counted in ``events``;
    a slow one only delays its plan. ``close()`` stops the worker (a function stuck forever keeps
    a daemon thread, never the process).
    """

    def __init__(self, fn: Callable[[int, list[list[int]]], Any], name: str = "") -> None:
        if not callable(fn):
            raise ValueError(
                f"CallablePlanSource: fn must be callable as fn(iteration, loads_LE), got "
                f"{type(fn).__name__}"
            )
        self._fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self._cv = threading.Condition()
        self._pending: tuple[int, list[list[int]]] | None = None
        self._result: list[list[int]] | None = None
        self._submitted = -1
        self._answered = -1
        self._closed = False
        self.events: dict[str, int] = {"submitted": 0, "planned": 0, "raised": 0, "garbage": 0}
        self.last_error: str = ""
        self._thread = threading.Thread(
            target=self._run, name=f"swiftmoe-plan-{self.name}", daemon=True
        )
        self._thread.start()

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        loads = [list(map(int, row)) for row in loads_LE]
        with self._cv:
            self._pending = (int(iteration), loads)
            self._submitted += 1
            self.events["submitted"] += 1
            self._cv.notify_all()

    def poll(self, deadline_s: float) -> list[list[int]] | None:
        end = time.monotonic() + max(0.0, float(deadline_s))
        with self._cv:
            while self._answered < self._submitted and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            out, self._result = self._result, None
            return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=1.0)

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
            plan, kind, err = None, "planned", ""
            try:
                raw = self._fn(iteration, loads)
            except Exception as e:  # the user's function must never stop training
                raw, kind = None, "raised"
                err = f"{self.name} raised {type(e).__name__}: {e}"
            if raw is not None:
                try:
                    plan = as_plan(raw)
                except ValueError as e:
                    kind, err = "garbage", f"{self.name} returned garbage: {e}"
            if err:
                log.warning("plan source %s", err)
            with self._cv:
                self.events[kind] += 1
                if err:
                    self.last_error = err
                if plan is not None:
                    self._result = plan
                self._answered = max(self._answered, ticket)
                self._cv.notify_all()
