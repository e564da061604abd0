"""Finding the MoE blocks of a model: by adapter, and by shape for the ones no adapter handles.

Shape legend: E experts of a block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from swiftmoe.adapters import MoEAdapter, find_adapter

__all__ = ["MoEBlock", "find_moe_blocks"]


class MoEBlock(NamedTuple):
    """An MoE block of a model: its fully qualified name, the module, and the adapter that
    handles it."""

    fqn: str
    module: nn.Module
    adapter: MoEAdapter


_MOE_CHILD_NAMES = ("experts",)
_ROUTER_CHILD_NAMES = ("gate", "router")
_EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")


def _looks_like_moe(module: nn.Module) -> bool:
    children = dict(module.named_children())
    if any(n in children for n in _MOE_CHILD_NAMES):
        return True
    has_router = any(n in children for n in _ROUTER_CHILD_NAMES)
    has_count = any(isinstance(getattr(module, a, None), int) for a in _EXPERT_COUNT_ATTRS) or any(
        isinstance(getattr(children.get(n), a, None), int)
        for n in _ROUTER_CHILD_NAMES
        for a in _EXPERT_COUNT_ATTRS
    )
    return has_router and has_count


def find_moe_blocks(
    model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> list[MoEBlock]:
    """(fqn, block, adapter) of every MoE block, outermost first; raises on unsupported ones.

    A module an adapter matches is a block and its children are not searched. A module no
    adapter matches but that looks like an MoE block (an ``experts`` child, or a ``gate`` /
    ``router`` child with an expert count) raises ValueError naming it, unless ``filter_fn``
    excludes it.
    """
    found: list[MoEBlock] = []
    unsupported: list[str] = []

    def walk(module: nn.Module, fqn: str) -> None:
        adapter = find_adapter(module)
        keep = filter_fn is None or filter_fn(module, fqn)
        if adapter is not None:
            if keep:
                found.append(MoEBlock(fqn, module, adapter))
            return
        if keep and _looks_like_moe(module):
            unsupported.append(f"{fqn or '<root>'} ({type(module).__name__})")
            return
        for name, child in module.named_children():
            walk(child, f"{fqn}.{name}" if fqn else name)

    walk(model, "")
    if unsupported:
        raise ValueError(
            "replicate_: these modules look like MoE blocks but no adapter handles them: "
            f"{', '.join(unsupported)}; register an adapter with "
            "swiftmoe.adapters.base.register_adapter(...) or exclude them with filter_fn"
        )
    return found
