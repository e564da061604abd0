"""The engine's collectives: ``all_to_all_single``, ``all_reduce`` and ``broadcast`` only.

They work on gloo (CPU) and NCCL (CUDA). Every one runs on the engine's process group, whose
timeout bounds it. With one rank they are local copies.

Shape legend: M rows exchanged (tokens or flat parameter elements), D row width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Comm", "all_to_all_rows", "AllToAllFn"]


@dataclass(frozen=True)
class Comm:
    """The engine's place in its process group."""

    rank: int
    world_size: int
    group: Any = None

    def all_to_all(
        self, x_MD: torch.Tensor, out_splits: list[int], in_splits: list[int]
    ) -> torch.Tensor:
        """Non-differentiable ``all_to_all_single`` with uneven splits along dim 0."""
        if self.world_size == 1:
            return x_MD.clone()
        out = x_MD.new_empty((sum(out_splits), *x_MD.shape[1:]))
        dist.all_to_all_single(out, x_MD.contiguous(), out_splits, in_splits, group=self.group)
        return out

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast from the group's rank 0."""
        if self.world_size > 1:
            dist.broadcast(t, group=self.group, group_src=0)
        return t


class AllToAllFn(torch.autograd.Function):
    """``all_to_all_single`` whose backward is the reverse ``all_to_all_single``.

    ``anchor`` is a scalar that requires grad, so the op sits in the autograd graph on every
    rank even when this rank has no tokens; every rank then runs the backward collective.
    """

    @staticmethod
    def forward(ctx, x_MD, anchor, comm: Comm, out_splits, in_splits):  # noqa: D102
        ctx.comm, ctx.out_splits, ctx.in_splits = comm, out_splits, in_splits
        ctx.x_requires_grad = x_MD.requires_grad
        return comm.all_to_all(x_MD.detach(), out_splits, in_splits)

    @staticmethod
    def backward(ctx, g_MD):  # noqa: D102
        g = ctx.comm.all_to_all(g_MD.contiguous(), ctx.in_splits, ctx.out_splits)
        return (g if ctx.x_requires_grad else None), None, None, None, None


def all_to_all_rows(
    x_MD: torch.Tensor,
    anchor: torch.Tensor,
    comm: Comm,
    out_splits: list[int],
    in_splits: list[int],
) -> torch.Tensor:
    """Differentiable uneven ``all_to_all_single`` of rows (in_splits: rows sent to each rank;
    out_splits: rows received from each rank)."""
    if comm.world_size == 1:
        return x_MD
    if torch.is_grad_enabled():
        return AllToAllFn.apply(x_MD, anchor, comm, out_splits, in_splits)
    return comm.all_to_all(x_MD, out_splits, in_splits)
