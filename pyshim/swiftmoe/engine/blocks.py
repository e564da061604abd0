"""Finding the MoE blocks of a model: by adapter, and by shape for the ones no adapter handles.

Shape legend: E experts of a block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from swiftmoe.adapters import MoEAdapter, find_adapter, registered_adapters

__all__ = ["MoEBlock", "find_moe_blocks", "refusal_reason"]


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


def refusal_reason(module: nn.Module) -> str:
    """Why no adapter takes ``module``: the reason of the adapter that claims its kind
    (naming the missing piece), else a note that no adapter knows blocks of this shape."""
    for adapter in registered_adapters():
        try:
            if adapter.claims(module):
                reason = adapter.why_not(module)
                if reason:
                    return f"{adapter.name}: {reason}"
        except Exception as e:  # an adapter's own bug must not hide the others' reasons
            return f"{adapter.name} failed to inspect it: {type(e).__name__}: {e}"
    kids = sorted(n for n, _ in module.named_children())
    return f"no adapter knows a block with children {kids}"


def find_moe_blocks(
    model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> list[MoEBlock]:
    """(fqn, block, adapter) of every MoE block, outermost first; raises on unsupported ones.

    A module an adapter matches is a block and its children are not searched. A module no
    adapter matches but that looks like an MoE block (an ``experts`` child, or a ``gate`` /
    ``router`` child with an expert count) raises ValueError naming it, the piece SwiftMoE
    cannot drive and the fix, unless ``filter_fn`` excludes it. Everything is decided here,
    before any collective: a block accepted here does not fail inside its forward.
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
            unsupported.append(
                f"{fqn or '<root>'} ({type(module).__name__}): {refusal_reason(module)}"
            )
            return
        for name, child in module.named_children():
            walk(child, f"{fqn}.{name}" if fqn else name)

    walk(model, "")
    if unsupported:
        raise ValueError(
            "replicate_: these modules look like MoE blocks but SwiftMoE cannot drive them "
            "exactly:\n  " + "\n  ".join(unsupported) + "\nfix: register an adapter of your own "
            "for such blocks (swiftmoe.adapters.register_adapter, see swiftmoe.adapters) or "
            "exclude them with filter_fn=lambda module, fqn: ..."
        )
    return found
