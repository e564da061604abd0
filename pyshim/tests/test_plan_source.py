"""Plan sources: the callable source in its worker thread, the static source."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from swiftmoe.engine.plan_source import as_plan
from swiftmoe.planning.sources import CallablePlanSource, StaticPlanSource

LOADS = [[5, 1, 0, 2], [1, 1, 1, 1]]
PLAN = [[0, 1, 2, 3, 0, 0], [3, 2, 1, 0, 1, 2]]


def test_callable_source_plans_from_the_submitted_loads() -> None:
    seen = []

    def fn(iteration, loads):
        seen.append((iteration, loads))
        return PLAN

    src = CallablePlanSource(fn)
    try:
        assert src.poll(0.0) is None  # nothing submitted yet
        src.submit(7, LOADS)
        assert src.poll(5.0) == PLAN
        assert seen == [(7, LOADS)]
        assert src.poll(0.0) is None  # an answer is returned once
        assert src.events["planned"] == 1
    finally:
        src.close()


@pytest.mark.parametrize(
    "ret",
    ["abc", 5, [[0, "x"]], [[0, 1.5]], [0, 1, 2], [[True, 0]]],
)
def test_garbage_is_counted_and_gives_no_plan(ret) -> None:
    src = CallablePlanSource(lambda it, loads: ret)
    try:
        src.submit(0, LOADS)
        assert src.poll(5.0) is None
        assert src.events["garbage"] == 1 and "garbage" in src.last_error
    finally:
        src.close()


def test_raising_function_is_counted_and_the_source_keeps_working() -> None:
    calls = []

    def fn(iteration, loads):
        calls.append(iteration)
        if iteration == 0:
            raise RuntimeError("boom")
        return PLAN

    src = CallablePlanSource(fn)
    try:
        src.submit(0, LOADS)
        assert src.poll(5.0) is None
        assert src.events["raised"] == 1 and "boom" in src.last_error
        src.submit(1, LOADS)
        assert src.poll(5.0) == PLAN
    finally:
        src.close()


def test_slow_function_never_holds_poll_past_its_deadline() -> None:
    release = threading.Event()

    def fn(iteration, loads):
        release.wait(10)
        return PLAN

    src = CallablePlanSource(fn)
    try:
        src.submit(0, LOADS)
        t0 = time.monotonic()
        assert src.poll(0.05) is None
        assert time.monotonic() - t0 < 1.0
        release.set()
        assert src.poll(5.0) == PLAN  # the late answer is used at the next poll
    finally:
        src.close()


def test_newest_submission_replaces_a_pending_one() -> None:
    gate, started = threading.Event(), threading.Event()
    seen = []

    def fn(iteration, loads):
        seen.append(iteration)
        if iteration == 0:
            started.set()
            gate.wait(10)
        return [[iteration]]

    src = CallablePlanSource(fn)
    try:
        src.submit(0, LOADS)
        assert started.wait(5.0)
        src.submit(1, LOADS)
        src.submit(2, LOADS)
        gate.set()
        assert src.poll(5.0) == [[2]]
        assert seen == [0, 2]
    finally:
        src.close()


def test_static_source_and_as_plan() -> None:
    assert StaticPlanSource().poll(0) is None
    src = StaticPlanSource(torch.tensor(PLAN))
    src.submit(0, LOADS)
    assert src.poll(0) == PLAN
    assert as_plan([torch.tensor([1, 2])]) == [[1, 2]]
    with pytest.raises(ValueError, match="layer 0 slot 1"):
        as_plan([[1, None]])
    with pytest.raises(ValueError, match="callable"):
        CallablePlanSource(3)
