"""The adapter contract between SwiftMoE's engine and a model's MoE block.

An adapter knows one kind of MoE block (HuggingFace Mixtral, Qwen3-MoE, SwiftMoE's own
``swiftmoe.nn.MoE``, or a team's own block). It tells the engine three things:

* how the block routes: ``route(block, x_TD)`` returns the top-k expert ids and their weights
  exactly as the unpatched block computes them, plus whatever extra output the block returns
  (router logits, for instance);
* what one expert is: ``expert_spec(block)`` gives the per-expert parameter shapes and a pure
  function ``forward(x_TD, *params) -> y_TD`` that runs one expert on its tokens;
* where the expert weights live: ``get_expert_params(block)`` returns, per expert, the tuple of
  tensors in ``expert_spec`` order, and ``remove_expert_params(block)`` detaches them from the
  block so that the user's optimizer and DDP no longer see them (the engine owns them now);
  ``set_expert_params(block, params)`` puts full weights back (consolidated export).

Finally ``make_output(block, y_TD, route_extra, x_shape)`` builds what the block's forward
returns from the combined expert output.

Shape legend: T tokens, D model dim, K top-k, E experts.

Register an adapter with :func:`register_adapter`; :func:`find_adapter` looks a block up,
most recently registered first, so a team's adapter overrides a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ExpertSpec",
    "RouteResult",
    "MoEAdapter",
    "register_adapter",
    "find_adapter",
    "registered_adapters",
]


@dataclass(frozen=True)
class ExpertSpec:
    """What one expert is.

    Attributes:
        names: parameter names, e.g. ``("w_gate", "w_up", "w_down")``.
        shapes: per-parameter shapes, identical for every expert of the block.
        forward: ``forward(x_TD, *params) -> y_TD``; must be a pure function of its inputs
            (autograd flows through ``params``).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    forward: Callable[..., torch.Tensor]

    @property
    def numel(self) -> int:
        """Elements of one expert's flattened parameters."""
        n = 0
        for s in self.shapes:
            k = 1
            for d in s:
                k *= int(d)
            n += k
        return n


@dataclass
class RouteResult:
    """The router's decision for T tokens.

    Attributes:
        topk_ids_TK: int64 expert ids.
        topk_weights_TK: combine weights (the block's own normalisation applied).
        extra: anything the block's output needs besides the expert output (router logits).
    """

    topk_ids_TK: torch.Tensor
    topk_weights_TK: torch.Tensor
    extra: Any = None


class MoEAdapter:
    """Base class for block adapters: the contract between the engine and one kind of MoE block.

    When each method is called: ``matches`` while ``replicate_`` walks the model (and by
    ``find_adapter``); ``num_experts``, ``top_k``, ``expert_spec`` and ``get_expert_params`` once
    per block at ``replicate_``, before any collective, then ``remove_expert_params`` once the
    engine holds the weights (replicate mode only); ``flatten_input``, ``route`` and
    ``make_output`` on every forward of the block (observe mode: ``flatten_input`` and ``route``
    in a forward pre-hook, under ``no_grad``); ``grouped_forward``, when provided, on every
    forward on GPUs; ``set_expert_params`` at ``handle.export_to``, on a block of an unpatched
    model.

    What none of them may do: change the block's routing or its expert math (the engine's
    equivalence with single-process training rests on ``route`` and ``expert_spec`` computing
    exactly what the unpatched block computes); keep references to the tensors they are given
    beyond the call; depend on the expert weights after ``remove_expert_params`` (shape queries
    must use the block's configuration or a record of its own); run collectives. Bad input
    raises ``ValueError`` naming the block and the fix. Everything but the hot-path methods
    (``flatten_input``, ``route``, ``make_output``, ``grouped_forward``) may be slow.

    The contract grows by optional methods with a default here, so that existing adapters keep
    working when the engine learns more (``grouped_forward`` is the first).
    """

    #: Human-readable name used in logs and errors.
    name: str = "adapter"

    #: Optional: ``grouped_forward(block, x_MD, offs_S, stacked) -> y_MD`` runs a rank's S slots
    #: over contiguous row groups (``offs_S`` int32 cumulative ends; ``stacked`` the slots'
    #: weights in ``expert_spec`` order, each (S, *shape)) with one ``torch._grouped_mm`` per
    #: weight, the same math as ``expert_spec(block).forward``. None: per-slot matmuls.
    grouped_forward: Callable[..., torch.Tensor] | None = None

    def matches(self, module: nn.Module) -> bool:
        """True when this adapter handles ``module``. Detect by structure where possible; must
        not raise for modules of other kinds."""
        raise NotImplementedError

    def num_experts(self, block: nn.Module) -> int:
        """E, the block's expert count."""
        raise NotImplementedError

    def top_k(self, block: nn.Module) -> int:
        """Experts per token, 1..E."""
        raise NotImplementedError

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        """What one expert is: parameter names and shapes, and its pure forward. Called before
        and after ``remove_expert_params``, so it must not read the expert weights."""
        raise NotImplementedError

    def route(self, block: nn.Module, x_TD: torch.Tensor) -> RouteResult:
        """Run the block's own router on flattened hidden states ``x_TD``: top-k ids (int64) and
        combine weights exactly as the unpatched block computes them, plus what ``make_output``
        needs (``extra``). Called once per block forward: routers with hooks (an aux-loss
        recorder) see one call, as unpatched."""
        raise NotImplementedError

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        """Per expert, its parameters in ``expert_spec(block).names`` order (views are fine).
        The engine copies them; it never writes to them."""
        raise NotImplementedError

    def remove_expert_params(self, block: nn.Module) -> None:
        """Detach the expert parameters from ``block`` (after the engine has copied them), so
        that the user's optimizer and DDP no longer see them."""
        raise NotImplementedError

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        """Install full expert weights back into an unpatched ``block`` (consolidated export);
        ``params`` as ``get_expert_params`` returns them."""
        raise NotImplementedError

    def make_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x_shape: torch.Size
    ) -> Any:
        """What ``block.forward`` returns, given the combined expert output ``y_TD`` and the
        ``route`` of the same forward."""
        raise NotImplementedError

    def flatten_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The hidden states of a ``block.forward(*args, **kwargs)`` call, as ``x_TD``. Called
        once per forward (an adapter whose block draws input noise draws it here)."""
        x = args[0] if args else kwargs["hidden_states"]
        return x.reshape(-1, x.shape[-1])


_REGISTRY: list[MoEAdapter] = []


def register_adapter(adapter: MoEAdapter) -> MoEAdapter:
    """Register ``adapter``; later registrations take precedence. Returns it."""
    if not isinstance(adapter, MoEAdapter):
        raise TypeError(
            f"register_adapter: expected a MoEAdapter instance, got {type(adapter).__name__}; "
            "subclass swiftmoe.adapters.MoEAdapter"
        )
    _REGISTRY.insert(0, adapter)
    return adapter


def find_adapter(module: nn.Module) -> MoEAdapter | None:
    """The adapter that handles ``module``, or None."""
    for a in _REGISTRY:
        if a.matches(module):
            return a
    return None


def registered_adapters() -> list[MoEAdapter]:
    return list(_REGISTRY)
