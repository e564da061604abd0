"""The step-time cost model, shared by the engine, the swiftmoe strategy and the simulator.

One MoE layer, one iteration, in milliseconds. The swiftmoe strategy (Go, plugins/swiftmoe)
plans placements for step time with the same model; the engine decides burst replicas with it
(``swiftmoe.engine.burst``); the simulator uses both. Shared test vectors keep the Go and
Python implementations equal, so a change here is a change of the spec:

* ``compute_ms(load_R) = 1e3 * flops_per_token * max_r load_R[r] / flops_per_s``
  (load_R: tokens each rank computes);
* ``a2a_ms(si_R, ri_R, se_R, re_R) = 4 * 1e3 * max_r max(max(si_r, ri_r) * token_bytes /
  intra_bw, max(se_r, re_r) * token_bytes / inter_bw)``, where si/ri are the tokens rank r sends
  to / receives from other ranks of its node and se/re those it sends to / receives from other
  nodes (a rank's own tokens do not travel). Four one-way exchanges of the same volume: dispatch
  and combine, forward and backward; the simulator's all-to-all (``swiftmoe.sim.model``);
* ``copy_ms(csi_R, cri_R, cse_R, cre_R) = 2 * 1e3 * max_r max(max(csi_r, cri_r) * expert_bytes /
  intra_bw, max(cse_r, cre_r) * expert_bytes / inter_bw)``: expert copies each rank sends /
  receives within and across nodes; the burst copy in forward and its gradient's return in
  backward;
* ``step_ms = compute_ms + a2a_ms (+ copy_ms of the bursts made)``; the engine overlaps the
  copies with the planned slots' compute, and ``copy_exposed_ms`` prices what that leaves (the
  burst decision and the simulator use it; the Go strategy prices ``copy_ms``).

Ranks r and q share a node when r // G == q // G, G = ranks_per_node; G = 0 or G >= N is one
node. An unknown input prices its term at 0, so the model degrades to what it can price: a
bandwidth of 0 makes its tier free (no bandwidths: compute only), and without flops_per_token or
flops_per_s compute is free (``CostParams.prices_compute`` says which). Everything is float64 and
numpy; no torch.

Shape legend:
    N  ranks;  R = N for per-rank vectors
    C  expert copies (one burst replica each: a source rank and a destination rank)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from swiftmoe._checks import is_int, is_number

__all__ = [
    "CostParams",
    "a2a_ms",
    "compute_ms",
    "FORWARD_SHARE",
    "copy_exposed_ms",
    "copy_ms",
    "copy_traffic",
    "node_of",
    "step_ms",
]

_NON_NEGATIVE = (
    "token_bytes",
    "expert_bytes",
    "flops_per_token",
    "flops_per_s",
    "intra_bw",
    "inter_bw",
)


@dataclass(frozen=True)
class CostParams:
    """The cost model's parameters (float64 except the two counts).

    Attributes:
        ranks: N, ranks of the job (>= 1).
        ranks_per_node: G; 0, or >= N, when every rank is on one node.
        token_bytes: bytes of one token's activation row in the all-to-all (d_model x
            activation bytes).
        expert_bytes: bytes of one expert's weights as held in a slot (all its tensors, biases
            included).
        flops_per_token: forward+backward FLOPs of one token through one expert (about 6 x the
            expert's parameter count: forward 2P, backward 4P); 0 when unknown.
        flops_per_s: effective expert GEMM throughput of one rank, FLOP/s; 0 when unknown.
        intra_bw: bytes/s between two ranks of one node; 0 when unknown.
        inter_bw: bytes/s between ranks of two nodes; 0 when unknown.
    """

    ranks: int
    ranks_per_node: int = 0
    token_bytes: float = 0.0
    expert_bytes: float = 0.0
    flops_per_token: float = 0.0
    flops_per_s: float = 0.0
    intra_bw: float = 0.0
    inter_bw: float = 0.0

    def __post_init__(self) -> None:
        if not is_int(self.ranks, 1):
            raise ValueError(
                f"CostParams.ranks is {self.ranks!r}: pass the job's ranks, an int >= 1"
            )
        if not is_int(self.ranks_per_node, 0):
            raise ValueError(
                f"CostParams.ranks_per_node is {self.ranks_per_node!r}: pass an int >= 0 "
                "(0 when every rank is on one node)"
            )
        for name in _NON_NEGATIVE:
            v = getattr(self, name)
            if not is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"CostParams.{name} is {v!r}: pass a finite number >= 0 (0 when unknown)"
                )
            object.__setattr__(self, name, float(v))

    @property
    def nodes(self) -> int:
        """Nodes of the job: ceil(N / G), 1 when G is 0 or >= N."""
        G = self.ranks_per_node
        if G == 0 or G >= self.ranks:
            return 1
        return -(-self.ranks // G)

    @property
    def prices_compute(self) -> bool:
        """compute_ms is known (flops_per_token and flops_per_s both given)."""
        return self.flops_per_token > 0 and self.flops_per_s > 0

    @property
    def prices_network(self) -> bool:
        """Some tier has a bandwidth (else a2a_ms and copy_ms are 0)."""
        return self.intra_bw > 0 or self.inter_bw > 0

    def as_dict(self) -> dict:
        """The fields by name (for JSON test vectors and logs)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def node_of(p: CostParams) -> np.ndarray:
    """int64 [N]: each rank's node, r // G (all 0 on one node)."""
    G = p.ranks_per_node
    r_R = np.arange(p.ranks, dtype=np.int64)
    if G == 0 or G >= p.ranks:
        return np.zeros(p.ranks, dtype=np.int64)
    return r_R // G


def _per_rank(p: CostParams, name: str, v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (p.ranks,):
        raise ValueError(
            f"{name} has shape {a.shape}, want ({p.ranks},): one value per rank of "
            f"CostParams.ranks = {p.ranks}"
        )
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0):
        raise ValueError(f"{name} holds a negative or non-finite value: pass counts >= 0")
    return a


def _over(bytes_R: np.ndarray, bw: float) -> np.ndarray:
    """Seconds to move bytes_R over a link of bw bytes/s; 0 when bw is unknown (0)."""
    if bw <= 0:
        return np.zeros_like(bytes_R)
    return bytes_R / bw


def compute_ms(p: CostParams, load_R) -> float:
    """The busiest rank's expert compute: 1e3 * flops_per_token * max_r load_R[r] / flops_per_s.

    load_R [N]: tokens each rank computes. 0 when compute is not priced (prices_compute).
    """
    load = _per_rank(p, "load_R", load_R)
    if not p.prices_compute or load.size == 0:
        return 0.0
    return 1e3 * p.flops_per_token * float(load.max()) / p.flops_per_s


def _tiers_ms(p: CostParams, unit_bytes: float, si, ri, se, re_, names) -> float:
    si, ri, se, re_ = (_per_rank(p, n, v) for n, v in zip(names, (si, ri, se, re_), strict=True))
    t_intra = _over(np.maximum(si, ri) * unit_bytes, p.intra_bw)
    t_inter = _over(np.maximum(se, re_) * unit_bytes, p.inter_bw)
    return float(np.maximum(t_intra, t_inter).max())


def a2a_ms(p: CostParams, si_R, ri_R, se_R, re_R) -> float:
    """The token all-to-all of a layer: 4 one-way exchanges (dispatch and combine, forward and
    backward), each the slowest rank's max over its two tiers of max(sent, received).

    si_R / ri_R [N]: tokens each rank sends to / receives from other ranks of its node; se_R /
    re_R [N]: the same across nodes. A rank's own tokens are in none of them.
    """
    t = _tiers_ms(p, p.token_bytes, si_R, ri_R, se_R, re_R, ("si_R", "ri_R", "se_R", "re_R"))
    return 4.0 * 1e3 * t


def copy_ms(p: CostParams, csi_R, cri_R, cse_R, cre_R) -> float:
    """The burst copies of a layer: the copy in forward and its gradient's return in backward.

    csi_R / cri_R [N]: expert copies each rank sends to / receives from other ranks of its node;
    cse_R / cre_R [N]: the same across nodes (``copy_traffic`` counts them from the copies).
    """
    t = _tiers_ms(
        p, p.expert_bytes, csi_R, cri_R, cse_R, cre_R, ("csi_R", "cri_R", "cse_R", "cre_R")
    )
    return 2.0 * 1e3 * t


#: The forward's share of an expert's forward+backward compute: one GEMM pass of three (the
#: backward computes the input's gradient and the weights').
FORWARD_SHARE = 1.0 / 3.0


def copy_exposed_ms(p: CostParams, planned_R, burst_R, csi_R, cri_R, cse_R, cre_R) -> float:
    """What the burst copies add to compute_ms once the planned slots' compute hides them.

    The engine starts the copy before the planned slots' forward and waits for it before the
    burst slots'; in backward the burst slots run first, and the gradients' return travels
    while the planned slots' backward runs (``swiftmoe.engine.burst_run``). Rank r's compute
    with its copies is then

        T_r = max(c_r, f * P_r) + max(c_r, (1 - f) * P_r) + B_r

    where c_r is rank r's one-way copy time (its tiers at once, as in ``copy_ms``), P_r and B_r
    the compute of its planned and burst slots' tokens, and f = ``FORWARD_SHARE``. Returns
    max_r T_r - max_r (P_r + B_r): between 0 (every copy hidden) and ``copy_ms`` (none).

    planned_R / burst_R [N]: tokens each rank's planned / burst slots compute; csi..cre as in
    ``copy_ms`` (``copy_traffic``). Without compute priced, nothing hides a copy: ``copy_ms``.
    """
    planned = _per_rank(p, "planned_R", planned_R)
    burst = _per_rank(p, "burst_R", burst_R)
    names = ("csi_R", "cri_R", "cse_R", "cre_R")
    csi, cri, cse, cre = (
        _per_rank(p, n, v) for n, v in zip(names, (csi_R, cri_R, cse_R, cre_R), strict=True)
    )
    b = p.expert_bytes
    c_R = 1e3 * np.maximum(
        _over(np.maximum(csi, cri) * b, p.intra_bw), _over(np.maximum(cse, cre) * b, p.inter_bw)
    )
    if c_R.size == 0 or not c_R.any():
        return 0.0
    if not p.prices_compute:
        return 2.0 * float(c_R.max())
    ms = 1e3 * p.flops_per_token / p.flops_per_s
    P, B = planned * ms, burst * ms
    f = FORWARD_SHARE
    T = np.maximum(c_R, f * P) + np.maximum(c_R, (1.0 - f) * P) + B
    return max(float(T.max() - (P + B).max()), 0.0)


def copy_traffic(p: CostParams, src_C, dst_C) -> tuple[np.ndarray, ...]:
    """(csi_R, cri_R, cse_R, cre_R), float64 [N] each, of expert copies src_C[c] -> dst_C[c].

    A copy onto its own source rank moves nothing; one within a node counts in the intra tier
    of both ends, one across nodes in the inter tier.
    """
    src = np.asarray(src_C, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst_C, dtype=np.int64).reshape(-1)
    if src.shape != dst.shape:
        raise ValueError(
            f"src_C has {src.size} copies and dst_C {dst.size}: pass one source and one "
            "destination rank per copy"
        )
    N = p.ranks
    bad = (src < 0) | (src >= N) | (dst < 0) | (dst >= N)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"copy {c} is rank {int(src[c])} -> {int(dst[c])}: ranks must be in 0..{N - 1}"
        )
    node_R = node_of(p)
    moved = src != dst
    same = moved & (node_R[src] == node_R[dst])
    cross = moved & ~same
    one = np.ones(src.size)

    def count(idx, sel):
        return np.bincount(idx[sel], one[sel], minlength=N).astype(np.float64)

    return count(src, same), count(dst, same), count(src, cross), count(dst, cross)


def step_ms(p: CostParams, load_R, si_R, ri_R, se_R, re_R, copies=None) -> float:
    """compute_ms + a2a_ms (+ copy_ms of ``copies``, copy_traffic's (csi, cri, cse, cre))."""
    t = compute_ms(p, load_R) + a2a_ms(p, si_R, ri_R, se_R, re_R)
    if copies is not None:
        t += copy_ms(p, *copies)
    return t
