"""Pieces shared by the HuggingFace block adapters.

Pure SwiGLU expert functions (the grouped form of the per-expert layout is the reference
layer's, ``swiftmoe.nn.grouped_swiglu``), the structure both block forms share, the
training-time input jitter some blocks apply, the record a block keeps of its removed expert
parameters, and the validation of weights handed back.

Shape legend: T tokens, D model dim, I expert intermediate dim, E experts, K top-k, M rows of
all groups, S slots (groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import ExpertSpec, MoEAdapter

__all__ = [
    "REMOVED_ATTR",
    "RemovedExperts",
    "StructuralAdapter",
    "block_label",
    "check_expert_params",
    "gate_and_experts",
    "grouped_swiglu_fused",
    "jitter_input",
    "removed_record",
    "swiglu_fused",
    "swiglu_split",
]

#: Attribute under which a block records the expert parameters taken from it.
REMOVED_ATTR = "_swiftmoe_removed_experts"


def gate_and_experts(block: nn.Module) -> tuple[nn.Module, nn.Module] | str:
    """(gate, experts) of a block made of exactly those two children and no parameters of its
    own, the shape every HuggingFace MoE block here has; else why it is not one."""
    children = dict(block.named_children())
    if set(children) != {"gate", "experts"}:
        return f"children are {sorted(children)}, want exactly ['experts', 'gate']"
    if any(p is not None for p in block._parameters.values()):
        return "the block holds parameters of its own besides gate and experts"
    return children["gate"], children["experts"]


def block_label(block: nn.Module) -> str:
    return type(block).__name__


class StructuralAdapter(MoEAdapter):
    """An adapter that recognises its blocks by structure: ``mismatch(module)`` says why a
    module is not one of them (None when it is)."""

    #: What the adapter's blocks are, for error messages.
    kind = "MoE block"

    @staticmethod
    def mismatch(module: nn.Module) -> str | None:
        raise NotImplementedError

    def matches(self, module: nn.Module) -> bool:
        return self.mismatch(module) is None

    def why_not(self, module: nn.Module) -> str | None:
        """Why this adapter does not handle ``module`` (None when it does); for error messages."""
        return self.mismatch(module)

    def flatten_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """``x_TD`` of a block call, with the block's training-time input jitter applied.

        Call once per forward: with jitter on, each call draws fresh noise.
        """
        x = args[0] if args else kwargs.get("hidden_states")
        dim = int(block.gate.weight.shape[1])
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}.flatten_input({block_label(block)}): hidden_states is {got}, "
                f"want a tensor of shape (batch, seq, {dim})"
            )
        return jitter_input(block, x).reshape(-1, dim)

    def _check(self, block: nn.Module, what: str) -> None:
        reason = self.mismatch(block)
        if reason is not None:
            raise ValueError(
                f"{self.name}.{what}: {block_label(block)} is not a {self.kind}: "
                f"{reason}; use swiftmoe.adapters.find_adapter(block) to pick its adapter"
            )


def swiglu_split(act_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Expert forward for separate gate/up/down weights (per-expert ``nn.Linear`` layout).

    ``forward(x_TD, w_gate_ID, w_up_ID, w_down_DI) -> y_TD`` computes
    ``down(act(gate(x)) * up(x))`` with the same ops, in the same order, as the block's MLP.
    """

    def forward(
        x_TD: torch.Tensor, w_gate_ID: torch.Tensor, w_up_ID: torch.Tensor, w_down_DI: torch.Tensor
    ) -> torch.Tensor:
        h_TI = act_fn(F.linear(x_TD, w_gate_ID)) * F.linear(x_TD, w_up_ID)
        return F.linear(h_TI, w_down_DI)

    return forward


def swiglu_fused(
    act_fn: Callable[[torch.Tensor], torch.Tensor], transposed: bool
) -> Callable[..., torch.Tensor]:
    """Expert forward for a concatenated ``[gate; up]`` weight (fused-experts layout).

    Untransposed: ``forward(x_TD, gate_up_2ID, down_DI)``; transposed storage:
    ``forward(x_TD, gate_up_D2I, down_ID)``. The first half of the projection is the gate.
    """
    if transposed:

        def forward_t(x_TD: torch.Tensor, gate_up_D2I: torch.Tensor, down_ID: torch.Tensor):
            gate_TI, up_TI = torch.matmul(x_TD, gate_up_D2I).chunk(2, dim=-1)
            return torch.matmul(act_fn(gate_TI) * up_TI, down_ID)

        return forward_t

    def forward(x_TD: torch.Tensor, gate_up_2ID: torch.Tensor, down_DI: torch.Tensor):
        gate_TI, up_TI = F.linear(x_TD, gate_up_2ID).chunk(2, dim=-1)
        return F.linear(act_fn(gate_TI) * up_TI, down_DI)

    return forward


def grouped_swiglu_fused(
    act_fn: Callable[[torch.Tensor], torch.Tensor],
    transposed: bool,
    x_MD: torch.Tensor,
    offs_S: torch.Tensor,
    gate_up_S: torch.Tensor,
    down_S: torch.Tensor,
) -> torch.Tensor:
    """S experts of :func:`swiglu_fused` over contiguous row groups, with ``torch._grouped_mm``.

    ``gate_up_S`` is (S, 2I, D) and ``down_S`` (S, D, I), or (S, D, 2I) and (S, I, D) when
    ``transposed``.
    """
    if not transposed:
        gate_up_S, down_S = gate_up_S.transpose(-2, -1), down_S.transpose(-2, -1)
    gate_MI, up_MI = torch._grouped_mm(x_MD, gate_up_S, offs=offs_S).chunk(2, dim=-1)
    return torch._grouped_mm(act_fn(gate_MI) * up_MI, down_S, offs=offs_S)


def jitter_input(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply the multiplicative input jitter of Mixtral-style blocks (``jitter_noise``).

    The block multiplies its input by ``U(1 - j, 1 + j)`` noise in training mode, before both the
    router and the experts see it. The same draw from the same generator is made here, out of
    place, so routing and expert inputs are identical to the unpatched block's.
    """
    j = getattr(block, "jitter_noise", 0.0)
    if not block.training or not j or j <= 0:
        return x
    return x * torch.empty_like(x).uniform_(1.0 - j, 1.0 + j)


@dataclass(frozen=True)
class RemovedExperts:
    """What a block held before ``remove_expert_params``: enough to describe and restore it.

    Attributes:
        shapes: per-expert parameter shapes, in ``ExpertSpec.names`` order.
        dtype, device, requires_grad: of the removed parameters; restored weights get them back.
    """

    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool


def removed_record(block: nn.Module) -> RemovedExperts | None:
    rec = getattr(block, REMOVED_ATTR, None)
    return rec if isinstance(rec, RemovedExperts) else None


def removed_error(adapter: str, block: nn.Module) -> ValueError:
    """get_expert_params on a block whose expert weights remove_expert_params took."""
    return ValueError(
        f"{adapter}.get_expert_params({block_label(block)}): the expert weights were removed by "
        "remove_expert_params; take them from the engine, or call set_expert_params first"
    )


def record_removal(adapter: str, block: nn.Module, spec: ExpertSpec, w: torch.Tensor | None):
    """The RemovedExperts of a block about to lose its expert weights (w: one of them);
    ValueError when they are already gone."""
    if w is None:
        raise ValueError(f"{adapter}.remove_expert_params({block_label(block)}): already removed")
    return RemovedExperts(spec.shapes, w.dtype, w.device, w.requires_grad)


def restored_param(w: torch.Tensor, rec: RemovedExperts | None) -> nn.Parameter:
    """A removed weight registered again: ``w`` (a fresh tensor) with the removed one's dtype,
    device and requires_grad (requires_grad when nothing was recorded)."""
    if rec is None:
        return nn.Parameter(w, requires_grad=True)
    return nn.Parameter(w.to(device=rec.device, dtype=rec.dtype), requires_grad=rec.requires_grad)


def check_expert_params(
    adapter: str,
    block: nn.Module,
    spec: ExpertSpec,
    num_experts: int,
    params: Sequence[tuple[torch.Tensor, ...]],
) -> None:
    """Raise ValueError, naming the bad entry and the fix, unless ``params`` fits ``spec``."""
    where = f"{adapter}.set_expert_params({block_label(block)})"
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise ValueError(
            f"{where}: params must be a sequence of {num_experts} per-expert tuples, "
            f"got {type(params).__name__}; pass [(" + ", ".join(spec.names) + "), ...]"
        )
    if len(params) != num_experts:
        raise ValueError(
            f"{where}: got weights for {len(params)} experts, the block has {num_experts}; "
            "pass one tuple per expert, in expert-id order"
        )
    for e, p in enumerate(params):
        if not isinstance(p, (tuple, list)) or len(p) != len(spec.names):
            raise ValueError(
                f"{where}: params[{e}] must be a tuple of {len(spec.names)} tensors "
                f"({', '.join(spec.names)}), got {type(p).__name__}"
                + (f" of length {len(p)}" if isinstance(p, (tuple, list)) else "")
            )
        for name, want, t in zip(spec.names, spec.shapes, p, strict=True):
            if not isinstance(t, torch.Tensor):
                raise ValueError(
                    f"{where}: params[{e}].{name} is {type(t).__name__}, want a tensor"
                )
            if t.shape != want:
                raise ValueError(
                    f"{where}: params[{e}].{name} has shape {tuple(t.shape)}, want {tuple(want)}; "
                    "export the weights from a block of the same configuration"
                )
