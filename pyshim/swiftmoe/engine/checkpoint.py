"""Checkpoints of the engine: sharded state (exact resume), consolidated export, atomic saves.

Every function takes a :class:`CheckpointView`, the part of a replicating engine a checkpoint
reads and restores, and nothing more.

``sharded_state(view, iteration, plan_source_state)`` is this rank's part: its fp32 master
shards, its optimizer state and class, the placement in force, the iteration, and (rank 0) the
plan source's state. Each rank saves its own (:func:`save_checkpoint`); loading it at the same
world size and slots per rank gives bit-identical training from there on.

Loading is all or nothing: :func:`check_sharded_state` checks everything (format, shape, every
layer's placement and master shard, the optimizer's class and the structure of its state, the
iteration) without changing anything, and only then does :func:`load_sharded_state` write.

``consolidated(view)`` gathers every expert's full weights (fp32) on every rank; ``export_to``
installs them into an unpatched model through each block's adapter.

Shape legend: E experts of a layer, P elements of one expert.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swiftmoe._checks import is_int
from swiftmoe.engine.layer import ExpertLayer
from swiftmoe.engine.optim import ShardedExpertOptimizer
from swiftmoe.engine.plan import validate_slots
from swiftmoe.engine.plan_source import as_plan

__all__ = [
    "FORMAT",
    "CheckpointView",
    "check_sharded_state",
    "consolidated",
    "export_to",
    "load_sharded_state",
    "save_checkpoint",
    "sharded_state",
]

FORMAT = "swiftmoe-sharded-v2"
# v1 (still read) has no optimizer class and no plan-source state.
_FORMATS = ("swiftmoe-sharded-v1", FORMAT)
# An optimizer group's settings for how its step is computed, which a restore keeps as they are.
_HOW = ("fused", "foreach")


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


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def sharded_state(
    view: CheckpointView, iteration: int, plan_source_state: Any = None
) -> dict[str, Any]:
    """This rank's part of a checkpoint (see the module docstring)."""
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
        "optimizer_class": _class_name(type(opt.optimizer)),
        "optimizer": opt.optimizer.state_dict(),
        "plan_source": plan_source_state,
    }


def _fail(what: str) -> ValueError:
    return ValueError(f"load_state_dict: {what}; nothing was loaded")


def check_sharded_state(view: CheckpointView, state: Any) -> tuple[list[list[int]], int]:
    """Every check of loading ``state`` into ``view``, changing nothing: ValueError naming the
    problem and the fix, else (the placement to install, the iteration to resume at)."""
    if not isinstance(state, dict) or state.get("format") not in _FORMATS:
        raise _fail(
            f"not a SwiftMoE sharded checkpoint (format "
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
            raise _fail(
                f"checkpoint {key}={state.get(key)!r}, this run has {v}; restore at the same "
                "world size and slots_per_rank, each rank its own file (to change the world "
                "size, export the full expert weights with handle.export_to(unpatched_model) "
                "where they were saved, load that model's state_dict before swiftmoe.replicate_ "
                f"at the new size, and start the expert optimizer afresh){hint}"
            )
    it = state.get("iteration")
    if not is_int(it, 0):
        raise _fail(f"checkpoint iteration is {it!r}; want an integer >= 0 (handle.iteration)")
    layers = state.get("layers")
    if not isinstance(layers, list) or len(layers) != len(view.layers):
        raise _fail(
            f"checkpoint has {len(layers) if isinstance(layers, list) else 0} MoE layers, the "
            f"model has {len(view.layers)}; restore into the same model"
        )
    N, S = view.world_size, view.slots_per_rank
    slots_L = []
    for saved, layer, m in zip(layers, view.layers, view.optimizer.masters, strict=True):
        if not isinstance(saved, dict):
            raise _fail(f"checkpoint layer entry is {type(saved).__name__}, want a dict")
        if saved.get("fqn") != layer.fqn or saved.get("numel") != layer.P:
            raise _fail(
                f"checkpoint layer {saved.get('fqn')!r} (numel {saved.get('numel')}) does not "
                f"match model layer {layer.fqn!r} (numel {layer.P}); restore into the same model"
            )
        if saved.get("num_experts", layer.E) != layer.E:
            raise _fail(
                f"checkpoint layer {layer.fqn!r} has {saved.get('num_experts')} experts, the "
                f"model's has {layer.E}; restore into the same model"
            )
        try:
            (slots,) = as_plan([saved.get("slots")])
            validate_slots(slots, layer.E, N, S)
        except ValueError as e:
            raise _fail(f"checkpoint layer {layer.fqn!r} placement: {e}") from None
        slots_L.append(slots)
        t = saved.get("master")
        if not isinstance(t, torch.Tensor) or t.shape != m.shape or not t.is_floating_point():
            raise _fail(
                f"layer {layer.fqn!r} master has shape "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else None}, want {tuple(m.shape)}"
                " (floating point)"
            )
    _check_optimizer(view.optimizer, state)
    return slots_L, int(it)


def _check_optimizer(opt: ShardedExpertOptimizer, state: dict[str, Any]) -> None:
    """The saved optimizer state fits this optimizer: same class, same groups and parameters,
    per-parameter tensors shaped like (or broadcastable to) their master shard."""
    have = type(opt.optimizer)
    saved_cls = state.get("optimizer_class")
    if saved_cls is not None and saved_cls != _class_name(have):
        raise _fail(
            f"the checkpoint's expert optimizer is {saved_cls}, this run's is "
            f"{_class_name(have)}; build the handle with the checkpoint's optimizer (config "
            "optimizer=...), or start the expert optimizer afresh"
        )
    saved = state.get("optimizer")
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    per_param = saved.get("state") if isinstance(saved, dict) else None
    current = opt.optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not isinstance(per_param, dict):
        raise _fail("the checkpoint's optimizer state is not an optimizer state_dict")
    if len(groups) != len(current) or any(
        not isinstance(g, dict) or len(g.get("params") or ()) != len(c["params"])
        for g, c in zip(groups, current, strict=False)
    ):
        raise _fail(
            "the checkpoint's optimizer has other parameter groups than this run's; restore into "
            "the same model and configuration"
        )
    for g, c in zip(groups, current, strict=True):
        foreign = sorted(set(g) - set(c))
        if foreign:
            raise _fail(
                f"the checkpoint's optimizer has settings {foreign} that {have.__name__} does "
                "not: it was saved with another optimizer; build the handle with that one"
            )
    ids = [i for g in groups for i in g["params"]]
    masters = dict(zip(ids, opt.masters, strict=False))
    for pid, st in per_param.items():
        m = masters.get(pid)
        if m is None or not isinstance(st, dict):
            raise _fail(f"the checkpoint's optimizer state names parameter {pid!r}, unknown here")
        for key, v in st.items():
            if (
                isinstance(v, torch.Tensor)
                and v.dim() == m.dim()
                and any(a not in (1, b) for a, b in zip(v.shape, m.shape, strict=True))
            ):
                raise _fail(
                    f"the checkpoint's optimizer state {key!r} has shape {tuple(v.shape)}, the "
                    f"master shard {tuple(m.shape)}; restore at the same world size into the "
                    "same model"
                )


def load_sharded_state(
    view: CheckpointView, state: dict[str, Any], slots_L: list[list[int]]
) -> None:
    """Writes what ``sharded_state`` saved, once :func:`check_sharded_state` passed on every
    rank (it returned ``slots_L``); a collective: every rank calls it."""
    opt = view.optimizer
    with torch.no_grad():
        for saved, m in zip(state["layers"], opt.masters, strict=True):
            m.copy_(saved["master"])
    # How this run computes the step (fused kernels on CUDA, foreach) is its own, not the
    # checkpoint's: a state saved on GPUs loads on CPUs and back.
    how = [{k: g[k] for k in _HOW if k in g} for g in opt.optimizer.param_groups]
    opt.optimizer.load_state_dict(state["optimizer"])
    for g, h in zip(opt.optimizer.param_groups, how, strict=True):
        g.update(h)
    view.install([list(s) for s in slots_L])


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the usual 022."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` that never leaves a truncated or half-written ``path``.

    It writes to a temporary file in the same directory, flushes and fsyncs it, then renames
    it over ``path`` (atomic on POSIX) and syncs the directory. When anything fails (a full
    disk, a quota, an object that cannot be pickled) the temporary file is removed, ``path``
    keeps what it held, and the error is raised. The file gets the mode of the one it replaces,
    or 0666 less the umask, as ``torch.save`` would give it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename itself is done
    finally:
        os.close(dfd)


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
