"""Adapter for fused-experts MoE blocks (transformers 5.x Mixtral, Qwen3-MoE, OLMoE, ...).

The block has exactly two children:

* ``gate``: a router module (not a bare ``nn.Linear``) with a ``weight`` of shape (E, D) and an
  int ``top_k``, whose forward maps ``x_TD`` to ``(router_logits_TE, topk_weights_TK,
  topk_ids_TK)``;
* ``experts``: a module holding stacked expert weights ``gate_up_proj`` (E, 2I, D) and
  ``down_proj`` (E, D, I) (or (E, D, 2I) / (E, I, D) with ``is_transposed``), an ``act_fn``,
  and no biases, computing ``down(act(gate) * up)`` per expert with ``[gate; up]`` concatenated.

Detection is by this structure, never by class name, so other blocks of the same shape work.

Routing: :meth:`HFFusedExpertsAdapter.route` calls ``block.gate`` itself, so the block's own
softmax, top-k, renormalisation and dtype handling apply unchanged, and any forward hook on the
router sees the call. transformers 5.x records ``router_logits`` for the auxiliary loss with
exactly such a hook (``OutputRecorder(<Router class>, index=0)`` in ``_can_record_outputs``), so
the aux loss keeps working as long as ``route`` runs once per block forward.

Shape legend: T tokens, D model dim, I expert intermediate dim, E experts, K top-k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from swiftmoe._checks import is_int, is_number

from . import _hf_common as hf
from .base import ExpertSpec, RouteResult

__all__ = ["HFFusedExpertsAdapter", "fused_mismatch"]

_PARAMS = ("gate_up_proj", "down_proj")
# Flags set by transformers' use_experts_implementation; the value this adapter reproduces.
_EXPERT_FLAGS = (
    ("has_bias", False),
    ("has_gate", True),
    ("is_concatenated", True),
    ("has_post_expert_norm", False),
    ("_is_expert_parallel", False),
)


def _is_tensor_param(t: object) -> bool:
    return isinstance(t, torch.Tensor)


def _full_shapes(block: nn.Module) -> tuple[torch.Size, torch.Size] | None:
    """Per-expert (gate_up, down) shapes from the live weights or the removal record."""
    ex = block.experts
    gu, dn = getattr(ex, "gate_up_proj", None), getattr(ex, "down_proj", None)
    if _is_tensor_param(gu) and _is_tensor_param(dn):
        if gu.dim() != 3 or dn.dim() != 3:
            return None
        return gu.shape[1:], dn.shape[1:]
    rec = hf.removed_record(block)
    if gu is None and dn is None and rec is not None and len(rec.shapes) == 2:
        return rec.shapes[0], rec.shapes[1]
    return None


def fused_mismatch(block: nn.Module) -> str | None:
    """Why ``block`` is not a fused-experts MoE block, or None when it is."""
    kids = hf.gate_and_experts(block)
    if isinstance(kids, str):
        return kids
    gate, ex = kids
    if isinstance(gate, nn.Linear):
        return "gate is an nn.Linear (per-expert ModuleList form, not a router module)"
    w = getattr(gate, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return "gate has no 2-D weight of shape (experts, hidden)"
    num_e, dim = w.shape
    k = getattr(gate, "top_k", None)
    if not is_int(k, 1, num_e):
        return f"gate.top_k is {k!r}, want an int in [1, {num_e}]"
    if isinstance(ex, nn.ModuleList):
        return "experts is an nn.ModuleList (per-expert form)"
    for flag, want in _EXPERT_FLAGS:
        if getattr(ex, flag, want) != want:
            return f"experts.{flag} is {getattr(ex, flag)!r}; only {want!r} is supported"
    apply_gate = getattr(type(ex), "_apply_gate", None)
    if apply_gate is not None and getattr(apply_gate, "__name__", "") != "_default_apply_gate":
        return (
            "experts overrides _apply_gate (a custom gating), which this adapter cannot reproduce"
        )
    if not callable(getattr(ex, "act_fn", None)):
        return "experts has no callable act_fn"
    extra = sorted(n for n, _ in ex.named_parameters() if n not in _PARAMS)
    if extra:
        return f"experts holds parameters {extra} besides {list(_PARAMS)}"
    shapes = _full_shapes(block)
    if shapes is None:
        return "experts has no 3-D gate_up_proj and down_proj parameters"
    gu, dn = shapes
    ex_e = getattr(ex, "gate_up_proj", None)
    if ex_e is not None and (ex_e.shape[0] != num_e or ex.down_proj.shape[0] != num_e):
        return f"experts hold {ex_e.shape[0]} experts, the router scores {num_e}"
    if getattr(ex, "is_transposed", False):
        ok = gu[0] == dim and gu[1] % 2 == 0 and tuple(dn) == (gu[1] // 2, dim)
        want = "gate_up_proj (E, D, 2I) and down_proj (E, I, D)"
    else:
        ok = gu[1] == dim and gu[0] % 2 == 0 and tuple(dn) == (dim, gu[0] // 2)
        want = "gate_up_proj (E, 2I, D) and down_proj (E, D, I)"
    if not ok:
        return (
            f"expert shapes gate_up {tuple(gu)}, down {tuple(dn)} do not fit hidden size {dim}; "
            f"want {want}"
        )
    j = getattr(block, "jitter_noise", 0.0)
    if not is_number(j):
        return f"jitter_noise is {j!r}, want a number"
    return None


class HFFusedExpertsAdapter(hf.StructuralAdapter):
    """Fused-experts blocks: a router module ``gate`` and stacked ``experts`` weights."""

    name = "hf-fused-experts"

    kind = "fused-experts MoE block"
    mismatch = staticmethod(fused_mismatch)

    def num_experts(self, block: nn.Module) -> int:
        self._check(block, "num_experts")
        return int(block.gate.weight.shape[0])

    def top_k(self, block: nn.Module) -> int:
        self._check(block, "top_k")
        return int(block.gate.top_k)

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        self._check(block, "expert_spec")
        gu, dn = _full_shapes(block)
        transposed = bool(getattr(block.experts, "is_transposed", False))
        return ExpertSpec(
            names=_PARAMS,
            shapes=(torch.Size(gu), torch.Size(dn)),
            forward=hf.swiglu_fused(block.experts.act_fn, transposed),
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
        gate_up_S, down_S = stacked
        transposed = bool(getattr(block.experts, "is_transposed", False))
        return hf.grouped_swiglu_fused(
            block.experts.act_fn, transposed, x_MD, offs_S, gate_up_S, down_S
        )

    def route(self, block: nn.Module, x_TD: torch.Tensor, *, hooks: bool = True) -> RouteResult:
        """Run ``block.gate`` on ``x_TD``; extra is ``router_logits_TE``.

        With ``hooks`` (the default) the router is called as a module, so its forward hooks
        run: transformers records the router logits for the aux loss that way, one entry per
        call, so call it once per block forward. ``hooks=False`` runs the router's forward
        alone, for a look at the routing that must leave no trace (observe mode).
        """
        dim = int(block.gate.weight.shape[1])
        if x_TD.dim() != 2 or x_TD.shape[1] != dim:
            raise ValueError(
                f"{self.name}.route({hf.block_label(block)}): x_TD has shape {tuple(x_TD.shape)}, "
                f"want (tokens, {dim}); flatten with flatten_input first"
            )
        out = block.gate(x_TD) if hooks else block.gate.forward(x_TD)
        if not isinstance(out, tuple) or len(out) != 3:
            raise ValueError(
                f"{self.name}.route({hf.block_label(block)}): block.gate returned "
                f"{type(out).__name__}, want (router_logits_TE, topk_weights_TK, topk_ids_TK); "
                "register an adapter for this block type (see swiftmoe.adapters)"
            )
        logits_TE, topk_weights_TK, topk_ids_TK = out
        return RouteResult(
            topk_ids_TK=topk_ids_TK.long(), topk_weights_TK=topk_weights_TK, extra=logits_TE
        )

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        self._check(block, "get_expert_params")
        ex = block.experts
        if ex.gate_up_proj is None:
            raise hf.removed_error(self.name, block)
        return [(ex.gate_up_proj[e], ex.down_proj[e]) for e in range(ex.gate_up_proj.shape[0])]

    def remove_expert_params(self, block: nn.Module) -> None:
        """Unregister ``gate_up_proj`` and ``down_proj``; shapes and dtype stay on the block."""
        ex = block.experts
        rec = hf.record_removal(self.name, block, self.expert_spec(block), ex.gate_up_proj)
        for name in _PARAMS:
            ex.register_parameter(name, None)
        setattr(block, hf.REMOVED_ATTR, rec)

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        """Stack per-expert weights back into ``gate_up_proj`` and ``down_proj``.

        Live parameters are overwritten in place (optimizer references stay valid); removed
        ones are registered again with their original dtype, device and requires_grad.
        """
        spec = self.expert_spec(block)
        hf.check_expert_params(self.name, block, spec, self.num_experts(block), params)
        ex = block.experts
        rec = hf.removed_record(block)
        with torch.no_grad():
            for i, name in enumerate(_PARAMS):
                stacked = torch.stack([p[i].detach() for p in params])
                cur = getattr(ex, name)
                if cur is not None:
                    cur.copy_(stacked)
                    continue
                ex.register_parameter(name, hf.restored_param(stacked, rec))
        if rec is not None:
            delattr(block, hf.REMOVED_ATTR)

    def make_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x_shape: torch.Size
    ) -> torch.Tensor:
        """The 5.x block returns the hidden states alone, in the input's shape."""
        return y_TD.reshape(x_shape)
