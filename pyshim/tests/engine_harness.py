"""The engine tests' harness (a helper module, no tests): a tiny model, data, placement
sequences, a reference run and the rank worker. pyshim/tests and test/ import it by name (the
pytest configuration puts pyshim/tests on the path).

Shape legend: B tokens of one rank, D model dim, E experts, N ranks, S slots per rank,
K = N*S slots.
"""

from __future__ import annotations

import random
import time

import torch
import torch.distributed as dist
from torch import nn

import swiftmoe.nn as smnn
from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig
from swiftmoe.engine.plan import validate_slots
from swiftmoe.planning.sources import CallablePlanSource

D, F, E, TOPK, LAYERS, B = 8, 16, 4, 2, 2, 8
SLOTS_FOR = {1: 6, 2: 3, 4: 2}
OPTIMIZERS = {
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "SGD": {"lr": 0.1, "momentum": 0.9},
}


class TinyNet(nn.Module):
    """Dense in-projection, residual MoE layers with dense mixing, dense head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(D, D)
        self.moes = nn.ModuleList(smnn.MoE(D, F, E, TOPK) for _ in range(LAYERS))
        self.mix = nn.ModuleList(nn.Linear(D, D) for _ in range(LAYERS))
        self.head = nn.Linear(D, 1)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x_BD))
        for moe, mix in zip(self.moes, self.mix, strict=True):
            h = h + moe(h)
            h = h + torch.tanh(mix(h))
        return self.head(h).squeeze(-1)


def global_batch(
    step: int, world_size: int, skew: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(world_size * B, D, generator=g)
    if skew:  # push the router towards some experts so loads are uneven
        x[: world_size * B // 2] += 1.5
    y = torch.randn(world_size * B, generator=g)
    return x, y


def striped(reps_E: list[int], N: int, S: int, rng: random.Random) -> list[int]:
    """A valid layout with reps_E[e] replicas of e: expert-grouped items striped over ranks."""
    order = list(range(len(reps_E)))
    rng.shuffle(order)
    items = [e for e in order for _ in range(reps_E[e])]
    slots = [0] * (N * S)
    for j, e in enumerate(items):
        slots[(j % N) * S + j // N] = e
    for r in range(N):  # shuffle within each rank: per-rank counts are unchanged
        part = slots[r * S : (r + 1) * S]
        rng.shuffle(part)
        slots[r * S : (r + 1) * S] = part
    return slots


def adversarial_plan(iteration: int, N: int, S: int, layer: int) -> list[int]:
    """Placement for the step after ``iteration``: moves to unseen ranks, one hot expert, random."""
    K = N * S
    rng = random.Random(7919 * iteration + 31 * layer + N)
    kind = (iteration + layer) % 3
    if kind == 0:  # the static layout reversed: experts land on ranks that never held them
        slots = [E - 1 - (k % E) for k in range(K)]
    elif kind == 1:  # one expert fills most slots
        hot = (iteration + layer) % E
        reps = [1] * E
        reps[hot] = K - (E - 1)
        slots = striped(reps, N, S, rng)
    else:  # random replica counts
        reps = [1] * E
        for _ in range(K - E):
            reps[rng.randrange(E)] += 1
        slots = striped(reps, N, S, rng)
    validate_slots(slots, E, N, S)
    return slots


def adversarial_source(N: int, S: int) -> CallablePlanSource:
    return CallablePlanSource(
        lambda it, loads: [adversarial_plan(it, N, S, li) for li in range(len(loads))],
        name="adversarial",
    )


def reference_run(opt_name: str, steps: int, world_size: int) -> dict[str, torch.Tensor]:
    """Single-process dropless training on the global batch: the parameters after ``steps``."""
    model = TinyNet()
    opt = getattr(torch.optim, opt_name)(model.parameters(), **OPTIMIZERS[opt_name])
    for step in range(steps):
        x, y = global_batch(step, world_size)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expert_state(weights: dict) -> dict[str, torch.Tensor]:
    """A consolidated export in TinyNet state_dict naming (moes.i.w_gate [E, F, D], ...)."""
    out = {}
    for fqn, experts in weights.items():
        for i, name in enumerate(("w_gate", "w_up", "w_down")):
            out[f"{fqn}.{name}"] = torch.stack([p[i] for p in experts])
    return out


def allreduce_dense_grads(model: nn.Module, world_size: int) -> None:
    """What DDP does to the dense gradients: average them over the ranks."""
    for p in model.parameters():
        if p.grad is not None and world_size > 1:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def make_handle(
    world_size: int, opt_name: str, plan_source=None, source_kind="adversarial", **cfg_kw
):
    """TinyNet replicated on this rank, with its dense optimizer."""
    S = cfg_kw.pop("slots_per_rank", SLOTS_FOR[world_size])
    model = TinyNet()
    if plan_source is None and source_kind == "adversarial":
        plan_source = adversarial_source(world_size, S)
    cfg = SwiftMoEConfig(
        slots_per_rank=S,
        optimizer=opt_name,
        optimizer_kwargs=OPTIMIZERS[opt_name],
        plan_source=plan_source,
        plan_deadline_s=cfg_kw.pop("plan_deadline_s", 20.0),
        **cfg_kw,
    )
    handle = replicate_(model, cfg)
    dense_opt = getattr(torch.optim, opt_name)(handle.dense_parameters(), **OPTIMIZERS[opt_name])
    return model, handle, dense_opt


def train_steps(rank, world_size, model, handle, dense_opt, steps) -> dict:
    """Train over ``steps`` (an iterable of step numbers); placements, stats and losses."""
    placements, stats, losses = [], [], []
    for step in steps:
        placements.append(handle.placement)
        x, y = global_batch(step, world_size)
        x, y = x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        allreduce_dense_grads(model, world_size)
        dense_opt.step()
        stats.append(handle.step())
        dense_opt.zero_grad()
        handle.zero_grad()
        losses.append(float(loss.detach()))
    return {"placements": placements, "stats": stats, "losses": losses}


def full_state(model, handle) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update(expert_state(handle.export_expert_weights()))
    return state


def train_ranks(
    rank: int,
    world_size: int,
    opt_name: str,
    steps: int,
    plan_source=None,
    source_kind: str = "adversarial",
    **cfg_kw,
) -> dict:
    """One rank of distributed training of TinyNet; returns params, export and stats."""
    model, handle, dense_opt = make_handle(world_size, opt_name, plan_source, source_kind, **cfg_kw)
    t0 = time.perf_counter()
    out = train_steps(rank, world_size, model, handle, dense_opt, range(steps))
    out["elapsed"] = time.perf_counter() - t0
    out["state"] = full_state(model, handle)
    out["events"] = dict(handle.plan_events)
    src = handle.config.plan_source
    if hasattr(src, "close"):
        src.close()
    return out
