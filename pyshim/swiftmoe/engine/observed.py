"""One MoE block under observe mode: its math untouched, its local loads recorded.

Shape legend: T tokens of this rank, D model dim, E experts.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from swiftmoe.engine.blocks import MoEBlock
from swiftmoe.engine.stats import add_stat_buffers, in_recompute, loads_of

__all__ = ["ObservedLayer"]


class ObservedLayer:
    """One MoE block under observe mode: its math untouched, its local loads recorded.

    A forward pre-hook reruns the block's router under ``no_grad`` with the RNG state saved
    and restored, so the block computes exactly what it computes unpatched.
    """

    def __init__(self, index: int, where: MoEBlock, num_experts: int, device: torch.device) -> None:
        self.index, self.E = index, num_experts
        self.fqn, self.block, self.adapter = where
        block, adapter = self.block, self.adapter
        self.slots: list[int] = []
        # For the cost model of the what-if split (ObserveRun): one expert's elements and
        # bytes per element (set by the engine where it prices), one token row's bytes (set
        # by the first training forward).
        self.expert_numel = self.weight_bytes = self.token_bytes = 0
        try:
            params = inspect.signature(adapter.route).parameters
        except (TypeError, ValueError):
            params = {}
        self._route_has_hooks = "hooks" in params
        add_stat_buffers(block, num_experts, device)
        block.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        if not block.training or in_recompute():  # count each token once under checkpointing
            return None
        x = args[0] if args else kwargs["hidden_states"]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            x_TD = self.adapter.flatten_input(block, args, kwargs)
            self.token_bytes = x_TD.shape[-1] * x_TD.element_size()
            if self._route_has_hooks:  # run the router without its hooks: leave no trace
                route = self.adapter.route(block, x_TD.detach(), hooks=False)
            else:
                route = self.adapter.route(block, x_TD.detach())
        ids = route.topk_ids_TK.reshape(-1).long()
        loads_of(block).add_(torch.bincount(ids, minlength=self.E))
        return None
