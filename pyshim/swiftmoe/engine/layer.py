"""Per-block runtime: the replicated expert execution of one MoE layer, and observe mode.

Replicate mode, rank r of N with S slots (DESIGN.md "One training iteration"):
route -> local counts -> all_reduce of the [N, E] count matrix -> split of every expert's tokens
over its replicas from these actual counts -> send order by destination slot ->
all_to_all_single -> S slot GEMMs over contiguous groups -> reverse all_to_all_single ->
weighted combine. The slot weights are leaf tensors that require grad and are not registered
on the model, so the user's optimizer and DDP never see them.

Load statistics of training-mode forwards live on the block as non-persistent buffers
(``swiftmoe_loads_E``: global assignments per expert; ``swiftmoe_dropped``: dropped
assignments), read and reset at step.

Shape legend:
    T  tokens of this rank   D  model dim    A  assignments, T*top_k   M  rows of a group
    E  experts               N  ranks (Q: source rank)    S  slots per rank
    K  slots of the layer, N*S (or top-k in ids_TK / weights_TK)      P  elements of one expert
"""

from __future__ import annotations

import inspect
import math
import types
from typing import Any

import torch
from torch import nn

from swiftmoe.adapters.base import ExpertSpec, MoEAdapter
from swiftmoe.engine import dispatch as dp
from swiftmoe.engine.dist import Comm, all_to_all_rows
from swiftmoe.engine.plan import max_over_mean

__all__ = ["ExpertLayer", "ObservedLayer", "LOADS_BUFFER", "DROPPED_BUFFER"]

LOADS_BUFFER = "swiftmoe_loads_E"
DROPPED_BUFFER = "swiftmoe_dropped"


def use_grouped_mm(
    adapter: MoEAdapter, spec: ExpertSpec, device: torch.device, dtype: torch.dtype
) -> bool:
    """Run a rank's slots with ``torch._grouped_mm`` (one grouped GEMM per weight)?

    Only where it is fast and supported (shared/calibration/README.md): the adapter provides
    ``grouped_forward``, CUDA on Hopper or newer, bf16/fp16 weights, and every weight dim a
    multiple of 8 (16-byte aligned rows). Elsewhere the slots run as per-slot matmuls.
    """
    if getattr(adapter, "grouped_forward", None) is None or not hasattr(torch, "_grouped_mm"):
        return False
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if any(int(d) % 8 for shape in spec.shapes for d in shape):
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _add_stat_buffers(block: nn.Module, num_experts: int, device: torch.device) -> None:
    for name, shape in ((LOADS_BUFFER, (num_experts,)), (DROPPED_BUFFER, ())):
        if name in block._buffers:
            raise ValueError(
                f"replicate_: block {type(block).__name__} already carries {name}; "
                "swiftmoe.replicate_ was applied to this model twice"
            )
        block.register_buffer(
            name, torch.zeros(shape, dtype=torch.long, device=device), persistent=False
        )


class ExpertLayer:
    """One MoE block under replicate mode: slot weights, placement and the dispatch."""

    def __init__(
        self,
        index: int,
        fqn: str,
        block: nn.Module,
        adapter: MoEAdapter,
        spec: ExpertSpec,
        num_experts: int,
        top_k: int,
        comm: Comm,
        slots_per_rank: int,
        engine: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.index, self.fqn, self.block, self.adapter, self.spec = index, fqn, block, adapter, spec
        self.E, self.top_k, self.S = num_experts, top_k, slots_per_rank
        self.comm, self.engine = comm, engine
        self.device, self.dtype = device, dtype
        self.numels = [math.prod(s) for s in spec.shapes]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.numels))]
        self.P = sum(self.numels)
        self.grouped = use_grouped_mm(adapter, spec, device, dtype)
        self.slots: list[int] = []
        self.slot_params: list[tuple[torch.Tensor, ...]] = []
        self.stacked: tuple[torch.Tensor, ...] = ()
        self.last_max_over_mean = 1.0
        _add_stat_buffers(block, num_experts, device)

    # ---- slot weights -------------------------------------------------------------------------

    def slots_on_device(self, slots_K: list[int]) -> torch.Tensor:
        """slots_K as an int64 tensor on the layer's device (the one in force if unchanged)."""
        if slots_K == self.slots:
            return self.slots_dev
        return torch.tensor(slots_K, dtype=torch.long, device=self.device)

    def set_slots(self, slots_K: list[int], flat_SP: torch.Tensor) -> None:
        """Install a placement and its slot weights flat_SP [S, P] (this rank's slots)."""
        if slots_K != self.slots:  # what derives from the placement changes with it only
            self.slots = list(slots_K)
            self.perm_K, self.inv_K = dp.slot_order(self.slots)
            self.slots_t = torch.tensor(self.slots, dtype=torch.long)
            self.slots_dev = self.slots_t.to(self.device)
        flat_SP = flat_SP.detach()
        if self.grouped:
            self.stacked = tuple(
                flat_SP[:, o : o + n].reshape(self.S, *shape).contiguous().requires_grad_()
                for o, n, shape in zip(self.offsets, self.numels, self.spec.shapes, strict=True)
            )
            self.slot_params = []
        else:
            self.slot_params = [
                tuple(
                    flat_SP[s, o : o + n].view(shape).detach().requires_grad_()
                    for o, n, shape in zip(self.offsets, self.numels, self.spec.shapes, strict=True)
                )
                for s in range(self.S)
            ]
            self.stacked = ()

    def leaves(self) -> list[torch.Tensor]:
        if self.grouped:
            return list(self.stacked)
        return [p for ps in self.slot_params for p in ps]

    def slot_grads(self) -> torch.Tensor:
        """Gradients of this rank's slots as fp32 grad_SP [S, P] (zero where none)."""
        g_SP = torch.zeros(self.S, self.P, dtype=torch.float32, device=self.device)
        if self.grouped:
            for o, n, t in zip(self.offsets, self.numels, self.stacked, strict=True):
                if t.grad is not None:
                    g_SP[:, o : o + n] = t.grad.reshape(self.S, n)
        else:
            for s, ps in enumerate(self.slot_params):
                for o, n, t in zip(self.offsets, self.numels, ps, strict=True):
                    if t.grad is not None:
                        g_SP[s, o : o + n] = t.grad.reshape(n)
        return g_SP

    def zero_grad(self) -> None:
        for t in self.leaves():
            t.grad = None

    # ---- forward ------------------------------------------------------------------------------

    def install(self) -> None:
        layer = self

        def forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return layer.forward(*args, **kwargs)

        self.block.forward = types.MethodType(forward, self.block)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        block, adapter = self.block, self.adapter
        x = args[0] if args else kwargs["hidden_states"]
        x_TD = adapter.flatten_input(block, args, kwargs)
        route = adapter.route(block, x_TD)
        y_TD = self.run(x_TD, route.topk_ids_TK, route.topk_weights_TK)
        return adapter.make_output(block, y_TD, route, x.shape)

    def run(
        self, x_TD: torch.Tensor, ids_TK: torch.Tensor, weights_TK: torch.Tensor
    ) -> torch.Tensor:
        comm, S, E = self.comm, self.S, self.E
        N, r = comm.world_size, comm.rank
        T, top_k = ids_TK.shape
        e_A = ids_TK.reshape(-1).long()
        cap = dp.capacity_of(self.engine.config.capacity_factor, e_A.numel(), E)
        order_M, counts_E, dropped = dp.order_by_expert(e_A, E, cap)

        counts_NE = torch.zeros(N, E, dtype=torch.long, device=x_TD.device)
        counts_NE[r] = counts_E
        comm.all_reduce_(counts_NE)
        rs = self.engine.split(counts_NE.cpu(), self.index)

        my_K = rs.send_K
        send_A = dp.send_index(order_M, my_K, self.perm_K, self.inv_K)
        x_send = x_TD.index_select(0, send_A // top_k)
        flow_QS = rs.recv_QS
        in_splits = my_K.view(N, S).sum(1).tolist()
        out_splits = flow_QS.sum(1).tolist()
        anchor = self.engine.anchor
        recv = all_to_all_rows(x_send, anchor, comm, out_splits, in_splits)

        to_slot, from_slot, rows_S = dp.regroup_received(flow_QS)
        dev = recv.device
        xs = recv.index_select(0, to_slot.to(dev))
        ys = self.run_slots(xs, rows_S)
        y_recv = ys.index_select(0, from_slot.to(dev))
        back = all_to_all_rows(y_recv, anchor, comm, in_splits, out_splits)

        y_AD = back.new_zeros(T * top_k, back.shape[-1]).index_copy(0, send_A, back)
        y_TD = (y_AD.view(T, top_k, y_AD.shape[-1]) * weights_TK.unsqueeze(-1).to(y_AD.dtype)).sum(
            dim=1
        )

        if self.block.training:  # statistics of training iterations only
            with torch.no_grad():
                getattr(self.block, LOADS_BUFFER).add_(counts_NE.sum(0))
                getattr(self.block, DROPPED_BUFFER).add_(dropped)
                self.last_max_over_mean = max_over_mean(rs.load_R)
            self.engine.on_layer_loads(self.index)
        return y_TD

    def run_slots(self, xs_MD: torch.Tensor, rows_S: torch.Tensor) -> torch.Tensor:
        """This rank's S slots over their contiguous token groups of xs_MD (slot-major)."""
        if xs_MD.shape[0] == 0:
            return xs_MD
        if self.grouped:
            offs_S = torch.cumsum(rows_S, 0).to(device=xs_MD.device, dtype=torch.int32)
            return self.adapter.grouped_forward(self.block, xs_MD, offs_S, self.stacked)
        outs = []
        start = 0
        for s, n in enumerate(rows_S.tolist()):
            if n:
                outs.append(self.spec.forward(xs_MD[start : start + n], *self.slot_params[s]))
            start += n
        return torch.cat(outs)


class ObservedLayer:
    """One MoE block under observe mode: its math untouched, its local loads recorded.

    A forward pre-hook reruns the block's router under ``no_grad`` with the RNG state saved
    and restored, so the block computes exactly what it computes unpatched.
    """

    def __init__(
        self,
        index: int,
        fqn: str,
        block: nn.Module,
        adapter: MoEAdapter,
        num_experts: int,
        engine: Any,
        device: torch.device,
    ) -> None:
        self.index, self.fqn, self.block, self.adapter = index, fqn, block, adapter
        self.E, self.engine = num_experts, engine
        self.slots: list[int] = []
        try:
            params = inspect.signature(adapter.route).parameters
        except (TypeError, ValueError):
            params = {}
        self._route_has_hooks = "hooks" in params
        _add_stat_buffers(block, num_experts, device)
        block.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        if not block.training:
            return None
        x = args[0] if args else kwargs["hidden_states"]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            x_TD = self.adapter.flatten_input(block, args, kwargs)
            if self._route_has_hooks:  # run the router without its hooks: leave no trace
                route = self.adapter.route(block, x_TD.detach(), hooks=False)
            else:
                route = self.adapter.route(block, x_TD.detach())
        ids = route.topk_ids_TK.reshape(-1).long()
        getattr(block, LOADS_BUFFER).add_(torch.bincount(ids, minlength=self.E))
        return None
