"""Adapters: how SwiftMoE drives a model's MoE blocks.

The adapters belong to the engine wing: they are what it drives. The built-in ones are listed in
:data:`BUILTIN_ADAPTERS` and registered here, in this one place, when the package is imported
(detection is by structure, not class name):

* :class:`NativeMoEAdapter`: SwiftMoE's reference layer ``swiftmoe.nn.MoE``;
* :class:`HFFusedExpertsAdapter`: fused-experts blocks of transformers 5.x (Mixtral,
  Qwen3-MoE, OLMoE and any block of the same shape);
* :class:`HFModuleListAdapter`: per-expert ``nn.ModuleList`` blocks of transformers 4.x
  (Mixtral ``w1/w2/w3``, Qwen3-MoE ``gate_proj/up_proj/down_proj``, and the same shapes).

A block of another kind needs a few lines: subclass :class:`MoEAdapter`, override its methods
(the contract is in ``swiftmoe.adapters.base``), and :func:`register_adapter` an instance.
Registered adapters are tried most recent first, so yours also overrides a built-in one. A full
example, run as a test (keep shape queries off the expert weights, which the engine removes):

.. code-block:: python

    import torch
    import torch.nn.functional as F
    from torch import nn

    from swiftmoe.adapters import ExpertSpec, MoEAdapter, RouteResult, register_adapter


    class TeamMoE(nn.Module):
        # A team's own block: softmax top-k router, GELU experts stacked in two tensors.
        def __init__(self, dim=16, hidden=32, num_experts=4, k=2):
            super().__init__()
            self.dim, self.hidden, self.num_experts, self.k = dim, hidden, num_experts, k
            self.router = nn.Linear(dim, num_experts, bias=False)
            self.w_in = nn.Parameter(torch.randn(num_experts, hidden, dim) / dim**0.5)
            self.w_out = nn.Parameter(torch.randn(num_experts, dim, hidden) / hidden**0.5)

        def forward(self, x):
            x_TD = x.reshape(-1, self.dim)
            w_TK, ids_TK = self.router(x_TD).softmax(-1).topk(self.k, dim=-1)
            y_TD = torch.zeros_like(x_TD)
            for e in range(self.num_experts):
                tok, slot = (ids_TK == e).nonzero(as_tuple=True)
                h = F.gelu(x_TD[tok] @ self.w_in[e].T) @ self.w_out[e].T
                y_TD.index_add_(0, tok, h * w_TK[tok, slot, None])
            return y_TD.reshape(x.shape)


    class TeamMoEAdapter(MoEAdapter):
        name = "team-moe"

        def matches(self, module):
            return isinstance(module, TeamMoE)

        def num_experts(self, block):
            return block.num_experts

        def top_k(self, block):
            return block.k

        def expert_spec(self, block):
            shapes = (torch.Size((block.hidden, block.dim)), torch.Size((block.dim, block.hidden)))
            return ExpertSpec(("w_in", "w_out"), shapes, lambda x, w_in, w_out: F.gelu(x @ w_in.T) @ w_out.T)

        def route(self, block, x_TD):
            w_TK, ids_TK = block.router(x_TD).softmax(-1).topk(block.k, dim=-1)
            return RouteResult(ids_TK, w_TK)

        def get_expert_params(self, block):
            return [(block.w_in[e], block.w_out[e]) for e in range(block.num_experts)]

        def remove_expert_params(self, block):
            del block.w_in, block.w_out

        def set_expert_params(self, block, params):
            block.w_in = nn.Parameter(torch.stack([p[0] for p in params]))
            block.w_out = nn.Parameter(torch.stack([p[1] for p in params]))

        def make_output(self, block, y_TD, route, x_shape):
            return y_TD.reshape(x_shape)


    register_adapter(TeamMoEAdapter())
"""

from __future__ import annotations

from .base import (
    ExpertSpec,
    MoEAdapter,
    RouteResult,
    find_adapter,
    register_adapter,
    registered_adapters,
)
from .hf_fused import HFFusedExpertsAdapter
from .hf_modulelist import HFModuleListAdapter
from .native import NativeMoEAdapter

__all__ = [
    "BUILTIN_ADAPTERS",
    "ExpertSpec",
    "HFFusedExpertsAdapter",
    "HFModuleListAdapter",
    "MoEAdapter",
    "NativeMoEAdapter",
    "RouteResult",
    "find_adapter",
    "register_adapter",
    "registered_adapters",
]

#: The built-in adapters, in registration order. Their blocks are structurally disjoint, so the
#: order does not matter; adapters registered later (a team's) take precedence over all of them.
BUILTIN_ADAPTERS: tuple[type[MoEAdapter], ...] = (
    NativeMoEAdapter,
    HFModuleListAdapter,
    HFFusedExpertsAdapter,
)

for _cls in BUILTIN_ADAPTERS:
    register_adapter(_cls())
del _cls
