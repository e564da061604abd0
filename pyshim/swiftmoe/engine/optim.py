"""The statically sharded expert optimizer and the two exchanges around its step.

Rank r owns elements [r*P//N, (r+1)*P//N) of every expert's flattened parameter vector (P
elements; the sidecar uses the same formula), with fp32 master weights and the optimizer state
of one ``torch.optim`` optimizer over this rank's shards, one tensor [E, n_r] per layer.

* Gradient exchange (a sparse reduce-scatter): one ``all_to_all_single`` sends chunk c of every
  slot's gradient to rank c; the owner sums the replicas of each expert in slot order.
* Remap (a sparse all-gather): one ``all_to_all_single`` sends each updated shard, cast to the
  slot dtype, to the slots of the next placement.

Both use one static layout, built once: the slot side of the exchange with peer c is, layer by
layer and slot by slot, chunk c of the slot's flat weights; the shard side with peer q is, layer
by layer, q's S slots of this rank's chunk. Chunk c of a slot is one contiguous range of its
flat weights, so both sides are moved with strided copies between views (one per layer where
the shards of the layer are equal and every peer exchanges as much, else one per layer and
peer); no per-element index is built.

Replica sums: expert e's gradient is ((0 + g_k1) + g_k2) + ... over its slots k1 < k2 < ... in
global slot order, on every device (CPU: sequential ``index_add_``; elsewhere a gather of every
expert's first replica, then one ``index_add_`` per further replica round, whose indices are
distinct, so no atomics race).

With one rank both exchanges are the identity: the buffers are used where they are, uncopied.
On CUDA an optimizer that takes ``fused`` (Adam, AdamW, SGD...) runs fused over the master
shards unless ``optimizer_kwargs`` names ``fused`` or ``foreach``: one pass over the fp32
state per step instead of one per elementwise operation.

Shape legend:
    L  MoE layers    E  experts of a layer    N  ranks (Q: peer)    S  slots per rank
    K  slots of a layer, N*S    P  elements of one expert
    n  elements of this rank's shard of one expert (n_c: of rank c's shard)
    W  elements exchanged with one peer
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from swiftmoe.engine.dist import Comm

__all__ = ["shard_bounds", "ExchangeLayout", "ShardedExpertOptimizer", "replica_rounds"]


def shard_bounds(numel: int, world_size: int) -> list[int]:
    """[c*P//N for c in 0..N]: rank c owns [bounds[c], bounds[c+1])."""
    return [c * numel // world_size for c in range(world_size + 1)]


def replica_rounds(slots_K: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """(slot positions k, experts) of round j: the j-th replica of every expert with more than j,
    slots in ascending order. Within a round no expert repeats."""
    seen: dict[int, int] = {}
    rounds: list[tuple[list[int], list[int]]] = []
    for k, e in enumerate(slots_K):
        j = seen.get(e, 0)
        seen[e] = j + 1
        if j == len(rounds):
            rounds.append(([], []))
        rounds[j][0].append(k)
        rounds[j][1].append(e)
    return rounds


class ExchangeLayout:
    """Where every layer's chunks sit in the buffers of the slot <-> shard exchanges.

    Slot side (sent by the gradient exchange, received by the remap): peer-major; the part for
    peer c is ``peer_W[c]`` elements, layer by layer ``S * n_c`` of them, at ``peer_off[c] +
    layer_off_NL[c][l]``. Shard side: ``own_W`` elements per peer, layer l at ``own_off_L[l]``.
    """

    def __init__(self, numels_L: Sequence[int], slots_per_rank: int, comm: Comm) -> None:
        N, r, S = comm.world_size, comm.rank, slots_per_rank
        self.S, self.N = S, N
        self.numels_L = list(numels_L)
        self.bounds_L = [shard_bounds(P, N) for P in self.numels_L]
        self.shard_L = [b[r + 1] - b[r] for b in self.bounds_L]
        # Elements exchanged with peer c on the slot side, and with any peer on the shard side.
        self.peer_W = [sum(S * (b[c + 1] - b[c]) for b in self.bounds_L) for c in range(N)]
        self.own_W = sum(S * n for n in self.shard_L)
        self.own_off_L = [sum(S * n for n in self.shard_L[:i]) for i in range(len(self.shard_L))]
        self.peer_off = [sum(self.peer_W[:c]) for c in range(N)]
        self.layer_off_NL = [
            [sum(S * (b[c + 1] - b[c]) for b in self.bounds_L[:i]) for i in range(len(numels_L))]
            for c in range(N)
        ]
        self.slot_total = sum(self.peer_W)
        # A layer moves with one [N, S, n] copy when its shards are equal and the slot side is
        # [N, W] (every peer exchanges as much); else with one [S, n_c] copy per peer.
        same_width = len(set(self.peer_W)) == 1
        self.even_L = [same_width and P % N == 0 for P in self.numels_L]

    def slot_side_copy(
        self, peer_M: torch.Tensor, slots_L: Sequence[torch.Tensor], to_peer: bool
    ) -> None:
        """Copy between the flat slot-side buffer peer_M and the layers' flat_SP [S, P]:
        into peer_M when ``to_peer``, out of it otherwise (both ways casting to the target)."""
        N, S = self.N, self.S
        for i, (flat_SP, P, b) in enumerate(
            zip(slots_L, self.numels_L, self.bounds_L, strict=True)
        ):
            if self.even_L[i]:
                n, off = P // N, self.layer_off_NL[0][i]
                peer_NSn = peer_M.view(N, self.peer_W[0])[:, off : off + S * n].view(N, S, n)
                slot_NSn = flat_SP.view(S, N, n).transpose(0, 1)
                dst, src = (peer_NSn, slot_NSn) if to_peer else (slot_NSn, peer_NSn)
                dst.copy_(src)
                continue
            for c in range(N):
                n_c = b[c + 1] - b[c]
                if n_c == 0:
                    continue
                a = self.peer_off[c] + self.layer_off_NL[c][i]
                peer_Sn = peer_M[a : a + S * n_c].view(S, n_c)
                slot_Sn = flat_SP[:, b[c] : b[c + 1]]
                dst, src = (peer_Sn, slot_Sn) if to_peer else (slot_Sn, peer_Sn)
                dst.copy_(src)


def _rounds_on(
    slots_K: Sequence[int], num_experts: int, device
) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
    """replica_rounds(slots_K) on ``device``: (first_E, rounds). ``first_E``: every expert's
    first slot, in expert order, when each of the ``num_experts`` has a slot (else None, and
    ``rounds`` holds every round); ``rounds``: the further rounds as (slot ids, expert ids)."""
    rounds = replica_rounds(slots_K)
    ks0, es0 = rounds[0] if rounds else ([], [])
    first = None
    if sorted(es0) == list(range(num_experts)):
        ks = [k for _, k in sorted(zip(es0, ks0, strict=True))]
        first, rounds = torch.tensor(ks, dtype=torch.long, device=device), rounds[1:]
    return first, [
        (
            torch.tensor(ks, dtype=torch.long, device=device),
            torch.tensor(es, dtype=torch.long, device=device),
        )
        for ks, es in rounds
    ]


def _sum_replicas(
    recv_NSn: torch.Tensor,
    slots_K: torch.Tensor,
    num_experts: int,
    sequential: bool,
    rounds: tuple[torch.Tensor | None, list] | None = None,
) -> torch.Tensor:
    """g_En: the rows of recv_NSn [N, S, n] (slot k = c*S + s) summed into their experts
    slots_K, every expert's replicas added in ascending slot order (fp32). ``rounds``:
    _rounds_on(slots_K) for the non-sequential path, when the caller keeps them."""
    N, S, n = recv_NSn.shape
    device = recv_NSn.device
    if sequential:  # CPU index_add_ adds the indexed rows one after the other
        g_En = torch.zeros(num_experts, n, dtype=torch.float32, device=device)
        slots_K = slots_K.to(device)
        if N == 1 or recv_NSn.stride(0) == S * n:
            g_En.index_add_(0, slots_K, recv_NSn.reshape(N * S, n))
        else:
            for c in range(N):
                g_En.index_add_(0, slots_K[c * S : (c + 1) * S], recv_NSn[c])
        return g_En
    rows_Kn = recv_NSn.reshape(N * S, n)
    if rounds is None:
        rounds = _rounds_on(slots_K.tolist(), num_experts, device)
    first_E, further = rounds
    if first_E is None:
        g_En = torch.zeros(num_experts, n, dtype=torch.float32, device=device)
    else:  # 0 + g is g: the first replicas are gathered, not added
        g_En = rows_Kn.index_select(0, first_E).to(torch.float32)
    for k_t, e_t in further:
        g_En.index_add_(0, e_t, rows_Kn.index_select(0, k_t))
    return g_En


def _exchange(comm: Comm, buf: torch.Tensor, out_splits: list[int], in_splits: list[int]):
    """``comm.all_to_all`` of a buffer the caller made for it and drops after: with one rank
    the buffer itself, with no copy."""
    if comm.world_size == 1:
        return buf
    return comm.all_to_all(buf, out_splits, in_splits)


def _fused_default(optimizer_class: type, kwargs: dict, device: torch.device) -> dict:
    """``kwargs`` with ``fused=True`` on CUDA for a class that takes it, unless they choose
    ``fused`` or ``foreach`` themselves (or ``differentiable``, which fused kernels refuse)."""
    if device.type != "cuda" or {"fused", "foreach", "differentiable"} & set(kwargs):
        return kwargs
    try:
        takes = "fused" in inspect.signature(optimizer_class).parameters
    except (TypeError, ValueError):
        takes = False
    return {**kwargs, "fused": True} if takes else kwargs


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
        self.comm, self.S, self.grad_scale = comm, slots_per_rank, grad_scale
        self.layout = ExchangeLayout([t.shape[1] for t in full_L], slots_per_rank, comm)
        r = comm.rank
        self.masters: list[torch.Tensor] = [
            full[:, b[r] : b[r + 1]].detach().to(torch.float32).clone().requires_grad_()
            for full, b in zip(full_L, self.layout.bounds_L, strict=True)
        ]
        kwargs = _fused_default(optimizer_class, optimizer_kwargs, self.masters[0].device)
        self.optimizer = optimizer_class(self.masters, **kwargs)
        # Per layer, the replica rounds of the non-sequential sum under the placement they
        # were built for: they change with the placement only.
        self._rounds_L: list[tuple[list[int], list] | None] = [None] * len(self.masters)

    def reduce_grads(
        self, grads_L: Sequence[torch.Tensor], slots_L: Sequence[torch.Tensor]
    ) -> None:
        """Sum every expert's slot gradients (grad_SP per layer, any float dtype) into the
        owners' master grads; they travel and are summed in fp32."""
        lay, N, S = self.layout, self.comm.world_size, self.S
        send = torch.empty(lay.slot_total, dtype=torch.float32, device=grads_L[0].device)
        lay.slot_side_copy(send, [g.reshape(S, -1) for g in grads_L], to_peer=True)
        recv_NW = _exchange(self.comm, send, [lay.own_W] * N, lay.peer_W).view(N, lay.own_W)
        for i, (m, n, off, slots_K) in enumerate(
            zip(self.masters, lay.shard_L, lay.own_off_L, slots_L, strict=True)
        ):
            recv_NSn = recv_NW[:, off : off + S * n].view(N, S, n)
            sequential = m.device.type == "cpu"
            rounds = None if sequential else self._replica_rounds(i, slots_K, m.device)
            g_En = _sum_replicas(recv_NSn, slots_K, m.shape[0], sequential, rounds)
            m.grad = g_En if self.grad_scale == 1.0 else g_En.mul_(self.grad_scale)

    def _replica_rounds(self, i: int, slots_K: torch.Tensor, device) -> tuple:
        """Layer i's _rounds_on(slots_K), rebuilt only when its placement changed."""
        key = slots_K.tolist()
        hit = self._rounds_L[i]
        if hit is None or hit[0] != key:
            hit = self._rounds_L[i] = (key, _rounds_on(key, self.masters[i].shape[0], device))
        return hit[1]

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def remap(self, slots_L: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Send the shards to the slots of placement ``slots_L``; returns flat_SP per layer."""
        lay, N, S = self.layout, self.comm.world_size, self.S
        device = self.masters[0].device
        send_NW = torch.empty(N, lay.own_W, dtype=dtype, device=device)
        for m, n, off, slots_K in zip(
            self.masters, lay.shard_L, lay.own_off_L, slots_L, strict=True
        ):
            idx_K = slots_K.to(device)
            send_NSn = send_NW[:, off : off + S * n].view(N, S, n)
            if N == 1 or lay.own_W == S * n:  # cast the E shards, gather straight in place
                torch.index_select(m.detach().to(dtype), 0, idx_K, out=send_NSn.view(N * S, n))
            else:
                send_NSn.copy_(m.detach().index_select(0, idx_K).view(N, S, n))
        recv = _exchange(self.comm, send_NW.view(-1), lay.peer_W, [lay.own_W] * N)
        out_L = [torch.empty(S, P, dtype=dtype, device=recv.device) for P in lay.numels_L]
        lay.slot_side_copy(recv, out_L, to_peer=False)
        return out_L

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
