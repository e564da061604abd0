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
from swiftmoe.engine.plan_source import PlanOrigin, PlanSource, as_plan

__all__ = ["PlanChannel"]

# The first entry of the plan broadcast: 0 no plan, else how it was adopted.
_ACCEPTED, _FALLBACK = 1, 2

log = logging.getLogger("swiftmoe")


class PlanChannel:
    """The engine's side of a ``PlanSource``: submit loads, agree on the next placement.

    Only rank 0 talks to the source (``source`` is None elsewhere, and everywhere when the job
    has no source). Nothing the source does stops training: exceptions become plan events
    ("error"), invalid plans are rejected with the reason ("rejected"), a plan the source marks
    as a fallback (its ``origin``) is adopted as event "fallback" on every rank, and ``events``
    counts every outcome by kind. ``origin`` is, on rank 0, where the latest agreed plan came
    from (None when the source does not say).

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
        self.origin: PlanOrigin | None = None
        self.note_ns = 0  # rank 0's note of the latest agree()

    def submit(self, iteration: int, loads_LE: list[list[int]]) -> None:
        """Rank 0 hands an iteration's loads to the source; a no-op elsewhere."""
        if self.comm.rank != 0 or self.source is None:
            return
        try:
            self.source.submit(iteration, loads_LE)
        except Exception as e:  # a plan source must never stop training
            self._event(f"error: submit raised {type(e).__name__}: {e}", iteration)

    def agree(self, iteration: int, note_ns: int = 0) -> tuple[str, list[list[int]] | None]:
        """(event, plan): rank 0 polls and validates, the decision is broadcast (a collective)
        so that every rank adopts the same plan, or keeps its placement (plan None).

        ``note_ns``: rank 0's figure that every rank must use alike (the burst decision's host
        time in ns, ``burst_run.BurstPolicy.note_ms``), broadcast with the plan; every rank
        finds it in ``self.note_ns`` afterwards. Other ranks' ``note_ns`` is ignored."""
        K = self.comm.world_size * self.S
        L = len(self.layers)
        event, plan = ("", None)
        buf = torch.zeros(2 + L * K, dtype=torch.long, device=self.device)
        if self.comm.rank == 0:
            event, plan, self.origin = self._poll()
            buf[-1] = int(note_ns)
            if plan is not None:
                buf[0] = _FALLBACK if event == "fallback" else _ACCEPTED
                buf[1:-1] = torch.tensor(plan, dtype=torch.long).reshape(-1)
        self.comm.broadcast_(buf)
        if self.comm.rank != 0:
            flag, self.note_ns = buf[0 :: 1 + L * K].tolist()
            if flag:
                plan = buf[1:-1].view(L, K).tolist()
                event = "fallback" if flag == _FALLBACK else "accepted"
            else:
                event = "kept"
        else:
            self.note_ns = int(note_ns)
        return self._event(event, iteration), plan

    def _poll(self) -> tuple[str, list[list[int]] | None, PlanOrigin | None]:
        """Rank 0: the next placement from the source, validated, or None; and its origin."""
        src = self.source
        if src is None:
            return "none", None, None
        try:
            raw = src.poll(self.deadline_s)
        except Exception as e:
            return f"error: poll raised {type(e).__name__}: {e}", None, None
        if raw is None:
            return "kept", None, None
        origin = getattr(src, "origin", None)
        if not isinstance(origin, PlanOrigin):
            origin = None
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
            return f"rejected: {e}", None, origin
        return ("fallback" if origin is not None and origin.fallback else "accepted"), plan, origin

    def _event(self, event: str, iteration: int) -> str:
        key = event.split(":", 1)[0]
        self.events[key] = self.events.get(key, 0) + 1
        if key in ("rejected", "error"):
            log.warning("swiftmoe: plan %s (iteration %d)", event, iteration)
        return event
