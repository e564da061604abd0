"""The step-time cost model's parameters in a training job: :class:`StepCosts`.

What the engine prices with ``swiftmoe.engine.costmodel`` (the split's stage 1 on several nodes,
``swiftmoe.engine.split.priced``, and burst replicas, ``swiftmoe.engine.burst``) must be the same
on every rank, or the ranks would split differently. :meth:`StepCosts.agree` takes rank 0's
link bandwidths and expert throughput (from the sidecar's topology, the config, or the device
defaults below) and broadcasts them once, when the layers are built; :meth:`StepCosts.params`
gives a layer's :class:`~swiftmoe.engine.costmodel.CostParams` from its expert size and token
rows.
"""

from __future__ import annotations

import torch

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine.dist import Comm

__all__ = [
    "CPU_BW",
    "CPU_FLOPS_PER_THREAD",
    "CUDA_INTER_BW",
    "CUDA_INTRA_BW",
    "HOPPER_FLOPS_PER_S",
    "OTHER_CUDA_FLOPS_PER_S",
    "StepCosts",
    "default_bandwidths",
    "default_flops_per_s",
]

# Expert GEMM throughput (forward+backward FLOP/s of one rank) when the config leaves it 0:
# * Hopper or newer in bf16/fp16: the median over the five expert shapes of
#   calibration/h200-expert-ffn.json at 8,192 tokens (430.6, 580.9, 629.0, 672.9, 345.3 TFLOP/s);
# * other CUDA devices or dtypes: a quarter of it (an A100's bf16 peak is a third of an H200's);
# * CPU: 1e11 per torch thread, above the 0.07-0.09 TFLOP/s per thread measured in
#   calibration/cpu-expert-ffn.json, so the copy's saving is not overstated.
HOPPER_FLOPS_PER_S = 5.8e14
OTHER_CUDA_FLOPS_PER_S = HOPPER_FLOPS_PER_S / 4
CPU_FLOPS_PER_THREAD = 1e11
# Link bandwidths (bytes/s) when neither the sidecar's topology nor the config gives one:
# * CUDA: 1e11 within a node (below NVLink, above PCIe 5.0 x16) and 1.25e10 between nodes
#   (a 100 Gb/s NIC);
# * CPU (gloo): 5e8 both ways, the low end of what all_to_all_single moved per peer between two
#   gloo ranks on one machine (0.44-0.96 GB/s, 1-16 MiB per peer).
CUDA_INTRA_BW, CUDA_INTER_BW = 1e11, 1.25e10
CPU_BW = 5e8


def default_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    """The expert throughput default of a device and weight dtype (see the constants above)."""
    if device.type == "cuda":
        fast = dtype in (torch.bfloat16, torch.float16)
        if fast and torch.cuda.get_device_capability(device) >= (9, 0):
            return HOPPER_FLOPS_PER_S
        return OTHER_CUDA_FLOPS_PER_S
    return CPU_FLOPS_PER_THREAD * max(1, torch.get_num_threads())


def default_bandwidths(device: torch.device) -> tuple[float, float]:
    """(intra_bw, inter_bw) defaults of a device type, bytes/s (see the constants above)."""
    if device.type == "cuda":
        return CUDA_INTRA_BW, CUDA_INTER_BW
    return CPU_BW, CPU_BW


class StepCosts:
    """The cost parameters every layer shares: ranks, nodes, bandwidths, expert throughput.

    The same on every rank: build it with :meth:`agree` (a broadcast of rank 0's figures), so
    that no rank-local measurement can make the ranks disagree.
    """

    def __init__(
        self,
        world_size: int,
        ranks_per_node: int,
        intra_bw: float,
        inter_bw: float,
        flops_per_s: float,
    ) -> None:
        self.N = world_size
        self.rpn = ranks_per_node if 0 < ranks_per_node < world_size else 0
        self.intra_bw, self.inter_bw, self.flops_per_s = intra_bw, inter_bw, flops_per_s
        self._params: dict[tuple, cm.CostParams] = {}

    @classmethod
    def agree(
        cls,
        comm: Comm,
        device: torch.device,
        dtype: torch.dtype,
        ranks_per_node: int,
        bandwidths: tuple[float, float],
        flops_per_s: float,
    ) -> StepCosts:
        """The figures of rank 0: ``bandwidths`` (0 where unknown) and ``flops_per_s`` (0:
        unknown) fall back to the device defaults on rank 0, then rank 0's values are broadcast
        (a collective: every rank calls it)."""
        intra, inter = bandwidths
        d_intra, d_inter = default_bandwidths(device)
        vals = torch.tensor(
            [
                intra if intra > 0 else d_intra,
                inter if inter > 0 else d_inter,
                flops_per_s if flops_per_s > 0 else default_flops_per_s(device, dtype),
            ],
            dtype=torch.float64,
            device=device,
        )
        comm.broadcast_(vals)
        intra, inter, flops = (float(v) for v in vals.cpu().tolist())
        return cls(comm.world_size, ranks_per_node, intra, inter, flops)

    def params(self, expert_numel: int, weight_bytes: int, token_bytes: int) -> cm.CostParams:
        """The cost model's parameters of a layer: its expert size (elements, and bytes per
        element of its slot weights) and the bytes of one token's row in the all-to-all."""
        key = (expert_numel, weight_bytes, token_bytes)
        p = self._params.get(key)
        if p is None:
            p = cm.CostParams(
                ranks=self.N,
                ranks_per_node=self.rpn,
                token_bytes=float(token_bytes),
                expert_bytes=float(expert_numel * weight_bytes),
                flops_per_token=6.0 * expert_numel,
                flops_per_s=self.flops_per_s,
                intra_bw=self.intra_bw,
                inter_bw=self.inter_bw,
            )
            self._params[key] = p
        return p
