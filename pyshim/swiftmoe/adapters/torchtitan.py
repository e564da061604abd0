"""Adapter for torchtitan's MoE block (``torchtitan.models.common.moe.MoE``, torchtitan 0.3.0),
from which torchtitan builds its DeepSeek-V3, Qwen3 and Llama 4 MoE models.

Detected by structure (torchtitan is never imported here): children ``router`` (a top-k router
with a ``gate`` Linear, ``top_k`` and ``num_experts``, called ``router(x_BLD, expert_bias_E)``),
``routed_experts`` (holding ``inner_experts`` with exactly ``w1_EFD`` (E, F, D), ``w2_EDF``
(E, D, F) and ``w3_EFD`` (E, F, D), and the EP=1 token dispatcher) and optionally
``shared_experts``; the buffer ``tokens_per_expert_E`` and the attribute ``expert_bias_E``
(a buffer, or None without load balancing).

What the adapter reproduces of ``MoE.forward``, exactly:

* routing: the block's router, called with the live ``expert_bias_E`` (the auxiliary-loss-free
  balancing bias moves the selection, not the weights);
* the block's own counters: in every training-mode forward (recompute included, as unpatched)
  ``tokens_per_expert_E`` gets this rank's local counts, so torchtitan's load-balancing hook
  (``register_moe_load_balancing_hook``) moves the bias exactly as it does unpatched;
* experts: ``GroupedExperts``' SwiGLU in bf16 whatever the model dtype, cast back to the input
  dtype;
* combine: ``(y.float() * score).to(y.dtype)`` summed from zero in ascending expert id (the
  dispatcher's stable sort and deterministic ``scatter_add``); then ``+ shared_experts(x)``.

Refused with the reason: experts replaced or with a replaced ``_grouped_mm`` (Float8 / MXFP8
converters), a dispatcher other than the EP=1 one (expert parallelism: SwiftMoE replaces it),
other expert layouts (torchtitan's GPT-OSS experts).

Because the experts run in bf16, a weight gradient depends on how an expert's rows are grouped
into GEMMs: training equals unpatched torchtitan bit for bit when every expert has one replica
(the engine runs one GEMM per slot over the rows in global-batch order); with two replicas of an
expert its gradient differs at bf16 rounding.

Shape legend: B batch, L sequence, T tokens, D model dim, F expert hidden dim, E experts,
K top-k.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swiftmoe._checks import is_int

from . import _hf_common as hf
from . import pieces
from .base import ExpertSpec, RouteResult

__all__ = ["TorchtitanMoEAdapter", "torchtitan_mismatch"]

_NAMES = ("w1_EFD", "w2_EDF", "w3_EFD")
_SHAPES_ATTR = "_swiftmoe_shapes"


def _qualname(obj: Any, attr: str) -> str:
    return getattr(getattr(type(obj), attr, None), "__qualname__", "")


def torchtitan_mismatch(block: nn.Module) -> str | None:
    """Why ``block`` is not a torchtitan MoE block ("piece: reason"), or None when it is."""
    kids = dict(block.named_children())
    if "routed_experts" not in kids or "router" not in kids:
        return f"block: children are {sorted(kids)}, want 'router' and 'routed_experts'"
    extra = sorted(set(kids) - {"router", "routed_experts", "shared_experts"})
    if extra:
        return f"block: children {extra} besides router, routed_experts and shared_experts"
    if not isinstance(getattr(block, "tokens_per_expert_E", None), torch.Tensor):
        return "block: no tokens_per_expert_E buffer"
    bias = getattr(block, "expert_bias_E", None)
    if bias is not None and not isinstance(bias, torch.Tensor):
        return f"block: expert_bias_E is {type(bias).__name__}, want a tensor or None"
    router = kids["router"]
    gate = getattr(router, "gate", None)
    w = getattr(gate, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return "router: router.gate has no 2-D weight (experts, hidden)"
    num_e, dim = int(w.shape[0]), int(w.shape[1])
    if getattr(router, "num_experts", None) != num_e:
        return f"router: router.num_experts is {getattr(router, 'num_experts', None)!r}, the gate scores {num_e}"
    if not is_int(getattr(router, "top_k", None), 1, num_e):
        return f"router: router.top_k is {getattr(router, 'top_k', None)!r}, want an int in [1, {num_e}]"
    try:
        params = list(inspect.signature(router.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    required = [p.name for p in params[2:] if p.default is p.empty]
    if len(params) < 2 or required:
        return (
            "router: a router that takes arguments the adapter does not know; SwiftMoE calls "
            "router(x_BLD, expert_bias_E)"
        )
    routed = kids["routed_experts"]
    inner = getattr(routed, "inner_experts", None)
    if not isinstance(inner, nn.Module):
        return "experts: routed_experts has no inner_experts module"
    disp = getattr(routed, "token_dispatcher", None)
    methods = (_qualname(disp, "dispatch"), _qualname(disp, "combine"))
    local = methods == ("LocalTokenDispatcher.dispatch", "LocalTokenDispatcher.combine")
    # the "standard" backend's all-to-all dispatcher runs the local path when EP is 1
    fallback = (
        methods
        == (
            "AllToAllTokenDispatcher.dispatch",
            "AllToAllTokenDispatcher.combine",
        )
        and getattr(disp, "ep_mesh", None) is None
    )
    if not (local or fallback):
        return (
            f"experts: the token dispatcher is {type(disp).__name__} with expert parallelism, "
            "not the local (EP=1) one; SwiftMoE replaces expert parallelism: set the expert "
            "parallel degree to 1 and moe_comm_backend='standard'"
        )
    if (
        _qualname(inner, "forward") != "GroupedExperts.forward"
        or _qualname(inner, "_grouped_mm") != "GroupedExperts._grouped_mm"
    ):
        return (
            f"experts: {type(inner).__name__} computes its experts differently from "
            "GroupedExperts (a Float8/MXFP8 converter or another layout); drop that converter "
            "for the experts or exclude the block with filter_fn"
        )
    # parameters, or buffers where swiftmoe.integrations.torchtitan holds them out of FSDP
    names = {n for n, _ in inner.named_parameters()}
    names |= {n for n in _NAMES if isinstance(inner._buffers.get(n), torch.Tensor)}
    if not names:
        rec = inner.__dict__.get(_SHAPES_ATTR)
        if rec is None:
            return "experts: inner_experts holds no w1_EFD, w2_EDF, w3_EFD"
        shapes = rec
    elif names != set(_NAMES):
        return f"experts: inner_experts holds {sorted(names)}, want {list(_NAMES)}"
    else:
        shapes = {n: tuple(getattr(inner, n).shape) for n in _NAMES}
    w1, w2, w3 = (shapes[n] for n in _NAMES)
    f = w1[1] if len(w1) == 3 else -1
    if not (
        len(w1) == len(w2) == len(w3) == 3 and w1 == w3 == (num_e, f, dim) and w2 == (num_e, dim, f)
    ):
        return (
            f"experts: shapes w1 {w1}, w2 {w2}, w3 {w3} do not fit {num_e} experts of "
            f"hidden size {dim}"
        )
    return None


def grouped_experts_forward(x_TD: torch.Tensor, w1_FD, w2_DF, w3_FD) -> torch.Tensor:
    """One expert of ``GroupedExperts``: bf16 SwiGLU whatever the dtypes, cast back to x's.

    x is cast to bf16 once per GEMM, as GroupedExperts does: the two input gradients then meet
    in x's dtype, not in bf16 (one shared cast would add them in bf16 and differ in the last
    bits)."""
    h = F.silu(torch.mm(x_TD.bfloat16(), w1_FD.bfloat16().t()))
    h = h * torch.mm(x_TD.bfloat16(), w3_FD.bfloat16().t())
    return torch.mm(h, w2_DF.bfloat16().t()).type_as(x_TD)


def _grouped_forward_all(x_MD, offs_S, w1_S, w2_S, w3_S) -> torch.Tensor:
    h = F.silu(torch._grouped_mm(x_MD.bfloat16(), w1_S.bfloat16().transpose(-2, -1), offs=offs_S))
    h = h * torch._grouped_mm(x_MD.bfloat16(), w3_S.bfloat16().transpose(-2, -1), offs=offs_S)
    return torch._grouped_mm(h, w2_S.bfloat16().transpose(-2, -1), offs=offs_S).type_as(x_MD)


class TorchtitanMoEAdapter(hf.StructuralAdapter):
    """torchtitan's ``MoE`` (see the module docstring)."""

    name = "torchtitan-moe"
    kind = "torchtitan MoE block"
    mismatch = staticmethod(torchtitan_mismatch)

    def claims(self, module: nn.Module) -> bool:
        return "routed_experts" in dict(module.named_children())

    @staticmethod
    def _inner(block: nn.Module) -> nn.Module:
        return block.routed_experts.inner_experts

    def num_experts(self, block: nn.Module) -> int:
        self._check(block, "num_experts")
        return int(block.router.num_experts)

    def top_k(self, block: nn.Module) -> int:
        self._check(block, "top_k")
        return int(block.router.top_k)

    def _shapes(self, block: nn.Module) -> tuple[torch.Size, ...]:
        inner = self._inner(block)
        rec = inner.__dict__.get(_SHAPES_ATTR)
        if rec is not None:
            return tuple(torch.Size(rec[n][1:]) for n in _NAMES)
        return tuple(getattr(inner, n).shape[1:] for n in _NAMES)

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        self._check(block, "expert_spec")
        return ExpertSpec(_NAMES, self._shapes(block), grouped_experts_forward)

    def grouped_forward(
        self, block: nn.Module, x_MD: torch.Tensor, offs_S: torch.Tensor, stacked
    ) -> torch.Tensor:
        """The S slots in one ``torch._grouped_mm`` per weight, as GroupedExperts runs them."""
        return _grouped_forward_all(x_MD, offs_S, *stacked)

    def flatten_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        x = args[0] if args else kwargs.get("x_BLD")
        dim = int(block.router.gate.weight.shape[1])
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}.flatten_input({hf.block_label(block)}): x_BLD is {got}, want a "
                f"tensor of shape (batch, seq, {dim})"
            )
        return x.reshape(-1, dim)

    def route(self, block: nn.Module, x_TD: torch.Tensor, *, hooks: bool = True) -> RouteResult:
        """The block's router with its live ``expert_bias_E``; with ``hooks`` (a real forward,
        not observe mode's look) the block's ``tokens_per_expert_E`` counts as unpatched."""
        router = block.router
        x_1TD = x_TD.unsqueeze(0)  # the router is per token: (1, T, D) routes as (B, L, D)
        bias = block.expert_bias_E
        out = router(x_1TD, bias) if hooks else router.forward(x_1TD, bias)
        scores_1TK, ids_1TK, scores_1TE = out
        ids_TK = ids_1TK.reshape(x_TD.shape[0], -1)
        if hooks and block.training:
            with torch.no_grad():
                counts_E = torch.bincount(ids_TK.reshape(-1), minlength=block.router.num_experts)
                block.tokens_per_expert_E.add_(counts_E.to(block.tokens_per_expert_E.dtype))
        return RouteResult(ids_TK.long(), scores_1TK.reshape(x_TD.shape[0], -1), extra=out)

    def combine(
        self, block: nn.Module, y_TKD: torch.Tensor, route: RouteResult, x_TD: torch.Tensor
    ) -> torch.Tensor:
        """The dispatcher's combine: fp32 product cast back, summed in ascending expert id."""
        p_TKD = (y_TKD.float() * route.topk_weights_TK.unsqueeze(-1)).to(y_TKD.dtype)
        return pieces.ascending_expert_sum(p_TKD.to(x_TD.dtype), route.topk_ids_TK)

    def block_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x: torch.Tensor
    ) -> torch.Tensor:
        out = y_TD.view(x.shape)
        shared = getattr(block, "shared_experts", None)
        if shared is not None:
            out = out + shared(x)
        return out

    def make_output(self, block, y_TD, route, x_shape):
        raise ValueError(
            f"{self.name}.make_output: the block may have shared experts, which need its "
            "input: call block_output"
        )

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        self._check(block, "get_expert_params")
        inner = self._inner(block)
        ws = [getattr(inner, n, None) for n in _NAMES]
        if any(w is None for w in ws):
            raise hf.removed_error(self.name, block)
        return [tuple(w[e] for w in ws) for e in range(ws[0].shape[0])]

    def remove_expert_params(self, block: nn.Module) -> None:
        """Unregister w1/w2/w3 (parameters or buffers); shapes and dtype stay recorded."""
        inner = self._inner(block)
        w1 = getattr(inner, _NAMES[0], None)
        rec = hf.record_removal(self.name, block, self.expert_spec(block), w1)
        inner.__dict__[_SHAPES_ATTR] = {n: tuple(getattr(inner, n).shape) for n in _NAMES}
        for n in _NAMES:
            if n in inner._buffers:
                del inner._buffers[n]
            inner.register_parameter(n, None)
        setattr(block, hf.REMOVED_ATTR, rec)

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        """Stack per-expert weights back into w1/w2/w3 (in place when they are live)."""
        spec = self.expert_spec(block)
        hf.check_expert_params(self.name, block, spec, self.num_experts(block), params)
        inner = self._inner(block)
        rec = hf.removed_record(block)
        with torch.no_grad():
            for i, n in enumerate(_NAMES):
                stacked = torch.stack([p[i].detach() for p in params])
                cur = getattr(inner, n, None)
                if cur is not None:
                    cur.copy_(stacked)
                    continue
                inner.register_parameter(n, hf.restored_param(stacked, rec))
        inner.__dict__.pop(_SHAPES_ATTR, None)
        if rec is not None:
            delattr(block, hf.REMOVED_ATTR)
