"""The statically sharded expert optimizer and the two exchanges around its step.

Rank r owns elements [r*P//N, (r+1)*P//N) of every expert's flattened parameter vector (P
elements; the sidecar uses the same formula), with fp32 master weights and the optimizer state
of one ``torch.optim`` optimizer over this rank's shards, one tensor [E, n_r] per layer.

* Gradient exchange (a sparse reduce-scatter): one ``all_to_all_single`` sends chunk c of every
  slot's gradient to rank c; the owner sums the replicas of each expert with ``index_add_``.
* Remap (a sparse all-gather): one ``all_to_all_single`` sends each updated shard, cast to the
  slot dtype, to the slots of the next placement.

Both use one static layout, built once: the slot side of the exchange with peer c is, layer by
layer and slot by slot, chunk c of the slot's flat weights; the shard side with peer q is, layer
by layer, q's S slots of this rank's chunk.

Shape legend:
    L  MoE layers    E  experts of a layer    N  ranks (Q: peer)    S  slots per rank
    P  elements of one expert    n  elements of this rank's shard of one expert
    W  elements exchanged with one peer
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from swiftmoe.dispatch import segment_gather_index
from swiftmoe.dist import Comm

__all__ = ["shard_bounds", "ExchangeLayout", "ShardedExpertOptimizer"]


def shard_bounds(numel: int, world_size: int) -> list[int]:
    """[c*P//N for c in 0..N]: rank c owns [bounds[c], bounds[c+1])."""
    return [c * numel // world_size for c in range(world_size + 1)]


class ExchangeLayout:
    """The static index maps of the slot <-> shard exchanges for all layers."""

    def __init__(self, numels_L: Sequence[int], slots_per_rank: int, comm: Comm, device) -> None:
        N, r, S = comm.world_size, comm.rank, slots_per_rank
        self.S, self.N, self.rank = S, N, r
        self.numels_L = list(numels_L)
        self.bounds_L = [shard_bounds(P, N) for P in self.numels_L]
        self.shard_L = [b[r + 1] - b[r] for b in self.bounds_L]
        # Elements exchanged with peer c on the slot side, and with any peer on the shard side.
        self.peer_W = [sum(S * (b[c + 1] - b[c]) for b in self.bounds_L) for c in range(N)]
        self.own_W = sum(S * n for n in self.shard_L)
        self.own_off_L = [sum(S * n for n in self.shard_L[:i]) for i in range(len(self.shard_L))]
        self.slot_base_L = [
            sum(S * P for P in self.numels_L[:i]) for i in range(len(self.numels_L))
        ]
        self.slot_total = sum(S * P for P in self.numels_L)
        starts, lens = [], []
        for c in range(N):
            for base, P, b in zip(self.slot_base_L, self.numels_L, self.bounds_L, strict=True):
                for s in range(S):
                    starts.append(base + s * P + b[c])
                    lens.append(b[c + 1] - b[c])
        self.slot_index = segment_gather_index(
            torch.tensor(starts, dtype=torch.long),
            torch.tensor(lens, dtype=torch.long),
            self.slot_total,
        ).to(device)


class ShardedExpertOptimizer:
    """fp32 master shards of every expert, one optimizer over them, and the exchanges."""

    def __init__(
        self,
        full_L: Sequence[torch.Tensor],
        slots_per_rank: int,
        comm: Comm,
        optimizer_class: type[torch.optim.Optimizer],
        optimizer_kwargs: dict,
        grad_scale: float,
    ) -> None:
        device = full_L[0].device
        self.comm, self.S, self.grad_scale = comm, slots_per_rank, grad_scale
        self.layout = ExchangeLayout([t.shape[1] for t in full_L], slots_per_rank, comm, device)
        r = comm.rank
        self.masters: list[torch.Tensor] = [
            full[:, b[r] : b[r + 1]].detach().to(torch.float32).clone().requires_grad_()
            for full, b in zip(full_L, self.layout.bounds_L, strict=True)
        ]
        self.optimizer = optimizer_class(self.masters, **optimizer_kwargs)

    def reduce_grads(
        self, grads_L: Sequence[torch.Tensor], slots_L: Sequence[torch.Tensor]
    ) -> None:
        """Sum every expert's slot gradients (grad_SP per layer) into the owners' master grads."""
        lay, N, S = self.layout, self.comm.world_size, self.S
        grad_cat = torch.cat([g.reshape(-1) for g in grads_L])
        send = grad_cat.index_select(0, lay.slot_index)
        recv_NW = self.comm.all_to_all(send, [lay.own_W] * N, lay.peer_W).view(N, lay.own_W)
        for m, n, off, slots_K in zip(
            self.masters, lay.shard_L, lay.own_off_L, slots_L, strict=True
        ):
            rows_KN = recv_NW[:, off : off + S * n].reshape(N * S, n)
            g_En = torch.zeros_like(m).index_add_(0, slots_K.to(m.device), rows_KN)
            m.grad = g_En.mul_(self.grad_scale)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def remap(self, slots_L: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Send the shards to the slots of placement ``slots_L``; returns flat_SP per layer."""
        lay, N, S = self.layout, self.comm.world_size, self.S
        parts = [
            m.detach().index_select(0, slots_K.to(m.device)).to(dtype).reshape(N, S * n)
            for m, n, slots_K in zip(self.masters, lay.shard_L, slots_L, strict=True)
        ]
        send = torch.cat(parts, dim=1).reshape(-1)
        recv = self.comm.all_to_all(send, lay.peer_W, [lay.own_W] * N)
        slot_cat = torch.empty(lay.slot_total, dtype=dtype, device=recv.device)
        slot_cat[lay.slot_index] = recv
        return [
            slot_cat[base : base + S * P].view(S, P)
            for base, P in zip(lay.slot_base_L, lay.numels_L, strict=True)
        ]

    def gather_full(self) -> list[torch.Tensor]:
        """Every expert's full fp32 weights, full_EP per layer, on every rank."""
        lay, N = self.layout, self.comm.world_size
        mine = torch.cat([m.detach().reshape(-1) for m in self.masters])
        sizes = [
            sum(
                m.shape[0] * (b[c + 1] - b[c])
                for m, b in zip(self.masters, lay.bounds_L, strict=True)
            )
            for c in range(N)
        ]
        recv = self.comm.all_to_all(mine.repeat(N), sizes, [mine.numel()] * N)
        full_L = [
            torch.empty(m.shape[0], P, dtype=torch.float32, device=recv.device)
            for m, P in zip(self.masters, lay.numels_L, strict=True)
        ]
        off = 0
        for c in range(N):
            for full, b in zip(full_L, lay.bounds_L, strict=True):
                n = b[c + 1] - b[c]
                E = full.shape[0]
                full[:, b[c] : b[c + 1]] = recv[off : off + E * n].view(E, n)
                off += E * n
        return full_L
