"""Adapter for per-expert ModuleList MoE blocks (the transformers 4.x form).

The block has exactly two children:

* ``gate``: an ``nn.Linear(D, E, bias=False)`` giving router logits;
* ``experts``: an ``nn.ModuleList`` of E gated MLPs, each with three bias-free ``nn.Linear``
  layers named ``w1``/``w3``/``w2`` (Mixtral) or ``gate_proj``/``up_proj``/``down_proj``
  (Qwen3-MoE, OLMoE, ...) and an ``act_fn``, computing ``down(act(gate(x)) * up(x))``;

plus an int ``top_k`` and optionally ``num_experts``, ``norm_topk_prob`` (absent means the
top-k weights are renormalised, as Mixtral does) and ``jitter_noise``. Detection is by this
structure, never by class name, so other blocks of the same shape work.

Routing reproduces the 4.x forward exactly: ``softmax(logits, dim=1, dtype=float32)``, top-k,
renormalisation when ``norm_topk_prob`` (or always, without the attribute), then a cast to the
hidden states' dtype. The block returns ``(hidden_states, router_logits)``; the model collects the
logits from that tuple for the auxiliary loss, and :meth:`make_output` keeps the tuple.

Shape legend: T tokens, D model dim, I expert intermediate dim, E experts, K top-k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from swiftmoe._checks import is_int, is_number
from swiftmoe.nn import grouped_swiglu

from . import _hf_common as hf
from .base import ExpertSpec, RouteResult

__all__ = ["HFModuleListAdapter", "modulelist_mismatch"]

#: Known per-expert layer names, in (gate, up, down) order.
LAYER_NAMES: tuple[tuple[str, str, str], ...] = (
    ("w1", "w3", "w2"),
    ("gate_proj", "up_proj", "down_proj"),
)


def _layer_names(expert: nn.Module) -> tuple[str, str, str] | None:
    linears = {n for n, m in expert.named_children() if isinstance(m, nn.Linear)}
    for names in LAYER_NAMES:
        if linears == set(names):
            return names
    return None


def _expert_mismatch(e: int, expert: nn.Module, dim: int) -> str | None:
    names = _layer_names(expert)
    if names is None:
        kids = sorted(n for n, _ in expert.named_children())
        return f"experts[{e}] has children {kids}, want three nn.Linear named " + " or ".join(
            "/".join(n) for n in LAYER_NAMES
        )
    if not callable(getattr(expert, "act_fn", None)):
        return f"experts[{e}] has no callable act_fn"
    g, u, d = (getattr(expert, n) for n in names)
    if any(lin.bias is not None for lin in (g, u, d)):
        return f"experts[{e}] has biased projections; only bias-free experts are supported"
    allowed = {f"{n}.weight" for n in names}
    extra = sorted(n for n, _ in expert.named_parameters() if n not in allowed)
    if extra:
        return f"experts[{e}] holds parameters {extra} besides its three projections"
    inter = g.out_features
    if (g.in_features, u.in_features, u.out_features) != (dim, dim, inter):
        return f"experts[{e}] gate/up projections are not ({dim} -> {inter})"
    if (d.in_features, d.out_features) != (inter, dim):
        return f"experts[{e}] down projection is not ({inter} -> {dim})"
    return None


def modulelist_mismatch(block: nn.Module) -> str | None:
    """Why ``block`` is not a per-expert ModuleList MoE block, or None when it is."""
    kids = hf.gate_and_experts(block)
    if isinstance(kids, str):
        return kids
    gate, ex = kids
    if not isinstance(gate, nn.Linear) or gate.bias is not None:
        return "gate is not a bias-free nn.Linear"
    if not isinstance(ex, nn.ModuleList) or len(ex) != gate.out_features:
        return f"experts is not an nn.ModuleList of {gate.out_features} experts (one per logit)"
    num_e, dim = gate.out_features, gate.in_features
    k = getattr(block, "top_k", None)
    if not is_int(k, 1, num_e):
        return f"top_k is {k!r}, want an int in [1, {num_e}]"
    n = getattr(block, "num_experts", num_e)
    if n != num_e:
        return f"num_experts is {n!r} but the gate scores {num_e} experts"
    norm = getattr(block, "norm_topk_prob", True)
    if not isinstance(norm, bool):
        return f"norm_topk_prob is {norm!r}, want a bool"
    j = getattr(block, "jitter_noise", 0.0)
    if not is_number(j):
        return f"jitter_noise is {j!r}, want a number"
    for e, expert in enumerate(ex):
        reason = _expert_mismatch(e, expert, dim)
        if reason is not None:
            return reason
    first = _layer_names(ex[0])
    inter = getattr(ex[0], first[0]).out_features
    act_type = type(ex[0].act_fn)
    for e, expert in enumerate(ex):
        if _layer_names(expert) != first or getattr(expert, first[0]).out_features != inter:
            return f"experts[{e}] differs in layout or size from experts[0]"
        if type(expert.act_fn) is not act_type:
            return f"experts[{e}] uses a different activation from experts[0]"
    return None


class HFModuleListAdapter(hf.StructuralAdapter):
    """Per-expert blocks: a Linear ``gate`` and a ``ModuleList`` of gated MLP experts."""

    name = "hf-modulelist-experts"

    kind = "per-expert MoE block"
    mismatch = staticmethod(modulelist_mismatch)

    @staticmethod
    def _layers(block: nn.Module, e: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        expert = block.experts[e]
        return tuple(getattr(expert, n) for n in _layer_names(expert))

    def num_experts(self, block: nn.Module) -> int:
        self._check(block, "num_experts")
        return len(block.experts)

    def top_k(self, block: nn.Module) -> int:
        self._check(block, "top_k")
        return int(block.top_k)

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        self._check(block, "expert_spec")
        g, u, d = self._layers(block, 0)
        return ExpertSpec(
            names=_layer_names(block.experts[0]),
            shapes=(
                torch.Size((g.out_features, g.in_features)),
                torch.Size((u.out_features, u.in_features)),
                torch.Size((d.out_features, d.in_features)),
            ),
            forward=hf.swiglu_split(block.experts[0].act_fn),
        )

    def grouped_forward(
        self,
        block: nn.Module,
        x_MD: torch.Tensor,
        offs_S: torch.Tensor,
        stacked: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """S experts over contiguous row groups in one ``torch._grouped_mm`` per weight.

        ``stacked`` holds the S slots' weights in ``expert_spec`` order, each (S, *shape);
        ``offs_S`` (int32) the cumulative end of each group. Same math as ``spec.forward``.
        """
        w_gate_SID, w_up_SID, w_down_SDI = stacked
        act_fn = block.experts[0].act_fn
        return grouped_swiglu(x_MD, offs_S, w_gate_SID, w_up_SID, w_down_SDI, act_fn)

    def route(self, block: nn.Module, x_TD: torch.Tensor, *, hooks: bool = True) -> RouteResult:
        """Softmax top-k routing as the 4.x block computes it; extra is ``router_logits_TE``.

        ``hooks=False`` computes the logits without running forward hooks on ``block.gate``.
        """
        dim = block.gate.in_features
        if x_TD.dim() != 2 or x_TD.shape[1] != dim:
            raise ValueError(
                f"{self.name}.route({hf.block_label(block)}): x_TD has shape {tuple(x_TD.shape)}, "
                f"want (tokens, {dim}); flatten with flatten_input first"
            )
        logits_TE = block.gate(x_TD) if hooks else block.gate.forward(x_TD)
        probs_TE = F.softmax(logits_TE, dim=1, dtype=torch.float)
        weights_TK, ids_TK = torch.topk(probs_TE, block.top_k, dim=-1)
        if getattr(block, "norm_topk_prob", True):
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        weights_TK = weights_TK.to(x_TD.dtype)
        return RouteResult(topk_ids_TK=ids_TK, topk_weights_TK=weights_TK, extra=logits_TE)

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        self._check(block, "get_expert_params")
        out = []
        for e in range(len(block.experts)):
            ws = tuple(lin.weight for lin in self._layers(block, e))
            if any(w is None for w in ws):
                raise hf.removed_error(self.name, block)
            out.append(ws)
        return out

    def remove_expert_params(self, block: nn.Module) -> None:
        """Unregister every expert projection weight; dtype and device stay on the block."""
        rec = hf.record_removal(
            self.name, block, self.expert_spec(block), self._layers(block, 0)[0].weight
        )
        for e in range(len(block.experts)):
            for lin in self._layers(block, e):
                lin.register_parameter("weight", None)
        setattr(block, hf.REMOVED_ATTR, rec)

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        """Put per-expert weights back into each expert's projections.

        Live weights are overwritten in place; removed ones are registered again with their
        original dtype, device and requires_grad.
        """
        spec = self.expert_spec(block)
        hf.check_expert_params(self.name, block, spec, len(block.experts), params)
        rec = hf.removed_record(block)
        with torch.no_grad():
            for e, p in enumerate(params):
                for lin, t in zip(self._layers(block, e), p, strict=True):
                    if lin.weight is not None:
                        lin.weight.copy_(t)
                        continue
                    lin.register_parameter("weight", hf.restored_param(t.detach().clone(), rec))
        if rec is not None:
            delattr(block, hf.REMOVED_ATTR)

    def make_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x_shape: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 4.x block returns ``(hidden_states, router_logits)``."""
        return y_TD.reshape(x_shape), route.extra
