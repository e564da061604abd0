"""The simulator's cost model: pure functions from one layer's token placement to milliseconds.

Per iteration and MoE layer, for a cluster of N GPUs (G per node) with S slots each:

* expert compute: the slowest rank. ``per-slot``: the sum over the rank's slots of t(tokens in
  the slot) (one kernel per slot, the engine's CPU path); ``grouped``: t(tokens on the rank)
  (one grouped GEMM over the rank's slots, the engine's GPU path: torch._grouped_mm, whose time
  does not depend on how tokens spread over slots; calibration/h200-grouped-slots.json).
* token all-to-all: 4 one-way exchanges of the same volume (dispatch and combine, forward and
  backward). One exchange takes the slowest rank's max(intra-node bytes / intra bandwidth,
  inter-node bytes / inter bandwidth), where a rank's bytes in a tier are max(sent, received)
  (full-duplex links, tiers in parallel). A token is d_model * bytes_per_param bytes.
* gradient and weight transfers: every slot's gradient goes, 1/N per owner, to the N shard
  owners (reduce-scatter), and every slot receives all N updated shards of the expert it holds
  next (all-gather to the next placement). 2 * S * P * bytes_per_param * (N-1)/N bytes per rank
  and layer, P = d_model * d_ff * (3 if gated else 2). Static expert parallelism with the same S
  slots per GPU moves the same volume in its data-parallel expert reduction (all-reduce = reduce-
  scatter + all-gather), so it is charged to every system alike, each with its own S.
* migration (FlexMoE): the plan's ``migrated_bytes`` (weights + optimizer state of moved
  replicas) over the inter-node bandwidth (intra-node on one node; PCIe with offloaded optimizer
  state), charged to the iteration that first runs the new placement.

Shape legend: N ranks, S slots per rank, K = N*S slots, Q = N source ranks, R = N ranks,
E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from swiftmoe._checks import is_int, is_number
from swiftmoe.sim.calibration import ExpertTime
from swiftmoe.sim.traffic import SplitTraffic

__all__ = [
    "Cluster",
    "bound_layer",
    "a2a_cols_ms",
    "a2a_ms",
    "capacity_layer",
    "compute_ms",
    "Flow",
    "flow_layer",
    "flow_of",
    "LayerCost",
    "migration_ms",
    "padded_layer",
    "transfer_ms",
]

COMPUTE_MODELS = ("per-slot", "grouped")


@dataclass(frozen=True)
class Cluster:
    gpus: int
    gpus_per_node: int
    d_model: int
    d_ff: int
    gated: bool
    bytes_per_param: int
    optimizer_bytes: int
    intra_bw: float  # bytes/s
    inter_bw: float  # bytes/s
    pcie_bw: float  # bytes/s
    offload: bool
    compute_model: str

    def __post_init__(self) -> None:
        for name in ("gpus", "gpus_per_node", "d_model", "d_ff", "bytes_per_param"):
            v = getattr(self, name)
            if not is_int(v, 1):
                raise ValueError(f"--{name.replace('_', '-')} is {v!r}: pass an integer >= 1")
        if not is_number(self.optimizer_bytes) or self.optimizer_bytes < 0:
            raise ValueError(f"--optimizer-bytes is {self.optimizer_bytes!r}: pass an integer >= 0")
        for name in ("intra_bw", "inter_bw", "pcie_bw"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and np.isfinite(v)):
                raise ValueError(f"--{name.replace('_', '-')} is {v!r}: pass GB/s > 0")
        if self.compute_model not in COMPUTE_MODELS:
            raise ValueError(
                f"--compute-model is {self.compute_model!r}: pass one of {', '.join(COMPUTE_MODELS)}"
            )
        node_R = np.arange(self.gpus) // self.gpus_per_node
        object.__setattr__(self, "_node_R", node_R)
        object.__setattr__(self, "_node_starts", np.arange(0, self.gpus, self.gpus_per_node))

    @property
    def expert_numel(self) -> int:
        return self.d_model * self.d_ff * (3 if self.gated else 2)

    @property
    def token_bytes(self) -> int:
        return self.d_model * self.bytes_per_param

    @property
    def ranks_per_node(self) -> int:
        """For the token split's same-node preference: 0 when everything is on one node."""
        return self.gpus_per_node if self.gpus_per_node < self.gpus else 0


@dataclass
class LayerCost:
    compute_ms: float
    a2a_ms: float
    transfer_ms: float
    dropped: int
    load_R: np.ndarray  # real tokens processed per rank


def compute_ms(et: ExpertTime, tokens_RS: np.ndarray, model: str) -> float:
    """The slowest rank's expert time; tokens_RS [N, S] tokens per slot (padding included)."""
    t = np.asarray(tokens_RS, dtype=np.float64)
    if model == "grouped":
        return float(et(t.sum(axis=1)).max())
    return float(et(t).sum(axis=1).max())


def _a2a_from_tiers(c: Cluster, si, ri, se, re_) -> float:
    tb = c.token_bytes
    t_intra = np.maximum(si, ri) * tb / c.intra_bw
    t_inter = np.maximum(se, re_) * tb / c.inter_bw
    return 4.0 * 1e3 * float(np.maximum(t_intra, t_inter).max())


def a2a_ms(c: Cluster, F_QR: np.ndarray) -> float:
    """All four exchanges of a layer; F_QR tokens source rank q sends to rank r."""
    F = np.asarray(F_QR, dtype=np.float64)
    node_R, starts = c._node_R, c._node_starts  # type: ignore[attr-defined]
    own = np.diagonal(F)
    by_node_QM = np.add.reduceat(F, starts, axis=1)
    by_node_MR = np.add.reduceat(F, starts, axis=0)
    ar = np.arange(c.gpus)
    si = by_node_QM[ar, node_R] - own  # a rank's own tokens do not travel
    ri = by_node_MR[node_R, ar] - own
    se = F.sum(axis=1) - own - si
    re_ = F.sum(axis=0) - own - ri
    return _a2a_from_tiers(c, si, ri, se, re_)


def _cols_tiers(c: Cluster, w: np.ndarray):
    """(si, ri, se, re_) of F_QR = w for every source q (every source sends w_r to rank r)."""
    node_R, starts = c._node_R, c._node_starts  # type: ignore[attr-defined]
    size_M = np.diff(np.append(starts, c.gpus))
    node_sum_M = np.add.reduceat(w, starts)
    si = node_sum_M[node_R] - w
    se = w.sum() - node_sum_M[node_R]
    ri = (size_M[node_R] - 1) * w
    re_ = (c.gpus - size_M[node_R]) * w
    return si, ri, se, re_


def a2a_cols_ms(c: Cluster, w_R: np.ndarray) -> float:
    """a2a_ms of F_QR = w_R for every source q (every source sends w_r tokens to rank r)."""
    return _a2a_from_tiers(c, *_cols_tiers(c, np.asarray(w_R, dtype=np.float64)))


def bound_layer(
    c: Cluster, et: ExpertTime, total: int, S: int, static_a2a_ms: float = np.inf
) -> LayerCost:
    """The perfect-balance bound of a layer of ``total`` routed tokens on S slots per rank:
    every rank computes total/N tokens (spread evenly over its slots); the all-to-all is the
    lower of an even one (every source sends an equal share of its tokens to every rank) and
    ``static_a2a_ms`` (the static layout's under uniform routing, which keeps every token in its
    node when each node holds every expert); the transfers of S slots."""
    N = c.gpus
    mean = total / N
    return LayerCost(
        compute_ms=compute_ms(et, np.full((N, S), mean / S), c.compute_model),
        a2a_ms=min(a2a_cols_ms(c, np.full(N, mean / N)), static_a2a_ms),
        transfer_ms=transfer_ms(c, S),
        dropped=0,
        load_R=np.full(N, mean),
    )


def transfer_ms(c: Cluster, slots_per_rank: int) -> float:
    """Gradient reduce-scatter plus weight all-gather of one layer's slots."""
    N = c.gpus
    per_peer = slots_per_rank * c.expert_numel * c.bytes_per_param / N
    local = min(c.gpus_per_node, N)
    t = max((local - 1) * per_peer / c.intra_bw, (N - local) * per_peer / c.inter_bw)
    return 2.0 * 1e3 * t


def migration_ms(c: Cluster, migrated_bytes: int) -> float:
    if c.offload:
        bw = c.pcie_bw
    else:
        bw = c.inter_bw if c.gpus > c.gpus_per_node else c.intra_bw
    return 1e3 * migrated_bytes / bw


class Flow:
    """What the cost model needs of a split, from its nonzero pieces (never the dense matrix).

    Built from the F nonzero entries (q_F, k_F, amount_F) of flow_QK (tokens source rank q sends
    to slot k; the tests build them from the whole flow). Every field is float64 with
    exact integer values: x_RS [N, S] tokens per slot; per rank [N], tokens sent to (si_R) and
    received from (ri_R) other ranks of its node, sent to (se_R) and received from (re_R) other
    nodes (a rank's own tokens do not travel); per piece [F], its source q_F, destination rank
    r_F and its amount if it stays on the node between two ranks (intra_F, else 0) or leaves it
    (inter_F, else 0), for padding that rescales what each rank receives. ``planned``: the split's
    stage 1 (``split.Planned``) when the flow came from split_traffic's sums, else None.
    """

    __slots__ = (
        "x_RS",
        "si_R",
        "ri_R",
        "se_R",
        "re_R",
        "q_F",
        "r_F",
        "intra_F",
        "inter_F",
        "_traffic",
    )

    def __init__(self, c: Cluster, S: int, q_F, k_F, amount_F):
        N = c.gpus
        q_F = np.asarray(q_F, dtype=np.int64)
        k_F = np.asarray(k_F, dtype=np.int64)
        amt_F = np.asarray(amount_F, dtype=np.float64)
        rank_K, node_K = _slot_maps(c, S)
        r_F = rank_K[k_F]
        same_F = c._node_R[q_F] == node_K[k_F]  # type: ignore[attr-defined]
        self.inter_F = np.where(same_F, 0.0, amt_F)
        same_F &= q_F != r_F
        self.intra_F = np.where(same_F, amt_F, 0.0)
        self.x_RS = _sum_by(k_F, amt_F, N * S).reshape(N, S)
        self.si_R = _sum_by(q_F, self.intra_F, N)
        self.ri_R = _sum_by(r_F, self.intra_F, N)
        self.se_R = _sum_by(q_F, self.inter_F, N)
        self.re_R = _sum_by(r_F, self.inter_F, N)
        self.q_F, self.r_F = q_F, r_F
        self._traffic = None

    @classmethod
    def from_traffic(cls, c: Cluster, S: int, tr) -> Flow:
        """The same figures from swiftmoe.sim.traffic.split_traffic's per-rank sums (no pieces).

        tr must come from a split with ranks_per_node = c.ranks_per_node, so that its nodes are
        the cluster's."""
        f = cls.__new__(cls)
        f.x_RS = tr.x_K.reshape(c.gpus, S).astype(np.float64)
        f.si_R, f.ri_R = tr.si_Q.astype(np.float64), tr.ri_R.astype(np.float64)
        f.se_R, f.re_R = tr.se_Q.astype(np.float64), tr.re_R.astype(np.float64)
        f.q_F = f.r_F = f.intra_F = f.inter_F = None
        f._traffic = tr
        return f

    @property
    def planned(self):
        """The split's stage 1 (``split.Planned``) when the flow came from split_traffic's sums,
        else None."""
        return None if self._traffic is None else self._traffic.planned

    def sent_weighted(self, w_R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(si, se) [N]: tokens each rank sends within / across nodes, weighted by w_R[dest]."""
        if self._traffic is not None:
            return self._traffic.sent_weighted(w_R)
        s_F = w_R[self.r_F]
        N = self.si_R.size
        return _sum_by(self.q_F, self.intra_F * s_F, N), _sum_by(self.q_F, self.inter_F * s_F, N)


def _sum_by(idx_F: np.ndarray, w_F: np.ndarray, n: int) -> np.ndarray:
    """float64 [n]: w_F summed by index (bincount, float64 even with no pieces)."""
    return np.bincount(idx_F, w_F, minlength=n).astype(np.float64, copy=False)


_SLOT_MAPS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _slot_maps(c: Cluster, S: int) -> tuple[np.ndarray, np.ndarray]:
    """rank_K and node_K of slot k = r*S+s (cached per cluster shape)."""
    key = (c.gpus, c.gpus_per_node, S)
    maps = _SLOT_MAPS.get(key)
    if maps is None:
        rank_K = np.arange(c.gpus * S, dtype=np.int64) // S
        maps = (rank_K, rank_K // c.gpus_per_node)
        if len(_SLOT_MAPS) >= 16:
            _SLOT_MAPS.clear()
        _SLOT_MAPS[key] = maps
    return maps


def flow_of(c: Cluster, S: int, flow) -> Flow:
    """Flow of a split: swiftmoe.sim.traffic.split_traffic's sums, the nonzero entries
    (q_F, k_F, amount_F) of its flow, or the dense flow_QK int64 [N, N*S] (tensor or array)."""
    if isinstance(flow, SplitTraffic):
        return Flow.from_traffic(c, S, flow)
    if isinstance(flow, tuple):
        return Flow(c, S, *flow)
    t = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    t = t.reshape(c.gpus, c.gpus * S)
    q_F, k_F = np.nonzero(t)
    return Flow(c, S, q_F, k_F, t[q_F, k_F])


def flow_layer(c: Cluster, et: ExpertTime, flow: Flow, S: int) -> LayerCost:
    """A layer run by the engine: the flow of the engine's split, no padding."""
    return LayerCost(
        compute_ms=compute_ms(et, flow.x_RS, c.compute_model),
        a2a_ms=_a2a_from_tiers(c, flow.si_R, flow.ri_R, flow.se_R, flow.re_R),
        transfer_ms=transfer_ms(c, S),
        dropped=0,
        load_R=flow.x_RS.sum(axis=1),
    )


def _replicas(slots_K: np.ndarray, E: int) -> np.ndarray:
    return np.bincount(slots_K, minlength=E)


def _padded_a2a(c: Cluster, flow: Flow, buf_R: np.ndarray) -> float:
    """a2a_ms when rank r receives buf_R[r] tokens (padding included) in the pattern of the
    engine's flow: every source's share of r's real tokens is scaled to r's buffer (each source
    pads what it sends to r); a rank that gets no real token gets an equal share from every
    source."""
    real_R = flow.x_RS.sum(axis=1)
    has = real_R > 0
    scale_R = np.where(has, buf_R / np.where(has, real_R, 1.0), 0.0)
    si, se = flow.sent_weighted(scale_R)
    ri = flow.ri_R * scale_R
    re_ = flow.re_R * scale_R
    if not has.all():  # every source sends w_r = buf_r / N to such a rank (see a2a_cols_ms)
        wsi, wri, wse, wre = _cols_tiers(c, np.where(has, 0.0, buf_R / c.gpus))
        si += wsi
        ri += wri
        se += wse
        re_ += wre
    return _a2a_from_tiers(c, si, ri, se, re_)


def padded_layer(
    c: Cluster,
    et: ExpertTime,
    loads_E: np.ndarray,
    slots_K: np.ndarray,
    S: int,
    flow: Flow,
) -> LayerCost:
    """Static dropless, as DeepSpeed with drop_tokens off: tokens split evenly over an expert's
    replicas, every slot's buffer padded to the largest per-replica count (the all-reduced max).
    flow (the engine's split on the static placement) gives who sends to whom."""
    N = c.gpus
    L_E = np.asarray(loads_E, dtype=np.int64)
    slots_K = np.asarray(slots_K, dtype=np.int64)
    reps_E = _replicas(slots_K, L_E.size)
    held = reps_E > 0
    pad = int(np.max(-(-L_E[held] // reps_E[held]))) if held.any() else 0
    real_K = L_E[slots_K] / reps_E[slots_K]
    x_RS = np.full((N, S), float(pad))
    return LayerCost(
        compute_ms=compute_ms(et, x_RS, c.compute_model),
        a2a_ms=_padded_a2a(c, flow, x_RS.sum(axis=1)),
        transfer_ms=transfer_ms(c, S),
        dropped=0,
        load_R=real_K.reshape(N, S).sum(axis=1),
    )


def capacity_layer(
    c: Cluster,
    et: ExpertTime,
    loads_E: np.ndarray,
    slots_K: np.ndarray,
    S: int,
    capacity_factor: float,
    flow: Flow,
) -> LayerCost:
    """Static with a capacity factor: expert e may take cf * (tokens * k) / E tokens in all,
    ceil(that / replicas) per replica; the rest are dropped. Buffers are padded to capacity
    (DeepSpeed's fixed-shape dispatch), so compute and all-to-all see the capacity; flow
    (the engine's split on the static placement) gives who sends to whom."""
    N = c.gpus
    L_E = np.asarray(loads_E, dtype=np.int64)
    E = L_E.size
    slots_K = np.asarray(slots_K, dtype=np.int64)
    reps_E = np.maximum(_replicas(slots_K, E), 1)
    cap_E = np.ceil(capacity_factor * float(L_E.sum()) / (E * reps_E) - 1e-9).astype(np.int64)
    kept_E = np.minimum(L_E, reps_E * cap_E)
    cap_K = cap_E[slots_K]
    x_RS = cap_K.reshape(N, S).astype(np.float64)
    real_K = kept_E[slots_K] / reps_E[slots_K]
    return LayerCost(
        compute_ms=compute_ms(et, x_RS, c.compute_model),
        a2a_ms=_padded_a2a(c, flow, x_RS.sum(axis=1)),
        transfer_ms=transfer_ms(c, S),
        dropped=int((L_E - kept_E).sum()),
        load_R=real_K.reshape(N, S).sum(axis=1),
    )
