"""The handle ``replicate_`` returns: the public calls of a training job, delegated to the mode.

    handle.step()          expert optimizer step + remap (replicate) or loads and plans (observe)
    handle.zero_grad()     clear the slot gradients
    handle.state_dict()    this rank's sharded expert weights and optimizer state
    handle.export_to(m)    full expert weights into an unpatched model
    handle.close()         stop the planner the handle started

The handle builds nothing: ``swiftmoe.engine.replicate`` builds the layers, the optimizer and
the plan channel, and hands them over as a :class:`~swiftmoe.engine.modes.ReplicateRun` or
:class:`~swiftmoe.engine.modes.ObserveRun`.

Shape legend: L MoE layers, K = N*S slots of a layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from swiftmoe.engine import checkpoint as ckpt
from swiftmoe.engine.config import SwiftMoEConfig
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.modes import ObserveRun, ReplicateRun
from swiftmoe.engine.plan_source import PlanSource
from swiftmoe.engine.stats import DROPPED_BUFFER, LOADS_BUFFER, StepStats

__all__ = ["SwiftMoEHandle"]


class SwiftMoEHandle:
    """What ``replicate_`` returns: the expert optimizer, placement, stats and checkpoints.

    Attributes:
        model, config, comm: the model, its configuration (``slots_per_rank`` as chosen when it
            was "auto") and the engine's place in its process group.
        plan_source: the source rank 0 asks for plans (None on other ranks when the handle
            started it, and None when there is none).
        ranks_per_node: ranks per node the split groups by (0: no node preference).
        last_stats: what the latest ``step()`` saw.
    """

    def __init__(
        self,
        model: nn.Module,
        config: SwiftMoEConfig,
        comm: Comm,
        run: ReplicateRun | ObserveRun,
        plan_source: PlanSource | None,
        owns_source: bool,
        ranks_per_node: int,
    ) -> None:
        self.model, self.config, self.comm = model, config, comm
        self.plan_source = plan_source
        self.ranks_per_node = ranks_per_node
        self.last_stats: StepStats | None = None
        self._run = run
        self._owns_source = owns_source

    def close(self) -> None:
        """Stop the sidecar-backed planner this handle started (idempotent)."""
        if self._owns_source and self.plan_source is not None:
            self.plan_source.close()
            self.plan_source = None

    # ---- properties -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._run.mode

    @property
    def layers(self) -> list:
        """The MoE layers the engine runs, in model order (each with its ``fqn``)."""
        return self._run.layers

    @property
    def placement(self) -> list[list[int]]:
        """The placement in force, per layer slots_K."""
        return self._run.placement

    @property
    def iteration(self) -> int:
        """The iteration the next ``step()`` ends."""
        return self._run.iteration

    @property
    def plan_events(self) -> dict[str, int]:
        """Plan outcomes so far, by kind ("accepted", "kept", "rejected", "error", "none")."""
        return self._run.channel.events

    # ---- the step -----------------------------------------------------------------------------

    def step(self) -> StepStats:
        """Expert optimizer step, then the remap to the next placement (a collective)."""
        self.last_stats = self._run.step()
        return self.last_stats

    def zero_grad(self) -> None:
        """Clear the slot gradients (the expert half of ``optimizer.zero_grad``)."""
        self._run.zero_grad()

    # ---- the user's dense side ----------------------------------------------------------------

    def dense_parameters(self, model: nn.Module | None = None) -> Iterator[nn.Parameter]:
        """The parameters the user's optimizer and DDP keep (in replicate mode, all that remain
        on the model; in observe mode, all of them, experts included)."""
        return (model or self.model).parameters()

    def ddp_ignore(self, model: nn.Module | None = None) -> list[str]:
        """Make DDP leave SwiftMoE's per-rank statistics buffers alone; call before wrapping.

        Expert parameters are no longer on the model in replicate mode, so DDP never sees them;
        what remains is the load buffers, which differ per rank and must not be broadcast.
        Returns the names set to be ignored.
        """
        model = model or self.model
        names = [
            name
            for name, _ in model.named_buffers()
            if name.rsplit(".", 1)[-1] in (LOADS_BUFFER, DROPPED_BUFFER)
        ]
        prior = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, sorted(set(prior) | set(names))
        )
        return names

    # ---- checkpoints --------------------------------------------------------------------------

    def _checkpoint_view(self, what: str) -> ckpt.CheckpointView:
        run = self._run
        if not isinstance(run, ReplicateRun):
            raise ValueError(
                f"{what}: observe mode keeps the expert weights in the model; use "
                "model.state_dict() (mode='replicate' gives the sharded checkpoint)"
            )
        return ckpt.CheckpointView(
            world_size=self.comm.world_size,
            rank=self.comm.rank,
            slots_per_rank=self.config.slots_per_rank,
            layers=run.layers,
            optimizer=run.optimizer,
            install=run.install,
        )

    def state_dict(self) -> dict[str, Any]:
        """This rank's sharded expert weights, optimizer state, placement and iteration."""
        return ckpt.sharded_state(self._checkpoint_view("state_dict"), self.iteration)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` of the same rank (a collective: every rank calls it)."""
        view = self._checkpoint_view("load_state_dict")
        self._run.iteration = ckpt.load_sharded_state(view, state)

    def export_expert_weights(self) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        """Full fp32 expert weights, {block fqn: per expert, tensors in expert_spec order}.
        A collective: every rank calls it and gets the same."""
        return ckpt.consolidated(self._checkpoint_view("export_expert_weights"))

    def export_to(self, model: nn.Module) -> None:
        """Write the full expert weights into an unpatched model of the same architecture."""
        ckpt.export_to(self.export_expert_weights(), self.layers, model)
