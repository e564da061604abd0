"""Rank 0's conversation with the plan source, and the broadcast that makes every rank adopt the
same plan.

Shape legend: L MoE layers, E experts of a layer, N ranks, S slots per rank, K = N*S slots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from swiftmoe.engine import plan as planlib
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.plan_source import PlanSource, as_plan

__all__ = ["PlanChannel"]

log = logging.getLogger("swiftmoe")


class PlanChannel:
    """The engine's side of a ``PlanSource``: submit loads, agree on the next placement.

    Only rank 0 talks to the source (``source`` is None elsewhere, and everywhere when the job
    has no source). Nothing the source does stops training: exceptions become plan events
    ("error"), invalid plans are rejected with the reason ("rejected"), and ``events`` counts
    every outcome by kind.

    Args:
        source: the plan source (rank 0), or None.
        comm: the engine's collectives.
        layers: (fqn, E) of every MoE layer, for validation and messages.
        slots_per_rank: S.
        deadline_s: the longest ``poll`` may wait.
        device: where the broadcast buffer lives (the collectives' device).
    """

    def __init__(
        self,
        source: PlanSource | None,
        comm: Comm,
        layers: Sequence[tuple[str, int]],
        slots_per_rank: int,
        deadline_s: float,
        device: torch.device,
    ) -> None:
        self.source, self.comm = source, comm
        self.layers = list(layers)
        self.S, self.deadline_s, self.device = slots_per_rank, deadline_s, device
        self.events: dict[str, int] = {}

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        """Rank 0 hands an iteration's loads to the source; a no-op elsewhere."""
        if self.comm.rank != 0 or self.source is None:
            return
        try:
            self.source.submit(iteration, loads_LE)
        except Exception as e:  # a plan source must never stop training
            self._event(f"error: submit raised {type(e).__name__}: {e}", iteration)

    def agree(self, iteration: int) -> tuple[str, list[list[int]] | None]:
        """(event, plan): rank 0 polls and validates, the decision is broadcast (a collective)
        so that every rank adopts the same plan, or keeps its placement (plan None)."""
        K = self.comm.world_size * self.S
        L = len(self.layers)
        event, plan = ("", None)
        buf = torch.zeros(1 + L * K, dtype=torch.long, device=self.device)
        if self.comm.rank == 0:
            event, plan = self._poll()
            if plan is not None:
                buf[0] = 1
                buf[1:] = torch.tensor(plan, dtype=torch.long).reshape(-1)
        self.comm.broadcast_(buf)
        if self.comm.rank != 0:
            if int(buf[0]) == 1:
                plan = buf[1:].view(L, K).tolist()
                event = "accepted"
            else:
                event = "kept"
        return self._event(event, iteration), plan

    def _poll(self) -> tuple[str, list[list[int]] | None]:
        """Rank 0: the next placement from the source, validated, or None."""
        src = self.source
        if src is None:
            return "none", None
        try:
            raw = src.poll(self.deadline_s)
        except Exception as e:
            return f"error: poll raised {type(e).__name__}: {e}", None
        if raw is None:
            return "kept", None
        try:
            plan = as_plan(raw)
            if len(plan) != len(self.layers):
                raise ValueError(f"{len(plan)} layers, the model has {len(self.layers)} MoE blocks")
            for li, (slots, (fqn, E)) in enumerate(zip(plan, self.layers, strict=True)):
                try:
                    planlib.validate_slots(slots, E, self.comm.world_size, self.S)
                except ValueError as e:
                    raise ValueError(f"layer {li} ({fqn}): {e}") from e
        except ValueError as e:
            return f"rejected: {e}", None
        return "accepted", plan

    def _event(self, event: str, iteration: int) -> str:
        key = event.split(":", 1)[0]
        self.events[key] = self.events.get(key, 0) + 1
        if key in ("rejected", "error"):
            log.warning("swiftmoe: plan %s (iteration %d)", event, iteration)
        return event
