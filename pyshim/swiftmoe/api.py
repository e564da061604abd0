"""Where the wings meet: ``swiftmoe.replicate_`` is the engine's ``replicate_`` with the planning
wing's plan-source factory.

    import swiftmoe
    handle = swiftmoe.replicate_(model, swiftmoe.SwiftMoEConfig(slots_per_rank=4,
                                 optimizer="AdamW", optimizer_kwargs={"lr": 1e-3}))
    dense_opt = torch.optim.AdamW(handle.dense_parameters(), lr=1e-3)
    for batch in data:
        loss = model(batch).mean(); loss.backward()        # DDP/FSDP averages dense grads
        dense_opt.step(); handle.step()                     # expert step + remap
        dense_opt.zero_grad(); handle.zero_grad()

The engine (``swiftmoe.engine``) never imports the planning wing; this module is the one place
that gives it the factory (``swiftmoe.planning.factory.plan_source_for``), which starts a
sidecar only when ``config.strategy`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from swiftmoe.engine.blocks import find_moe_blocks
from swiftmoe.engine.config import SwiftMoEConfig
from swiftmoe.engine.handle import SwiftMoEHandle
from swiftmoe.engine.replicate import replicate_ as _replicate_
from swiftmoe.engine.stats import StepStats
from swiftmoe.planning.factory import plan_source_for

__all__ = ["replicate_", "SwiftMoEHandle", "StepStats", "find_moe_blocks"]


def replicate_(
    model: nn.Module,
    config: SwiftMoEConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> SwiftMoEHandle:
    """Take over the MoE blocks of ``model`` in place and return the handle that trains them.

    Replicate mode moves the expert parameters out of the model (the user's optimizer and DDP
    no longer see them) into slot weights and a sharded expert optimizer; initial weights come
    from rank 0. Observe mode leaves the model's math and parameters alone and records loads.
    ``filter_fn(module, fqn)`` excludes blocks. With ``config.strategy`` set, rank 0 starts the
    bundled sidecar (or attaches to ``config.sidecar_address``) and plans through it.
    Every check runs before the first collective; bad input raises ValueError naming the field.
    """
    return _replicate_(model, config, filter_fn, plan_sources=plan_source_for)
