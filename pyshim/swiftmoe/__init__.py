"""SwiftMoE: adaptive expert replication for Mixture-of-Experts training.

One in-place call takes over the MoE blocks of an existing PyTorch model::

    import swiftmoe
    handle = swiftmoe.replicate_(model, swiftmoe.SwiftMoEConfig(slots_per_rank=4))
    ...
    loss.backward(); optimizer.step(); handle.step()
    optimizer.zero_grad(); handle.zero_grad()

See README.md for adoption step by step (observe, then replicate).
"""

__version__ = "0.1.0"

from swiftmoe import adapters, nn  # noqa: E402  (registers the built-in adapters)
from swiftmoe.adapters import MoEAdapter, register_adapter  # noqa: E402
from swiftmoe.api import StepStats, SwiftMoEHandle, find_moe_blocks, replicate_  # noqa: E402
from swiftmoe.config import SwiftMoEConfig  # noqa: E402
from swiftmoe.plan_source import CallablePlanSource, PlanSource, StaticPlanSource  # noqa: E402

__all__ = [
    "CallablePlanSource",
    "MoEAdapter",
    "PlanSource",
    "StaticPlanSource",
    "StepStats",
    "SwiftMoEConfig",
    "SwiftMoEHandle",
    "__version__",
    "adapters",
    "find_moe_blocks",
    "nn",
    "register_adapter",
    "replicate_",
]
