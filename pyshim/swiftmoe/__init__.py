"""SwiftMoE: adaptive expert replication for Mixture-of-Experts training.

One in-place call takes over the MoE blocks of an existing PyTorch model::

    import swiftmoe
    handle = swiftmoe.replicate_(model, swiftmoe.SwiftMoEConfig(slots_per_rank=4))
    ...
    loss.backward(); optimizer.step(); handle.step()
    optimizer.zero_grad(); handle.zero_grad()

See README.md for adoption step by step (observe, then replicate).

The public names are imported on first use, so ``import swiftmoe`` stays cheap for the CLI and
the sidecar client, which do not need torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "replicate_": ("swiftmoe.api", "replicate_"),
    "SwiftMoEHandle": ("swiftmoe.engine.handle", "SwiftMoEHandle"),
    "StepStats": ("swiftmoe.engine.stats", "StepStats"),
    "find_moe_blocks": ("swiftmoe.engine.blocks", "find_moe_blocks"),
    "SwiftMoEConfig": ("swiftmoe.engine.config", "SwiftMoEConfig"),
    "PlanSource": ("swiftmoe.engine.plan_source", "PlanSource"),
    "CallablePlanSource": ("swiftmoe.planning.sources", "CallablePlanSource"),
    "StaticPlanSource": ("swiftmoe.planning.sources", "StaticPlanSource"),
    "MoEAdapter": ("swiftmoe.adapters", "MoEAdapter"),
    "register_adapter": ("swiftmoe.adapters", "register_adapter"),
    "adapters": ("swiftmoe.adapters", None),
    "nn": ("swiftmoe.nn", None),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'swiftmoe' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
