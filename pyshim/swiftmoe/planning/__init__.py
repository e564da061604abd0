"""The planning wing: where the engine's next placement comes from.

Modules, one concern each:

* ``sources``: :class:`StaticPlanSource`, :class:`CallablePlanSource` and the worker-thread
  machinery they share (the ``PlanSource`` protocol itself is the engine's, in
  ``swiftmoe.engine.plan_source``);
* ``client``: :class:`SidecarClient`, the gRPC client of the sidecar, with :class:`JobSpec`,
  :class:`Registration` and :class:`SidecarPlan`;
* ``job``: :class:`SidecarJob`, one registered job driven over the client (register, report each
  iteration's loads in order, register again), for live training and for replays of a trace;
* ``binaries``: finding ``swiftmoe-sidecar`` and its plugins;
* ``process``: :class:`ManagedSidecar`, the sidecar process this Python process owns;
* ``service``: :class:`PlanService`, the sidecar-backed plan source of a training job;
* ``factory``: :func:`plan_source_for`, a ``SwiftMoEConfig`` with a ``strategy`` to a started
  ``PlanService`` (the factory ``swiftmoe.replicate_`` hands to the engine);
* ``reference``: the swiftmoe strategy's replica counts and LPT packing in plain Python, for
  tests and benchmarks that run without a sidecar.

The names below are imported on first use, so ``import swiftmoe.planning`` loads neither grpc
nor torch until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module of swiftmoe.planning that defines it
_LAZY = {
    "BINARY_NAME": "binaries",
    "ENV_BINARY": "binaries",
    "ENV_PLUGINS": "binaries",
    "SidecarNotFoundError": "binaries",
    "find_plugins_dir": "binaries",
    "find_sidecar_binary": "binaries",
    "JobSpec": "client",
    "Registration": "client",
    "SidecarClient": "client",
    "SidecarError": "client",
    "SidecarPlan": "client",
    "SidecarJob": "job",
    "ManagedSidecar": "process",
    "PlanService": "service",
    "plan_source_for": "factory",
    "CallablePlanSource": "sources",
    "StaticPlanSource": "sources",
    "WorkerPlanSource": "sources",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'swiftmoe.planning' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"swiftmoe.planning.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
