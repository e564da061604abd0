"""The engine's collectives: ``all_to_all_single`` (also started without waiting), ``all_reduce``
and ``broadcast`` only.

They work on gloo (CPU) and NCCL (CUDA). Every one runs on the engine's process group, whose
timeout bounds it. With one rank they are local copies.

Shape legend: M rows exchanged (tokens or flat parameter elements), D row width.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Comm", "LoneForwardError", "all_to_all_rows", "AllToAllFn"]


class LoneForwardError(RuntimeError):
    """A rank ran an MoE forward that the other ranks did not run in time."""


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
        out, work = self.all_to_all_async(x_MD, out_splits, in_splits)
        if work is not None:
            work.wait()
        return out

    def all_to_all_async(
        self, x_MD: torch.Tensor, out_splits: list[int], in_splits: list[int]
    ) -> tuple[torch.Tensor, Any]:
        """``all_to_all`` started without waiting: (the output, its work; None with one rank).

        The output holds the rows once ``work.wait()`` returns (on NCCL: once the stream that
        waits has reached them). The caller keeps ``x_MD`` alive until then.
        """
        if self.world_size == 1:
            return x_MD.clone(), None
        out = x_MD.new_empty((sum(out_splits), *x_MD.shape[1:]))
        work = dist.all_to_all_single(
            out, x_MD.contiguous(), out_splits, in_splits, group=self.group, async_op=True
        )
        return out, work

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def all_reduce_within_(self, t: torch.Tensor, timeout_s: float, what: str) -> torch.Tensor:
        """``all_reduce_`` that waits at most ``timeout_s`` for the other ranks (gloo; other
        backends wait as ``all_reduce_`` does). On expiry raises :class:`LoneForwardError`
        explaining ``what`` ran alone; the group is then unusable (the pending collective may
        pair with a later one), so the job must restart."""
        if self.world_size == 1:
            return t
        group = self.group if self.group is not None else dist.group.WORLD
        if dist.get_backend(group) != "gloo":
            return self.all_reduce_(t)
        work = dist.all_reduce(t, group=self.group, async_op=True)
        try:
            work.wait(timeout=datetime.timedelta(seconds=timeout_s))
        except RuntimeError as e:
            raise LoneForwardError(
                f"{what}: the other ranks did not run the same forward within "
                f"{timeout_s:g} s (eval_forward_timeout_s). Under SwiftMoE every forward of an "
                "MoE block is a collective, so every rank must run the same forwards: a "
                "forward on one rank only (`if rank == 0: model.generate(...)`) waits forever. "
                "Generate or evaluate on every rank, or export the experts into an unpatched "
                "copy (`handle.export_to(copy)`, called on every rank) and run that on rank 0. "
                "The process group is no longer usable: restart the job."
            ) from e
        return t

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast from the group's rank 0."""
        if self.world_size > 1:
            dist.broadcast(t, group=self.group, group_src=0)
        return t


class AllToAllFn(torch.autograd.Function):
    """``all_to_all_single`` whose backward is the reverse ``all_to_all_single``.

    ``anchor`` is a scalar that requires grad, so the op sits in the autograd graph on every
    rank even when this rank has no tokens; every rank then runs the backward collective. The
    backward gives the anchor a zero gradient, so ``anchor.grad`` says, on every rank alike,
    that a backward went through the expert layers.
    """

    @staticmethod
    def forward(ctx, x_MD, anchor, comm: Comm, out_splits, in_splits):  # noqa: D102
        ctx.comm, ctx.out_splits, ctx.in_splits = comm, out_splits, in_splits
        ctx.x_requires_grad = x_MD.requires_grad
        ctx.anchor_meta = (anchor.dtype, anchor.device)
        return comm.all_to_all(x_MD.detach(), out_splits, in_splits)

    @staticmethod
    def backward(ctx, g_MD):  # noqa: D102
        g = ctx.comm.all_to_all(g_MD.contiguous(), ctx.in_splits, ctx.out_splits)
        dtype, device = ctx.anchor_meta
        seen = torch.zeros((), dtype=dtype, device=device)
        return (g if ctx.x_requires_grad else None), seen, None, None, None


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
