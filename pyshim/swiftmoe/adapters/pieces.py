"""The pieces MoE blocks are built from, each recognised by structure and computed exactly.

A block (transformers 5.x DeepSeek-V2/V3, GLM-4.5, Qwen2/3-MoE, OLMoE, Mixtral, GPT-OSS,
Llama 4, or a team's block of the same shapes) is a composition of:

* a **router** child (``gate`` or ``router``), called as the block calls it and its outputs
  reused: ``(logits_TE, weights_TK, ids_TK)`` ("top-k"), or dense ``(scores_TE, logits_TE)``
  whose top-k scores multiply the expert input before the experts ("dense", Llama 4);
* **experts** holding stacked weights ``gate_up_proj`` and ``down_proj`` (either orientation),
  optionally with biases ``gate_up_proj_bias`` and ``down_proj_bias`` (GPT-OSS), gated by the
  module's own ``_apply_gate`` (GPT-OSS's clamped SwiGLU) or ``act_fn(gate) * up``;
* optional **shared experts** (``shared_experts``, ``shared_expert`` or ``shared_mlp``), run on
  every token as the block runs them, optionally scaled by ``sigmoid(<name>_gate(x))``
  (Qwen2-MoE); they stay dense parameters of the model;
* the **combine** of each token's K expert outputs, in the dtypes and order of additions of
  the block's experts implementation (transformers' ``eager`` or ``grouped_mm`` /
  ``batched_mm``);
* the **output form**: the hidden states in the input's shape or flattened, alone or with
  router outputs (GPT-OSS returns the top-k scores, Llama 4 the logits).

Functions here are pure: tensors in, tensors out. Shape legend: T tokens, D model dim, I expert
intermediate dim, E experts, K top-k, M rows of all groups, S slots (groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SHARED_NAMES",
    "ROUTER_NAMES",
    "combine_eager",
    "combine_grouped",
    "combine_plain",
    "ascending_expert_sum",
    "fused_expert",
    "grouped_fused_experts",
    "shared_output",
]

#: Child names of a router, and of shared experts (a sibling ``<name>_gate`` gates them).
ROUTER_NAMES = ("gate", "router")
SHARED_NAMES = ("shared_experts", "shared_expert", "shared_mlp")

#: transformers' experts implementations whose math is reproduced, and the GEMM precision of
#: each under autocast: "grouped_mm" runs in the weights' dtype (torch._grouped_mm ignores
#: autocast), the others autocast like F.linear / bmm.
KNOWN_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


def ascending_expert_sum(p_TKD: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
    """``sum_k p_TKD[:, k]`` added from zero in ascending expert id per token, as a loop over
    experts with ``index_add_`` (or a stable sort by expert then ``scatter_add``) adds them."""
    K = p_TKD.shape[1]
    if K > 1:
        order_TK = torch.argsort(ids_TK, dim=1, stable=True)
        p_TKD = p_TKD.gather(1, order_TK.unsqueeze(-1).expand_as(p_TKD))
    out = torch.zeros_like(p_TKD[:, 0])
    for k in range(K):
        out = out + p_TKD[:, k]
    return out


def combine_eager(
    y_TKD: torch.Tensor, w_TK: torch.Tensor, ids_TK: torch.Tensor, x_dtype: torch.dtype
) -> torch.Tensor:
    """transformers' eager loop: ``(y * w)`` in the promoted dtype, cast to the input dtype,
    accumulated from zero in ascending expert id."""
    return ascending_expert_sum((y_TKD * w_TK.unsqueeze(-1)).to(x_dtype), ids_TK)


def combine_grouped(y_TKD: torch.Tensor, w_TK: torch.Tensor, x_dtype: torch.dtype) -> torch.Tensor:
    """transformers' grouped_mm / batched_mm: ``(y * w).sum(1)`` in the promoted dtype, then
    cast to the input dtype."""
    return (y_TKD * w_TK.unsqueeze(-1)).sum(dim=1).to(x_dtype)


def combine_plain(y_TKD: torch.Tensor) -> torch.Tensor:
    """A plain sum of the K outputs in their dtype (the scores were applied to the input)."""
    return y_TKD.sum(dim=1)


def fused_expert(
    experts: nn.Module,
    transposed: bool,
    biased: bool,
    gate_fn: Callable[[torch.Tensor], torch.Tensor],
    weights_dtype_gemm: Callable[[], bool],
) -> Callable[..., torch.Tensor]:
    """One expert of a fused-experts module: ``forward(x_TD, *params) -> y_TD``.

    params are ``(gate_up, down)`` or, ``biased``, ``(gate_up, gate_up_bias, down, down_bias)``;
    gate_up is (2I, D) and down (D, I), or (D, 2I) and (I, D) when ``transposed``.
    ``weights_dtype_gemm()`` (read at every call: users switch implementations) says the
    block runs its GEMMs in the weights' dtype whatever autocast says (transformers'
    grouped_mm); the GEMMs then run with autocast off on the input cast to that dtype.
    """

    def body(x_TD: torch.Tensor, gu, b1, dn, b2) -> torch.Tensor:
        h = torch.matmul(x_TD, gu) if transposed else F.linear(x_TD, gu)
        if b1 is not None:
            h = h + b1
        h = gate_fn(h)
        y = torch.matmul(h, dn) if transposed else F.linear(h, dn)
        if b2 is not None:
            y = y + b2
        return y

    def forward(x_TD: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        gu, b1, dn, b2 = params if biased else (params[0], None, params[1], None)
        dev = x_TD.device.type
        if weights_dtype_gemm() and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return body(x_TD.to(gu.dtype), gu, b1, dn, b2)
        return body(x_TD, gu, b1, dn, b2)

    return forward


def grouped_fused_experts(
    x_MD: torch.Tensor,
    offs_S: torch.Tensor,
    stacked: Sequence[torch.Tensor],
    transposed: bool,
    biased: bool,
    gate_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """S experts of :func:`fused_expert` over contiguous row groups, one
    ``torch._grouped_mm`` per weight; a group's bias is added to its rows."""
    if biased:
        gu_S, b1_S, dn_S, b2_S = stacked
    else:
        (gu_S, dn_S), b1_S, b2_S = stacked, None, None
    if not transposed:
        gu_S, dn_S = gu_S.transpose(-2, -1), dn_S.transpose(-2, -1)
    rows_S = torch.diff(offs_S.long(), prepend=offs_S.new_zeros(1).long())
    h = torch._grouped_mm(x_MD, gu_S, offs=offs_S)
    if b1_S is not None:
        h = h + b1_S.repeat_interleave(rows_S, dim=0, output_size=x_MD.shape[0])
    y = torch._grouped_mm(gate_fn(h), dn_S, offs=offs_S)
    if b2_S is not None:
        y = y + b2_S.repeat_interleave(rows_S, dim=0, output_size=x_MD.shape[0])
    return y


def shared_output(
    shared: nn.Module, gate: nn.Module | None, x: torch.Tensor, flat: bool
) -> torch.Tensor:
    """The shared experts' contribution, computed on the tensor the block gives them (the
    block input itself or its (T, D) view), scaled by ``sigmoid(gate(x))`` when gated."""
    x_in = x.reshape(-1, x.shape[-1]) if flat else x
    s = shared(x_in)
    if gate is not None:
        s = torch.sigmoid(gate(x_in)) * s
    return s
