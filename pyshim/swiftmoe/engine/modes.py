"""The two modes behind the handle's calls: each runs ``step()`` and ``zero_grad()`` its way.

* :class:`ReplicateRun`: the expert layers, the sharded expert optimizer and the remap; rank 0
  submits the loads as soon as every layer has them (while backward runs).
* :class:`ObserveRun`: the model's math untouched; ``step()`` all-reduces the recorded loads,
  submits them and logs what the placement in force and the planned one would give.

Both hold the iteration count and a :class:`~swiftmoe.engine.plans.PlanChannel`.

Shape legend: L MoE layers, E experts of a layer, N ranks, S slots per rank, K = N*S slots,
P elements of one expert.
"""

from __future__ import annotations

import logging

import torch

from swiftmoe.engine import plan as planlib
from swiftmoe.engine.burst_run import BurstPolicy
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.layer import ExpertLayer
from swiftmoe.engine.observed import ObservedLayer
from swiftmoe.engine.optim import ShardedExpertOptimizer
from swiftmoe.engine.plans import PlanChannel
from swiftmoe.engine.splitter import RankSplitter
from swiftmoe.engine.stats import StepStats, dropped_of, loads_of, reset_stats
from swiftmoe.engine.step_costs import StepCosts

__all__ = ["ObserveRun", "ReplicateRun"]

log = logging.getLogger("swiftmoe")


class ReplicateRun:
    """Replicate mode: expert layers on slots, the sharded optimizer, the remap each step."""

    mode = "replicate"

    def __init__(
        self,
        layers: list[ExpertLayer],
        optimizer: ShardedExpertOptimizer,
        channel: PlanChannel,
        dtype: torch.dtype,
        anchor: torch.Tensor | None = None,
    ) -> None:
        self.layers, self.optimizer, self.channel, self.dtype = layers, optimizer, channel, dtype
        #: The layers' shared autograd anchor (``LayerContext.anchor``): a backward through the
        #: expert layers gives it a gradient on every rank.
        self.anchor = anchor
        self.iteration = 0
        self._reported: set[int] = set()
        self._submitted = False
        #: The burst policy (its decision gate), or None without burst replicas.
        self.bursts: BurstPolicy | None = None

    @property
    def placement(self) -> list[list[int]]:
        return [list(layer.slots) for layer in self.layers]

    def on_loads(self, index: int) -> None:
        """A layer has this iteration's global loads: submit them once all layers have."""
        self._reported.add(index)
        if self._submitted or len(self._reported) < len(self.layers):
            return
        self._submitted = True
        self.channel.submit(self.iteration, [loads_of(la.block).tolist() for la in self.layers])

    def backward_ran(self) -> bool:
        """Whether a backward reached the expert layers since the last step: the anchor of
        their collectives has a gradient (on every rank alike), or, on one rank, a slot weight
        has one. Slot weights are fresh leaves after every step, so no gradient is stale."""
        if self.anchor is not None and self.anchor.grad is not None:
            return True
        return any(t.grad is not None for layer in self.layers for t in layer.leaves())

    def step(self) -> StepStats:
        """Expert optimizer step, then the remap to the next placement (a collective).

        Without a backward since the last step the expert optimizer does not step (no weight
        moves, as torch optimizers skip parameters without gradients); the plan and the remap
        run as usual. An expert that got no tokens in a step with a backward does step, with a
        zero gradient (weight decay and momentum apply), as a stacked-parameter model would."""
        opt = self.optimizer
        stepped = self.backward_ran()
        if stepped:
            # In the slots' dtype: the exchange's layout copy casts them to fp32 on its way.
            grads_L = [layer.slot_grads(self.dtype) for layer in self.layers]
            opt.reduce_grads(grads_L, [layer.slots_t for layer in self.layers])
            opt.step()
        bursts = self.bursts
        # in ns, at most 1e9 ms (about 11 days: every decision is stopped well before that)
        note = 0 if bursts is None else round(1e6 * min(bursts.note_ms(), 1e9))
        event, plan = self.channel.agree(self.iteration, note)
        if bursts is not None:  # every rank gates the next iteration's decisions alike
            bursts.next_iteration(self.channel.note_ns / 1e6)
        old = self.placement
        new = plan if plan is not None else old
        origin = self.channel.origin
        loads_LE, dropped_L = self._loads_and_dropped()
        stats = StepStats(
            iteration=self.iteration,
            loads_LE=loads_LE,
            max_over_mean_L=[layer.last_max_over_mean for layer in self.layers],
            dropped_L=dropped_L,
            plan_event=event,
            placement_changed=new != old,
            plan_events=dict(self.channel.events),
            plan_source=origin.source if origin is not None else "",
            plan_note=origin.note if origin is not None else "",
            expert_step=stepped,
            bursts_L=[layer.bursts_made for layer in self.layers],
            node_local_L=[layer.node_local_calls for layer in self.layers],
        )
        if bursts is not None:
            got = [bursts.gate.counts.get(layer.index, (0, 0)) for layer in self.layers]
            stats.decisions_L = [ran for ran, _ in got]
            stats.stopped_L = [stopped for _, stopped in got]
            stats.decision_ms = bursts.gate.decision_ms
        self.install(new)
        self.end_iteration()
        return stats

    def _loads_and_dropped(self) -> tuple[list[list[int]], list[int]]:
        """Every layer's load and dropped counters, read in one copy to the host."""
        parts = []
        for layer in self.layers:
            parts += [loads_of(layer.block).reshape(-1), dropped_of(layer.block).reshape(-1)]
        flat = torch.cat(parts).cpu().tolist() if parts else []
        loads_LE, dropped_L, off = [], [], 0
        for layer in self.layers:
            loads_LE.append(flat[off : off + layer.E])
            dropped_L.append(int(flat[off + layer.E]))
            off += layer.E + 1
        return loads_LE, dropped_L

    def install(self, slots_L: list[list[int]]) -> None:
        """Remap the master shards to ``slots_L`` (a collective) and make it current."""
        slots_t = [layer.slots_on_device(s) for layer, s in zip(self.layers, slots_L, strict=True)]
        flats = self.optimizer.remap(slots_t, self.dtype)
        for layer, slots, flat in zip(self.layers, slots_L, flats, strict=True):
            layer.set_slots(slots, flat)

    def end_iteration(self) -> None:
        for layer in self.layers:
            reset_stats(layer.block)
            layer.bursts_made = 0
            layer.node_local_calls = 0
        self._reported.clear()
        self._submitted = False
        if self.anchor is not None:
            self.anchor.grad = None
        self.iteration += 1

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.zero_grad()


class ObserveRun:
    """Observe mode: loads recorded by forward pre-hooks, the plans logged, never applied."""

    mode = "observe"

    def __init__(
        self,
        layers: list[ObservedLayer],
        channel: PlanChannel,
        comm: Comm,
        splitter: RankSplitter,
        device: torch.device,
        costs: StepCosts | None = None,
    ) -> None:
        self.layers, self.channel, self.comm = layers, channel, comm
        self.splitter, self.device, self.costs = splitter, device, costs
        self.iteration = 0
        self._pending_plan: list[list[int]] | None = None

    @property
    def placement(self) -> list[list[int]]:
        return [list(layer.slots) for layer in self.layers]

    def _cost(self, layer: ObservedLayer):
        """The layer's cost parameters for the what-if split, or None (nothing priced, or the
        layer's sizes unknown)."""
        if self.costs is None or not layer.expert_numel or not layer.token_bytes:
            return None
        return self.costs.params(layer.expert_numel, layer.weight_bytes, layer.token_bytes)

    def step(self) -> StepStats:
        N, r = self.comm.world_size, self.comm.rank
        parts = []
        for layer in self.layers:
            m = torch.zeros(N, layer.E, dtype=torch.long, device=self.device)
            m[r] = loads_of(layer.block)
            parts.append(m.reshape(-1))
        flat = self.comm.all_reduce_(torch.cat(parts)).cpu()
        counts_L, off = [], 0
        for layer in self.layers:
            counts_L.append(flat[off : off + N * layer.E].view(N, layer.E))
            off += N * layer.E
        loads = [c.sum(0).tolist() for c in counts_L]

        # The split replicate mode would run: its stage 1 priced on several nodes.
        cost_L = [self._cost(layer) for layer in self.layers]

        def mom(slots_L):
            return [
                planlib.max_over_mean(self.splitter.rank_loads(c, s, cost))
                for c, s, cost in zip(counts_L, slots_L, cost_L, strict=True)
            ]

        predicted = mom(self._pending_plan) if self._pending_plan is not None else None
        stats = StepStats(
            iteration=self.iteration,
            loads_LE=loads,
            max_over_mean_L=mom(self.placement),
            dropped_L=[0] * len(self.layers),
            plan_event="",
            predicted_max_over_mean_L=predicted,
        )
        self.channel.submit(self.iteration, loads)
        event, plan = self.channel.agree(self.iteration)
        if plan is not None:
            self._pending_plan = plan
        stats.plan_event = event
        stats.plan_events = dict(self.channel.events)
        if self.channel.origin is not None:
            stats.plan_source, stats.plan_note = (
                self.channel.origin.source,
                self.channel.origin.note,
            )
        if r == 0:
            log.info(
                "swiftmoe observe: iteration %d max_over_mean %s, with the planned placement %s",
                self.iteration,
                [round(x, 3) for x in stats.max_over_mean_L],
                None if predicted is None else [round(x, 3) for x in predicted],
            )
        self.end_iteration()
        return stats

    def end_iteration(self) -> None:
        for layer in self.layers:
            reset_stats(layer.block)
        self.iteration += 1

    def zero_grad(self) -> None:
        """Nothing: the expert weights stay in the model and the user's optimizer."""
