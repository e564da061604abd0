"""SwiftMoE's reference MoE layer: a top-k softmax router and SwiGLU experts.

For teams without an MoE block of their own. ``swiftmoe.replicate_`` handles it through the
adapter in ``swiftmoe.adapters.native`` (a built-in, registered in ``swiftmoe.adapters``). The
SwiGLU expert math here is also what the HuggingFace adapters run over grouped slots
(:func:`grouped_swiglu`). Of swiftmoe it imports only the shared argument checks.

Shape legend:
    T  tokens (all leading dims of the input flattened)
    D  model dim
    F  expert hidden dim
    E  experts
    K  experts per token (top-k)
    M  tokens of one group (expert or slot)
    S  slots (stacked weights of one rank)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F_
from torch import nn

from swiftmoe._checks import is_int

__all__ = ["MoE", "swiglu_expert", "grouped_swiglu", "route_topk"]


def swiglu_expert(
    x_MD: torch.Tensor, w_gate_FD: torch.Tensor, w_up_FD: torch.Tensor, w_down_DF: torch.Tensor
) -> torch.Tensor:
    """One SwiGLU expert on its tokens: ``(silu(x W_gate^T) * x W_up^T) W_down^T`` -> y_MD."""
    h_MF = F_.silu(x_MD @ w_gate_FD.t()) * (x_MD @ w_up_FD.t())
    return h_MF @ w_down_DF.t()


def grouped_swiglu(
    x_MD: torch.Tensor,
    offs_S: torch.Tensor,
    w_gate_SFD: torch.Tensor,
    w_up_SFD: torch.Tensor,
    w_down_SDF: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor] = F_.silu,
) -> torch.Tensor:
    """S gated experts over contiguous token groups with ``torch._grouped_mm`` (CUDA):
    ``down(act(gate(x)) * up(x))`` per group, SwiGLU with the default ``act_fn``.

    ``offs_S`` (int32) holds the cumulative end of each group in ``x_MD``; group s runs expert s.
    No group is padded, so skewed group sizes cost nothing extra. The HuggingFace adapters run
    their separate gate/up/down layout through it with the block's own activation.
    """
    gate_MF = torch._grouped_mm(x_MD, w_gate_SFD.transpose(-2, -1), offs=offs_S)
    up_MF = torch._grouped_mm(x_MD, w_up_SFD.transpose(-2, -1), offs=offs_S)
    return torch._grouped_mm(act_fn(gate_MF) * up_MF, w_down_SDF.transpose(-2, -1), offs=offs_S)


def route_topk(
    logits_TE: torch.Tensor, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router: (topk_ids_TK int64, topk_weights_TK) from router logits."""
    probs_TE = torch.softmax(logits_TE.float(), dim=-1)
    weights_TK, ids_TK = torch.topk(probs_TE, top_k, dim=-1)
    if norm_topk_prob:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return ids_TK, weights_TK.to(logits_TE.dtype)


class MoE(nn.Module):
    """Top-k softmax router plus ``num_experts`` SwiGLU experts, dropless.

    Expert e's weights are ``w_gate[e]`` [F, D], ``w_up[e]`` [F, D] and ``w_down[e]`` [D, F].
    ``forward`` takes ``x`` of shape [..., D] and returns the same shape.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        *,
        norm_topk_prob: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden_dim", hidden_dim), ("num_experts", num_experts)):
            if not is_int(v, 1):
                raise ValueError(f"MoE: {name} must be an integer >= 1, got {v!r}")
        if not is_int(top_k, 1, num_experts):
            raise ValueError(
                f"MoE: top_k must be an integer in 1..num_experts={num_experts}, got {top_k!r}"
            )
        self.dim, self.hidden_dim = dim, hidden_dim
        self.num_experts, self.top_k = num_experts, top_k
        self.norm_topk_prob = norm_topk_prob
        kw = {"device": device, "dtype": dtype}
        self.router = nn.Linear(dim, num_experts, bias=False, **kw)
        self.w_gate = nn.Parameter(torch.empty(num_experts, hidden_dim, dim, **kw))
        self.w_up = nn.Parameter(torch.empty(num_experts, hidden_dim, dim, **kw))
        self.w_down = nn.Parameter(torch.empty(num_experts, dim, hidden_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.router.weight, std=1.0 / math.sqrt(self.dim))
        nn.init.normal_(self.w_gate, std=1.0 / math.sqrt(self.dim))
        nn.init.normal_(self.w_up, std=1.0 / math.sqrt(self.dim))
        nn.init.normal_(self.w_down, std=1.0 / math.sqrt(self.hidden_dim))

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids_TK, topk_weights_TK) for flattened tokens."""
        return route_topk(self.router(x_TD), self.top_k, self.norm_topk_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD = x.reshape(-1, self.dim)
        ids_TK, weights_TK = self.route(x_TD)
        T, K = ids_TK.shape
        e_A = ids_TK.reshape(-1)
        order_A = torch.argsort(e_A, stable=True)
        counts_E = torch.bincount(e_A, minlength=self.num_experts).tolist()
        xs_AD = x_TD.index_select(0, order_A // K)
        ys = []
        start = 0
        for e, n in enumerate(counts_E):
            if n:
                ys.append(
                    swiglu_expert(
                        xs_AD[start : start + n], self.w_gate[e], self.w_up[e], self.w_down[e]
                    )
                )
            start += n
        y_sorted_AD = torch.cat(ys) if ys else xs_AD
        y_AD = torch.zeros_like(y_sorted_AD).index_copy(0, order_A, y_sorted_AD)
        y_TD = (y_AD.view(T, K, y_AD.shape[-1]) * weights_TK.unsqueeze(-1)).sum(dim=1)
        return y_TD.reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}"
        )
