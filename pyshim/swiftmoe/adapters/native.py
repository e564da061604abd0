"""Adapter for SwiftMoE's reference layer ``swiftmoe.nn.MoE`` (a built-in: ``swiftmoe.adapters``
registers it).

Shape legend: T tokens, D model dim, F expert hidden dim, E experts, K top-k, M tokens of a
group, S slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from swiftmoe import nn as smnn
from swiftmoe.adapters.base import ExpertSpec, MoEAdapter, RouteResult

__all__ = ["NativeMoEAdapter"]

_NAMES = ("w_gate", "w_up", "w_down")


class NativeMoEAdapter(MoEAdapter):
    """Handles ``swiftmoe.nn.MoE``."""

    name = "swiftmoe.nn.MoE"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, smnn.MoE)

    def num_experts(self, block: nn.Module) -> int:
        return block.num_experts

    def top_k(self, block: nn.Module) -> int:
        return block.top_k

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        D, F = block.dim, block.hidden_dim
        shapes = (torch.Size([F, D]), torch.Size([F, D]), torch.Size([D, F]))
        return ExpertSpec(names=_NAMES, shapes=shapes, forward=smnn.swiglu_expert)

    def grouped_forward(
        self,
        block: nn.Module,
        x_MD: torch.Tensor,
        offs_S: torch.Tensor,
        stacked: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """All slots of a rank in one grouped GEMM per weight (CUDA, ``torch._grouped_mm``)."""
        return smnn.grouped_swiglu(x_MD, offs_S, *stacked)

    def route(self, block: nn.Module, x_TD: torch.Tensor) -> RouteResult:
        ids_TK, weights_TK = block.route(x_TD)
        return RouteResult(topk_ids_TK=ids_TK, topk_weights_TK=weights_TK)

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        for n in _NAMES:
            if getattr(block, n, None) is None:
                raise ValueError(
                    f"{self.name}: the block has no {n!r}; its expert weights were already "
                    "moved out by swiftmoe.replicate_ (use handle.export_expert_weights())"
                )
        return [(block.w_gate[e], block.w_up[e], block.w_down[e]) for e in range(block.num_experts)]

    def remove_expert_params(self, block: nn.Module) -> None:
        for n in _NAMES:
            if n in block._parameters:
                del block._parameters[n]
            setattr(block, n, None)

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        E = block.num_experts
        if len(params) != E:
            raise ValueError(
                f"{self.name}.set_expert_params: got weights for {len(params)} experts, the "
                f"block has num_experts={E}; export from a model with the same config"
            )
        spec = self.expert_spec(block)
        for e, p in enumerate(params):
            if len(p) != len(_NAMES):
                raise ValueError(
                    f"{self.name}.set_expert_params: expert {e} has {len(p)} tensors, want "
                    f"{len(_NAMES)} ({', '.join(_NAMES)})"
                )
            for name, t, shape in zip(_NAMES, p, spec.shapes, strict=True):
                if tuple(t.shape) != tuple(shape):
                    raise ValueError(
                        f"{self.name}.set_expert_params: expert {e} {name} has shape "
                        f"{tuple(t.shape)}, want {tuple(shape)}"
                    )
        ref = block.router.weight
        with torch.no_grad():
            for i, n in enumerate(_NAMES):
                stacked = torch.stack([p[i] for p in params]).to(ref.device, ref.dtype)
                cur = getattr(block, n, None)
                if isinstance(cur, nn.Parameter):
                    cur.copy_(stacked)
                else:
                    if n in block.__dict__:
                        del block.__dict__[n]
                    block.register_parameter(n, nn.Parameter(stacked))

    def make_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x_shape: torch.Size
    ) -> torch.Tensor:
        return y_TD.reshape(x_shape)
