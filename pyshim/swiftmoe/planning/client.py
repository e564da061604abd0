"""The gRPC client of the sidecar's ``swiftmoe.v1.Planner`` service, and the job and plan types
it speaks in.

* :class:`SidecarClient`: every call has a deadline; the channel is created at the first call
  (grpcio is not fork-safe: create clients only after worker processes are spawned).
* :class:`JobSpec`: a job's shape as ``RegisterJob`` takes it (with the plugin digest the job
  trusts and the load history it resumes from); :class:`Registration` and :class:`SidecarPlan`:
  its answers as plain Python values.
* a job's load history (``ExportJob``, ``JobSpec.history``) as plain values:
  ``{"layers": [{"reports": [[count per expert], ...], "series": {"ewma": [value per expert]}}]}``,
  the reports oldest first (:func:`history_from_proto`, :func:`history_to_proto`).
* :class:`SidecarJob` (``swiftmoe.planning.job``) drives a registered job over these calls.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer (N ranks, S slots
per rank). ``loads_LE[l][e]`` is the global token count of expert e in layer l; ``slots_LK[l][k]``
is the expert held by slot k = r*S + s of layer l.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from swiftmoe._checks import is_int, is_number
from swiftmoe._proto.v1 import swiftmoe_pb2 as pb
from swiftmoe._proto.v1 import swiftmoe_pb2_grpc as pb_grpc

__all__ = [
    "JobSpec",
    "Registration",
    "SidecarClient",
    "SidecarError",
    "SidecarPlan",
    "history_from_proto",
    "history_to_proto",
]

# pb.PlanSource names -> the short names the shim reports (StepStats.plan_source).
PLAN_SOURCES = {
    "PLAN_SOURCE_STRATEGY": "strategy",
    "PLAN_SOURCE_LAST_VALID": "last_valid",
    "PLAN_SOURCE_STATIC_FALLBACK": "static_fallback",
}


class SidecarError(RuntimeError):
    """A sidecar call or process failed. ``code`` is the gRPC status code when there is one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- job and plan types


@dataclass(frozen=True)
class JobSpec:
    """A job's shape as the sidecar's RegisterJob takes it (see swiftmoe.proto).

    slots_per_rank 0 asks the sidecar to choose from its machine's free GPU memory, and link
    bandwidths 0 take the discovered ones; ``Registration.topology`` holds what is in force.
    ``strategy_sha256`` is the plugin digest the job first saw (a sidecar without SHA256SUMS
    refuses another binary for it); ``history`` the load history to resume from (the form
    ``SidecarClient.export_job`` returns).

    The step-time cost model's inputs (RegisterJobRequest.cost_model): ``token_bytes`` (one
    token's activation row in the all-to-all, d_model x bytes per element), ``flops_per_token``
    (forward+backward FLOPs of one token through one expert; 0: the sidecar takes 6 x
    expert_param_numel) and ``flops_per_second`` (one rank's expert GEMM throughput). 0 means
    unknown; with token_bytes and flops_per_second known, strategies such as swiftmoe plan for
    step time (compute plus all-to-all) across nodes, else for compute alone. With the engine's
    burst replicas on, ``burst_slots_per_rank`` and ``burst_threshold`` tell the strategy (it
    may leave imbalance within a node to them).
    """

    world_size: int
    slots_per_rank: int
    experts_per_layer: Sequence[int]
    expert_param_numel: Sequence[int]
    strategy: str = "swiftmoe"
    strategy_options: Mapping[str, str] = field(default_factory=dict)
    ranks_per_node: int = 0
    bytes_per_param: int = 4
    optimizer_bytes_per_param: int = 12
    intra_node_bandwidth: float = 0.0
    inter_node_bandwidth: float = 0.0
    current_slots: Sequence[Sequence[int]] | None = None
    strategy_sha256: str = ""
    history: Mapping[str, Any] | None = None
    token_bytes: float = 0.0
    flops_per_token: float = 0.0
    flops_per_second: float = 0.0
    burst_slots_per_rank: int = 0
    burst_threshold: float = 0.0

    def __post_init__(self) -> None:
        w = self.world_size
        if not is_int(w, 1):
            raise ValueError(f"JobSpec.world_size is {w!r}: pass an integer >= 1")
        for name in (
            "slots_per_rank",
            "ranks_per_node",
            "burst_slots_per_rank",
            "bytes_per_param",
            "optimizer_bytes_per_param",
        ):
            v = getattr(self, name)
            if not is_int(v, 0):
                raise ValueError(f"JobSpec.{name} is {v!r}: pass an integer >= 0")
        experts = list(self.experts_per_layer)
        if not experts or not all(is_int(e, 1) for e in experts):
            raise ValueError(
                f"JobSpec.experts_per_layer is {experts!r}: pass one integer >= 1 per MoE layer"
            )
        numel = list(self.expert_param_numel)
        if len(numel) not in (1, len(experts)) or not all(is_int(n, 1) for n in numel):
            raise ValueError(
                f"JobSpec.expert_param_numel is {numel!r}: pass one integer >= 1 per MoE layer "
                f"({len(experts)}) or a single one for all layers"
            )
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(
                f"JobSpec.strategy is {self.strategy!r}: pass a strategy name such as 'swiftmoe'"
            )
        for k, v in dict(self.strategy_options).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(
                    f"JobSpec.strategy_options[{k!r}] is {v!r}: option names and values are strings"
                )
        for name in ("intra_node_bandwidth", "inter_node_bandwidth"):
            v = getattr(self, name)
            if not is_number(v) or not v >= 0:
                raise ValueError(f"JobSpec.{name} is {v!r}: pass bytes/s >= 0 (0 = unknown)")
        for name, what in (
            ("token_bytes", "bytes of one token's activation row"),
            ("flops_per_token", "forward+backward FLOPs of one token through one expert"),
            ("flops_per_second", "one rank's expert GEMM FLOP/s"),
            ("burst_threshold", "busiest rank over the mean above which bursts are made"),
        ):
            v = getattr(self, name)
            if not is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"JobSpec.{name} is {v!r}: pass the {what}, >= 0 (0 = unknown)")
        cur = self.current_slots
        if self.slots_per_rank == 0 and cur is not None:
            raise ValueError(
                "JobSpec.current_slots: a placement fixes the slots per rank; pass slots_per_rank "
                "(0 lets the sidecar choose only for the static start)"
            )
        if cur is not None:
            total = self.world_size * self.slots_per_rank
            rows = [list(r) for r in cur]
            if len(rows) != len(experts) or any(
                len(r) != total or not all(is_int(x) for x in r) for r in rows
            ):
                raise ValueError(
                    f"JobSpec.current_slots: pass one list of {total} expert ids per MoE layer "
                    f"({len(experts)}), or None for the static placement"
                )
            object.__setattr__(self, "current_slots", tuple(tuple(r) for r in rows))
        d = self.strategy_sha256
        if not isinstance(d, str) or (d and not _is_sha256(d)):
            raise ValueError(
                f"JobSpec.strategy_sha256 is {d!r}: pass the 64 lower-case hex digits the job's "
                "first registration reported (Registration.strategy['sha256']), or ''"
            )
        if self.history is not None:
            history_to_proto(self.history, experts)  # ValueError naming the entry
        object.__setattr__(self, "experts_per_layer", tuple(experts))
        object.__setattr__(self, "expert_param_numel", tuple(numel))
        object.__setattr__(self, "strategy_options", dict(self.strategy_options))

    def to_proto(self, job_id: str = "") -> pb.RegisterJobRequest:
        return pb.RegisterJobRequest(
            job_id=job_id,
            topology=pb.Topology(
                world_size=self.world_size,
                ranks_per_node=self.ranks_per_node,
                slots_per_rank=self.slots_per_rank,
                intra_node_bandwidth=float(self.intra_node_bandwidth),
                inter_node_bandwidth=float(self.inter_node_bandwidth),
            ),
            experts_per_layer=list(self.experts_per_layer),
            expert_param_numel=list(self.expert_param_numel),
            bytes_per_param=self.bytes_per_param,
            optimizer_bytes_per_param=self.optimizer_bytes_per_param,
            strategy=self.strategy,
            strategy_options=dict(self.strategy_options),
            current_slots=[pb.LayerSlots(slots=list(r)) for r in self.current_slots or ()],
            strategy_sha256=self.strategy_sha256,
            history=None
            if self.history is None
            else history_to_proto(self.history, self.experts_per_layer),
            cost_model=self._cost_model_proto(),
        )

    def _cost_model_proto(self) -> pb.CostModel | None:
        """The cost model on the wire; None when every input is unknown (as before there was
        one: the sidecar then fills nothing in)."""
        if not (
            self.token_bytes
            or self.flops_per_token
            or self.flops_per_second
            or self.burst_slots_per_rank
            or self.burst_threshold
        ):
            return None
        return pb.CostModel(
            token_bytes=float(self.token_bytes),
            flops_per_token=[float(self.flops_per_token)] if self.flops_per_token else [],
            flops_per_second=float(self.flops_per_second),
            burst_slots_per_rank=self.burst_slots_per_rank,
            burst_threshold=float(self.burst_threshold),
        )


def _is_sha256(d: str) -> bool:
    return len(d) == 64 and all(c in "0123456789abcdef" for c in d)


def history_to_proto(history: Any, experts_per_layer: Sequence[int]) -> pb.JobHistory:
    """A load history (``{"layers": [{"reports": [[...]], "series": {name: [...]}}]}``) as the
    bridge's JobHistory, checked against the job's experts per layer; ValueError naming the
    entry otherwise (the sidecar checks the rest: how many reports, which series)."""
    where = "history"
    layers = history.get("layers") if isinstance(history, Mapping) else None
    if not isinstance(layers, (list, tuple)) or len(layers) != len(experts_per_layer):
        raise ValueError(
            f"{where}: want {{'layers': [...]}} with one entry per MoE layer "
            f"({len(experts_per_layer)}), as SidecarClient.export_job returns it"
        )
    out = pb.JobHistory()
    for li, (layer, E) in enumerate(zip(layers, experts_per_layer, strict=True)):
        at = f"{where}['layers'][{li}]"
        if not isinstance(layer, Mapping):
            raise ValueError(f"{at}: want a dict with 'reports' and 'series'")
        lh = out.layers.add()
        for ri, rep in enumerate(layer.get("reports") or ()):
            if (
                not isinstance(rep, (list, tuple))
                or len(rep) != E
                or not all(is_int(v, 0, 2**64 - 1) for v in rep)
            ):
                raise ValueError(
                    f"{at}['reports'][{ri}]: want {E} token counts (integers >= 0), one per expert"
                )
            lh.reports.add(tokens=list(rep))
        series = layer.get("series") or {}
        if not isinstance(series, Mapping):
            raise ValueError(f"{at}['series']: want a dict of name -> one value per expert")
        for name, values in series.items():
            if (
                not isinstance(name, str)
                or not isinstance(values, (list, tuple))
                or len(values) != E
                or not all(is_number(v) for v in values)
            ):
                raise ValueError(f"{at}['series'][{name!r}]: want {E} numbers, one per expert")
            lh.series.add(name=name, values=[float(v) for v in values])
    return out


def history_from_proto(h: pb.JobHistory) -> dict[str, Any]:
    """The bridge's JobHistory as plain values (what ``history_to_proto`` takes)."""
    return {
        "layers": [
            {
                "reports": [list(r.tokens) for r in layer.reports],
                "series": {sr.name: list(sr.values) for sr in layer.series},
            }
            for layer in h.layers
        ]
    }


@dataclass(frozen=True)
class SidecarPlan:
    """A plan from the sidecar as plain Python values."""

    job_id: str
    iteration: int
    strategy: str
    slots_LK: list[list[int]]
    max_over_mean: float
    source: str
    note: str
    remap_total_bytes: int
    remap_changed_slots: int = 0
    remap_migrated_bytes: int = 0
    fallback_reason: str = ""

    @property
    def origin(self) -> str:
        """Where the plan came from: "strategy", "last_valid" or "static_fallback"."""
        return PLAN_SOURCES.get(self.source, self.source.lower())

    @property
    def is_fallback(self) -> bool:
        """The strategy's plan was not used: this is the last valid or the static plan."""
        return self.source != "PLAN_SOURCE_STRATEGY"

    @classmethod
    def from_proto(cls, p: pb.Plan) -> SidecarPlan:
        return cls(
            job_id=p.job_id,
            iteration=int(p.iteration),
            strategy=p.strategy,
            slots_LK=[list(layer.slots) for layer in p.layers],
            max_over_mean=float(p.max_over_mean),
            source=pb.PlanSource.Name(p.source),
            note=p.note,
            remap_total_bytes=int(p.remap.total_bytes),
            remap_changed_slots=int(p.remap.changed_slots),
            remap_migrated_bytes=int(p.remap.migrated_bytes),
            fallback_reason=p.fallback_reason,
        )


@dataclass(frozen=True)
class Registration:
    """RegisterJob's answer: the job id, per-layer shard ranges ``(rank, offset, length)``, the
    initial plan, the topology in force (``world_size``, ``ranks_per_node``, ``slots_per_rank``,
    ``intra_node_bandwidth``, ``inter_node_bandwidth``: the request's, with the values it left 0
    filled from the sidecar's hardware discovery) and one line per filled value with its source.
    ``plugin_refused`` says why the strategy's plugin binary was refused for the job (its
    digest is not the one trusted), empty when it was not; ``strategy["sha256"]`` is the digest
    trusted."""

    job_id: str
    shard_layout: list[list[tuple[int, int, int]]]
    initial_plan: SidecarPlan
    strategy: dict[str, Any]
    topology: dict[str, Any] = field(default_factory=dict)
    defaults: list[str] = field(default_factory=list)
    plugin_refused: str = ""


def _strategy_info(s: pb.StrategyInfo) -> dict[str, Any]:
    return {
        "name": s.name,
        "description": s.description,
        "version": s.version,
        "path": s.path,
        "sha256": s.sha256,
        "options": [
            {
                "name": o.name,
                "description": o.description,
                "default": o.default_value,
                "type": o.type,
                "min": o.min,
                "max": o.max,
                "values": list(o.values),
            }
            for o in s.options
        ],
    }


def _loads_proto(loads_LE: Any) -> list[pb.LayerLoads]:
    if hasattr(loads_LE, "tolist"):
        loads_LE = loads_LE.tolist()
    if isinstance(loads_LE, (str, bytes)) or not isinstance(loads_LE, Sequence) or not loads_LE:
        raise ValueError(
            f"loads_LE is {type(loads_LE).__name__}: pass one list of per-expert token counts per "
            "MoE layer"
        )
    out = []
    for li, row in enumerate(loads_LE):
        if hasattr(row, "tolist"):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"loads_LE[{li}] is {type(row).__name__}: pass a list of token counts")
        for e, v in enumerate(row):
            if not is_int(v, 0):
                raise ValueError(f"loads_LE[{li}][{e}] is {v!r}: token counts are integers >= 0")
        out.append(pb.LayerLoads(tokens=row))  # checked: plain ints >= 0
    return out


# ---------------------------------------------------------------------------- gRPC client


class SidecarClient:
    """gRPC client of the Planner service at ``address`` (``unix:///path`` or ``host:port``).

    Every call waits at most ``timeout_s`` (or the call's own ``timeout_s``) and raises
    SidecarError with the gRPC code on failure. The channel is created at the first call.
    """

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError(
                f"SidecarClient address is {address!r}: pass 'unix:///path/to/socket' or 'host:port'"
            )
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"SidecarClient timeout_s is {timeout_s!r}: pass seconds > 0")
        self.address = address.strip()
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.PlannerStub | None = None

    def _planner(self) -> pb_grpc.PlannerStub:
        with self._lock:
            if self._stub is None:
                # The sidecar prints tcp://HOST:PORT; gRPC dials HOST:PORT.
                target = self.address.removeprefix("tcp://")
                # Plans of large jobs exceed gRPC's 4 MiB default; the sidecar bounds its own.
                self._channel = grpc.insecure_channel(
                    target,
                    options=[
                        ("grpc.max_receive_message_length", -1),
                        ("grpc.max_send_message_length", -1),
                    ],
                )
                self._stub = pb_grpc.PlannerStub(self._channel)
            return self._stub

    def _call(self, method: str, request: Any, timeout_s: float | None) -> Any:
        t = self.timeout_s if timeout_s is None else float(timeout_s)
        if not t > 0:
            raise ValueError(f"{method} timeout_s is {timeout_s!r}: pass seconds > 0")
        try:
            return getattr(self._planner(), method)(request, timeout=t)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "UNKNOWN"
            raise SidecarError(
                f"sidecar {method} at {self.address} failed: {name}: {details}", code
            ) from None

    def register_job(
        self, spec: JobSpec, job_id: str = "", timeout_s: float | None = None
    ) -> Registration:
        if not isinstance(spec, JobSpec):
            raise ValueError(f"register_job spec is {type(spec).__name__}: pass a JobSpec")
        r = self._call("RegisterJob", spec.to_proto(job_id), timeout_s)
        return Registration(
            job_id=r.job_id,
            shard_layout=[
                [(int(s.rank), int(s.offset), int(s.length)) for s in layer.ranges]
                for layer in r.shard_layout
            ],
            initial_plan=SidecarPlan.from_proto(r.initial_plan),
            strategy=_strategy_info(r.strategy),
            topology={
                "world_size": int(r.topology.world_size),
                "ranks_per_node": int(r.topology.ranks_per_node),
                "slots_per_rank": int(r.topology.slots_per_rank),
                "intra_node_bandwidth": float(r.topology.intra_node_bandwidth),
                "inter_node_bandwidth": float(r.topology.inter_node_bandwidth),
            },
            defaults=list(r.defaults),
            plugin_refused=r.plugin_refused,
        )

    def report_loads(
        self, job_id: str, iteration: int, loads_LE: Any, timeout_s: float | None = None
    ) -> SidecarPlan:
        """Sends iteration's loads; returns the plan for iteration+1."""
        if not is_int(iteration, 0):
            raise ValueError(f"report_loads iteration is {iteration!r}: pass an integer >= 0")
        req = pb.ReportLoadsRequest(
            job_id=job_id, iteration=iteration, layers=_loads_proto(loads_LE)
        )
        return SidecarPlan.from_proto(self._call("ReportLoads", req, timeout_s).plan)

    def get_plan(self, job_id: str, timeout_s: float | None = None) -> SidecarPlan:
        return SidecarPlan.from_proto(
            self._call("GetPlan", pb.GetPlanRequest(job_id=job_id), timeout_s)
        )

    def export_job(self, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The job's load history (ExportJob), in the form ``JobSpec.history`` takes."""
        r = self._call("ExportJob", pb.ExportJobRequest(job_id=job_id), timeout_s)
        return history_from_proto(r.history)

    def list_strategies(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        r = self._call("ListStrategies", pb.ListStrategiesRequest(), timeout_s)
        return [_strategy_info(s) for s in r.strategies]

    def check_health(self, timeout_s: float | None = None) -> None:
        """Liveness probe (ListStrategies); raises SidecarError when the sidecar does not answer."""
        self.list_strategies(timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
