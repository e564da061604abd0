"""The configuration of ``swiftmoe.replicate_``: a dataclass that validates itself."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from swiftmoe._checks import is_int, is_number
from swiftmoe.engine.plan_source import PlanSource
from swiftmoe.engine.split import RANK_METHODS as SPLIT_METHODS

__all__ = ["SwiftMoEConfig", "resolve_optimizer", "MODES", "SPLIT_METHODS", "AUTO_SLOTS"]

MODES = ("observe", "replicate")
# slots_per_rank="auto": the sidecar picks the slots from its machine's free GPU memory.
AUTO_SLOTS = "auto"
# Optimizers whose update of one element depends on other elements: a sharded step would differ
# (Adafactor's factored second moment averages over rows and columns of the whole tensor).
_NOT_ELEMENTWISE = {"LBFGS", "SparseAdam", "Muon", "Adafactor"}


def resolve_optimizer(optimizer: Any) -> type[torch.optim.Optimizer]:
    """The optimizer class named by ``optimizer`` (a class or a ``torch.optim`` name)."""
    if isinstance(optimizer, str):
        cls = getattr(torch.optim, optimizer, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            known = sorted(
                n
                for n in dir(torch.optim)
                if isinstance(getattr(torch.optim, n), type)
                and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                and n != "Optimizer"
                and n not in _NOT_ELEMENTWISE
            )
            raise ValueError(
                f"optimizer: unknown optimizer {optimizer!r}; name one of {', '.join(known)} "
                "or pass a torch.optim.Optimizer subclass"
            )
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
    else:
        raise ValueError(
            f"optimizer: expected a torch.optim name such as 'AdamW' or an Optimizer subclass, "
            f"got {optimizer!r}"
        )
    if cls.__name__ in _NOT_ELEMENTWISE:
        raise ValueError(
            f"optimizer: {cls.__name__} is not elementwise, so a sharded expert optimizer "
            "cannot reproduce it; use AdamW, Adam, SGD or another elementwise optimizer"
        )
    return cls


@dataclass
class SwiftMoEConfig:
    """What ``replicate_`` does.

    Attributes:
        slots_per_rank: expert slots per rank per MoE layer (S). slots_per_rank * world_size
            must be at least the experts of every layer. "auto" (needs ``strategy``) lets the
            sidecar choose from the free GPU memory of its machine when the job registers: as
            many slots as fit in a share of it (``swiftmoe-sidecar serve
            --slot-memory-fraction``, 0.2 by default), at least enough for every expert;
            ``handle.config.slots_per_rank`` then holds the number chosen.
        mode: "replicate" (full SwiftMoE) or "observe" (the model's math is untouched; loads
            are recorded and the plans the source would make are logged).
        optimizer: the expert optimizer, a ``torch.optim`` name or class (elementwise ones).
        optimizer_kwargs: its keyword arguments (lr, betas, weight_decay, momentum...). On
            CUDA an optimizer that takes ``fused`` (Adam, AdamW, SGD...) runs fused over the
            fp32 master shards unless these name ``fused`` or ``foreach``.
        plan_source: where the next placement comes from (rank 0 asks it); None keeps the
            initial placement for good (static expert parallelism).
        plan_deadline_s: the longest ``step()`` waits for the plan source.
        split_method: how an expert's tokens are split over its replicas, passed to
            ``swiftmoe.engine.split``: "fast" and "exact" even out the ranks' compute (min-max);
            "auto" (the default) is "fast" on one node, and on several nodes the cheaper by the
            step-time cost model (compute + all-to-all, with the bandwidths and throughput
            below) of "fast" and amounts that keep tokens in their node
            (``swiftmoe.engine.split.priced``); "even" is the paper's even split.
        ranks_per_node: ranks per node, so the split prefers same-node replicas; 0 = take
            torchrun's LOCAL_WORLD_SIZE when set, else no node preference.
        capacity_factor: None (dropless, the default) or > 0: each rank keeps at most
            ceil(capacity_factor * T*K / E) of its token assignments per expert and drops the
            rest DeepSpeed-style; dropped assignments are counted in the step stats.
        expert_grad_scale: factor on the summed expert gradients; None means 1/world_size,
            which matches a per-rank mean loss with DDP's gradient averaging.
        initial_slots: per-layer placement to start from; None = static (slot k holds k % E).
        process_group: the group the engine's collectives run on; None = the default group.
            Its timeout bounds every collective.
        strategy: a sidecar strategy name ("swiftmoe", "static", "flexmoe" or a plugin's
            name). When set and plan_source is None, rank 0 starts the bundled sidecar (or
            attaches to sidecar_address), registers the job and asks the strategy for every
            next placement; a dead or hung sidecar is restarted while training goes on.
        strategy_options: the strategy's options (strings), e.g. {"predictor": "ewma"}.
        sidecar_address: attach to a running sidecar ("unix:///path.sock" or
            "tcp://127.0.0.1:PORT") instead of starting one.
        plugins_dir: where the sidecar finds swiftmoe-strategy-NAME plugins (default: the
            bundled ones; the SWIFTMOE_PLUGINS_DIR environment variable also sets it).
        eval_forward_timeout_s: how long a forward of a block in eval mode waits for the other
            ranks to run the same forward (gloo) before raising instead of hanging: every MoE
            forward is a collective, so ``if rank == 0: model.generate(...)`` cannot work.
        burst_slots_per_rank: burst slots per rank per MoE layer (B; 0 turns burst replicas
            off). After a layer's counts are all-reduced, when the split on the planned
            placement leaves the busiest rank above ``burst_threshold`` x the mean, the engine
            copies the most overloaded experts' weights into up to B burst slots per rank on the
            least loaded ranks, when the cost model says the copy pays, and splits over the
            enlarged placement (``swiftmoe.engine.burst``). Gradients reach the shard owners as
            any slot's, so training is the same computation. Not with split_method "even".
            The defaults (1 slot, threshold 1.1) were chosen with scripts/burst_sweep.py: more
            slots gained under 0.2% of step time there, thresholds from 1.0 to 1.3 gained the
            same, and 1.1 lets the decision run on a fifth of the layer calls instead of all.
        burst_threshold: >= 1.0, the busiest rank's load over the mean above which bursts are
            considered.
        burst_decision_ms: the burst decision's host time, which the GPUs wait for, for its
            gate (``swiftmoe.engine.burst_run.DecisionGate``): past the threshold a layer's
            decision stops after pricing the planned split where the planned placement's
            modelled step is within this above the lowest step the layer's recent decisions
            reached, since it cannot be expected to save what it costs there. "auto" (the
            default): rank 0 measures it on its own layer calls and every rank gates with
            rank 0's figure (broadcast with each step's plan); a number of ms fixes it; 0
            turns the gate off (every decision past the threshold runs).
        intra_node_bandwidth, inter_node_bandwidth: link bandwidths in bytes/s for the cost
            model of burst replicas, within a node and between nodes; 0 takes the topology the
            sidecar returns at registration (its hardware discovery), else a default of the
            device (``swiftmoe.engine.burst_run``). With a strategy they are sent to the sidecar
            too.
        expert_flops_per_s: one rank's expert GEMM throughput (forward+backward FLOP/s) for the
            same cost model; 0 takes the device's default (``swiftmoe.engine.burst_run``).
    """

    slots_per_rank: int | str
    mode: str = "replicate"
    optimizer: Any = "AdamW"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    plan_source: PlanSource | None = None
    plan_deadline_s: float = 0.005
    split_method: str = "auto"
    ranks_per_node: int = 0
    capacity_factor: float | None = None
    expert_grad_scale: float | None = None
    initial_slots: list[list[int]] | None = None
    process_group: Any = None
    strategy: str | None = None
    strategy_options: dict[str, str] = field(default_factory=dict)
    sidecar_address: str | None = None
    plugins_dir: str | None = None
    eval_forward_timeout_s: float = 60.0
    burst_slots_per_rank: int = 1
    burst_threshold: float = 1.1
    burst_decision_ms: float | str = "auto"
    intra_node_bandwidth: float = 0.0
    inter_node_bandwidth: float = 0.0
    expert_flops_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and the fix."""
        st = self.strategy
        if st is not None and (not isinstance(st, str) or not st):
            raise ValueError(
                f"strategy: must be None or a strategy name such as 'swiftmoe', got {st!r}"
            )
        if st is not None and self.plan_source is not None:
            raise ValueError(
                "strategy: set either strategy (the sidecar plans) or plan_source, not both"
            )
        opts = self.strategy_options
        if not isinstance(opts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opts.items()
        ):
            raise ValueError(
                "strategy_options: must be a dict of strings such as {'predictor': 'ewma'}, "
                f"got {opts!r}"
            )
        for name in ("sidecar_address", "plugins_dir"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (str, os.PathLike)) or not str(v)):
                raise ValueError(f"{name}: must be None or a non-empty string, got {v!r}")
        S = self.slots_per_rank
        if S == AUTO_SLOTS:
            if st is None:
                raise ValueError(
                    "slots_per_rank: 'auto' asks the sidecar to choose from free GPU memory; "
                    "set strategy (e.g. 'swiftmoe') or give slots_per_rank as an integer"
                )
            if self.initial_slots is not None:
                raise ValueError(
                    "slots_per_rank: 'auto' cannot be combined with initial_slots, whose length "
                    "fixes the slots; give slots_per_rank as an integer"
                )
        elif not is_int(S, 1):
            raise ValueError(f"slots_per_rank: must be an integer >= 1 or 'auto', got {S!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        cls = resolve_optimizer(self.optimizer)
        if not isinstance(self.optimizer_kwargs, dict):
            raise ValueError(
                f"optimizer_kwargs: must be a dict such as {{'lr': 1e-3}}, got "
                f"{type(self.optimizer_kwargs).__name__}"
            )
        try:
            cls([torch.zeros(1, requires_grad=True)], **self.optimizer_kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"optimizer_kwargs: {cls.__name__} rejects {self.optimizer_kwargs!r}: {e}"
            ) from e
        src = self.plan_source
        if src is not None and not (
            callable(getattr(src, "submit", None)) and callable(getattr(src, "poll", None))
        ):
            raise ValueError(
                "plan_source: needs submit(iteration, loads_LE) and poll(deadline_s) methods; "
                "wrap a function in swiftmoe.CallablePlanSource(fn)"
            )
        d = self.plan_deadline_s
        if not is_number(d) or not (d >= 0) or math.isinf(d):
            raise ValueError(f"plan_deadline_s: must be a finite number >= 0, got {d!r}")
        if self.split_method not in SPLIT_METHODS:
            raise ValueError(
                f"split_method: must be one of {', '.join(SPLIT_METHODS)}, got "
                f"{self.split_method!r}"
            )
        rpn = self.ranks_per_node
        if not is_int(rpn, 0):
            raise ValueError(f"ranks_per_node: must be an integer >= 0 (0 = unknown), got {rpn!r}")
        cf = self.capacity_factor
        if cf is not None and (not is_number(cf) or not (cf > 0) or math.isinf(cf)):
            raise ValueError(
                f"capacity_factor: must be None (dropless) or a finite number > 0, got {cf!r}; "
                "use None to keep every token"
            )
        g = self.expert_grad_scale
        if g is not None and (not is_number(g) or not math.isfinite(g)):
            raise ValueError(
                f"expert_grad_scale: must be None (1/world_size) or a finite number, got {g!r}"
            )
        t = self.eval_forward_timeout_s
        if not is_number(t) or not (t > 0) or math.isinf(t):
            raise ValueError(
                f"eval_forward_timeout_s: must be a finite number of seconds > 0, got {t!r}"
            )
        b = self.burst_slots_per_rank
        if not is_int(b, 0):
            raise ValueError(
                f"burst_slots_per_rank: must be an integer >= 0 (0 turns burst replicas off), "
                f"got {b!r}"
            )
        t = self.burst_threshold
        if not is_number(t) or not math.isfinite(t) or t < 1.0:
            raise ValueError(
                f"burst_threshold: must be a finite number >= 1.0 (the busiest rank's load over "
                f"the mean above which bursts are considered; 1.1 by default), got {t!r}"
            )
        d = self.burst_decision_ms
        if d != "auto" and (not is_number(d) or not math.isfinite(d) or d < 0):
            raise ValueError(
                "burst_decision_ms: must be 'auto' (rank 0 measures the decision's host "
                f"time) or a finite number of milliseconds >= 0 (0 turns the gate off), got {d!r}"
            )
        for name in ("intra_node_bandwidth", "inter_node_bandwidth", "expert_flops_per_s"):
            v = getattr(self, name)
            if not is_number(v) or not math.isfinite(v) or v < 0:
                unit = "FLOP/s" if name == "expert_flops_per_s" else "bytes/s"
                raise ValueError(
                    f"{name}: must be a finite number of {unit} >= 0 (0: discovered or the "
                    f"device's default), got {v!r}"
                )
        if self.initial_slots is not None and not isinstance(self.initial_slots, (list, tuple)):
            raise ValueError(
                "initial_slots: must be None or a list with one slot list per MoE layer, got "
                f"{type(self.initial_slots).__name__}"
            )

    @property
    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        return resolve_optimizer(self.optimizer)

    def world(self) -> tuple[int, int]:
        """(rank, world_size) of the engine's group; ValueError when a needed group is missing."""
        if dist.is_available() and dist.is_initialized():
            pg = self.process_group
            return dist.get_rank(pg), dist.get_world_size(pg)
        if self.process_group is not None:
            raise ValueError(
                "process_group: given, but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group(...) first"
            )
        env_world = os.environ.get("WORLD_SIZE", "1")
        try:
            n = int(env_world)
        except ValueError:
            n = 1
        if n > 1:
            raise ValueError(
                f"process_group: WORLD_SIZE={n} but torch.distributed is not initialized; "
                "call torch.distributed.init_process_group(...) before swiftmoe.replicate_"
            )
        return 0, 1
