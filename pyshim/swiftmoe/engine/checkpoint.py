"""Checkpoints of the engine: sharded state (exact resume) and consolidated export.

Every function takes a :class:`CheckpointView`, the part of a replicating engine a checkpoint
reads and restores, and nothing more.

``sharded_state(view, iteration)`` is this rank's part: its fp32 master shards, its optimizer
state, the placement in force and the iteration. Each rank saves its own (``torch.save``);
loading it at the same world size and slots per rank gives bit-identical training from there on.

``consolidated(view)`` gathers every expert's full weights (fp32) on every rank; ``export_to``
installs them into an unpatched model through each block's adapter.

Shape legend: E experts of a layer, P elements of one expert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swiftmoe.engine.layer import ExpertLayer
from swiftmoe.engine.optim import ShardedExpertOptimizer
from swiftmoe.engine.plan import validate_slots

__all__ = [
    "FORMAT",
    "CheckpointView",
    "consolidated",
    "export_to",
    "load_sharded_state",
    "sharded_state",
]

FORMAT = "swiftmoe-sharded-v1"


@dataclass(frozen=True)
class CheckpointView:
    """What a checkpoint reads and restores of a replicating engine.

    Attributes:
        world_size, rank, slots_per_rank: the shape a sharded checkpoint is only valid for.
        layers: the expert layers (fqn, E, P, placement, expert spec and adapter of each).
        optimizer: the sharded expert optimizer (master shards and optimizer state).
        install: ``install(slots_L)`` remaps the master shards to a placement and makes it
            current (a collective).
    """

    world_size: int
    rank: int
    slots_per_rank: int
    layers: Sequence[ExpertLayer]
    optimizer: ShardedExpertOptimizer
    install: Callable[[list[list[int]]], None]


def sharded_state(view: CheckpointView, iteration: int) -> dict[str, Any]:
    opt = view.optimizer
    return {
        "format": FORMAT,
        "world_size": view.world_size,
        "rank": view.rank,
        "slots_per_rank": view.slots_per_rank,
        "iteration": iteration,
        "layers": [
            {
                "fqn": layer.fqn,
                "num_experts": layer.E,
                "numel": layer.P,
                "slots": list(layer.slots),
                "master": m.detach().clone(),
            }
            for layer, m in zip(view.layers, opt.masters, strict=True)
        ],
        "optimizer": opt.optimizer.state_dict(),
    }


def _check(state: dict[str, Any], view: CheckpointView) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"load_state_dict: not a SwiftMoE sharded checkpoint (format "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
            f"want {FORMAT!r}); pass what handle.state_dict() returned"
        )
    want = {
        "world_size": view.world_size,
        "rank": view.rank,
        "slots_per_rank": view.slots_per_rank,
    }
    for key, v in want.items():
        if state.get(key) != v:
            hint = (
                f"; set slots_per_rank={state.get(key)!r} (with 'auto' the sidecar chooses from "
                "the free GPU memory of the moment)"
                if key == "slots_per_rank"
                else ""
            )
            raise ValueError(
                f"load_state_dict: checkpoint {key}={state.get(key)!r}, this run has {v}; "
                "restore at the same world size and slots_per_rank, each rank its own file "
                f"(or load a consolidated export with handle.load_expert_weights){hint}"
            )
    layers = state.get("layers")
    if not isinstance(layers, list) or len(layers) != len(view.layers):
        raise ValueError(
            f"load_state_dict: checkpoint has {len(layers) if isinstance(layers, list) else 0} "
            f"MoE layers, the model has {len(view.layers)}; restore into the same model"
        )
    for saved, layer, m in zip(layers, view.layers, view.optimizer.masters, strict=True):
        if saved.get("fqn") != layer.fqn or saved.get("numel") != layer.P:
            raise ValueError(
                f"load_state_dict: checkpoint layer {saved.get('fqn')!r} (numel "
                f"{saved.get('numel')}) does not match model layer {layer.fqn!r} (numel "
                f"{layer.P}); restore into the same model"
            )
        t = saved.get("master")
        if not isinstance(t, torch.Tensor) or t.shape != m.shape:
            raise ValueError(
                f"load_state_dict: layer {layer.fqn!r} master has shape "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else None}, want {tuple(m.shape)}"
            )


def load_sharded_state(view: CheckpointView, state: dict[str, Any]) -> int:
    """Restore what ``sharded_state`` saved (a collective: every rank calls it); returns the
    iteration it was saved at."""
    _check(state, view)
    N, S = view.world_size, view.slots_per_rank
    slots_L = []
    for saved, layer in zip(state["layers"], view.layers, strict=True):
        validate_slots(saved["slots"], layer.E, N, S)
        slots_L.append(list(saved["slots"]))
    opt = view.optimizer
    with torch.no_grad():
        for saved, m in zip(state["layers"], opt.masters, strict=True):
            m.copy_(saved["master"])
    opt.optimizer.load_state_dict(state["optimizer"])
    view.install(slots_L)
    return int(state["iteration"])


def consolidated(view: CheckpointView) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """{block fqn: per expert, its tensors in expert_spec order} with full fp32 weights."""
    full_L = view.optimizer.gather_full()
    out: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    for layer, full_EP in zip(view.layers, full_L, strict=True):
        experts = []
        for e in range(layer.E):
            experts.append(
                tuple(
                    full_EP[e, o : o + n].view(shape).clone()
                    for o, n, shape in zip(
                        layer.offsets, layer.numels, layer.spec.shapes, strict=True
                    )
                )
            )
        out[layer.fqn] = experts
    return out


def export_to(
    weights: dict[str, list[tuple[torch.Tensor, ...]]],
    layers: Sequence[ExpertLayer],
    model: nn.Module,
) -> None:
    """Install consolidated ``weights`` into the blocks of an unpatched ``model`` (same fqns)."""
    for layer in layers:
        try:
            block = model.get_submodule(layer.fqn)
        except AttributeError as e:
            raise ValueError(
                f"export_to: the model has no module {layer.fqn!r}; export into a model built "
                "with the same architecture as the replicated one"
            ) from e
        if not layer.adapter.matches(block):
            raise ValueError(
                f"export_to: module {layer.fqn!r} is a {type(block).__name__}, which adapter "
                f"{layer.adapter.name} does not handle; export into an unpatched model of the "
                "same architecture"
            )
        layer.adapter.set_expert_params(block, weights[layer.fqn])
