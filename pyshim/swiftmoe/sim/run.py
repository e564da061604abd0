"""Replays a routing trace through the real strategy plugins and the engine's token split.

One sidecar (``swiftmoe-sidecar serve``, the one a training job uses) serves every system: one
registered job per placement sequence (``swiftmoe``, each ``flexmoe-N``, and one ``static`` job
shared by the static systems). Iteration t runs under plan P_t (P_0 = the registration's
initial static placement); afterwards t's loads are reported and the answer is P_{t+1}
(the sidecar's default predictor, or the job's ``predictor`` option). Every job registers with
the simulated cluster's link bandwidths and cost model (token bytes, 6 x the expert's parameters
FLOPs per token, the calibration table's throughput at the mean rank load), so the swiftmoe
strategy plans for step time as it would on that cluster. Each job's ReportLoads chain runs
ahead in its own thread (:mod:`swiftmoe.sim.plans`), overlapping the token splits. Systems placed
by a plan route their tokens with the engine's split (``swiftmoe`` and ``swiftmoe-burst`` as the
engine runs it: SimConfig.split_method, ``--split``, with the cluster's cost parameters, so that
on several nodes stage 1 is priced, ``swiftmoe.engine.split.priced``; the others with the
min-max split), summed per rank by
``swiftmoe.sim.traffic.split_traffic`` (what the cost model needs of the split's flow), on the per-source
counts of :func:`swiftmoe.sim.trace.source_counts`; costs come from
:mod:`swiftmoe.sim.model`. Per iteration and layer, systems on one placement share its split (and
the engine systems its cost); only a placement that a padded system (static-dropless, static-cfX)
runs on is split ``weighted``, since padding rescales who sends what. timing_s: split_s and cost_s
on the main thread, sidecar_s the time it waited for plans, sidecar_rpc_s the ReportLoads time in
the background threads. ``swiftmoe-burst`` runs on ``swiftmoe``'s placement: per layer the
engine's own burst decision (:func:`swiftmoe.engine.burst.plan_bursts`) is made from the
iteration's counts and the placement's split, and when it makes bursts the layer is split again
over the enlarged placement and charged the copies' time that the planned slots' compute does
not hide (``copy_ms``, ``costmodel.copy_exposed_ms``: the engine overlaps them), plus
``decision_ms`` (``--decision-ms``, 0 by default) for each layer call whose decision ran, or
with ``decision_measured`` (``--decision-ms measured``) that call's own wall time here. The
engine's gate on the decision (``burst_run.DecisionGate``) runs with that time as the
decision's (``decision_gate``, ``--decision-gate``; on by default): a stopped decision makes no
burst and is charged nothing. Both
SwiftMoE systems are charged ``split_ms`` (``--split-ms``, 0 by default) for every layer call:
the engine's split of the planned placement on the host. ``split_new_ms`` and
``decision_new_ms`` (``--split-new-ms``, ``--decision-new-ms``) replace the two charges on a
layer call whose placement changed since the iteration before, where the engine splits a new
placement with its caches cold. The
``bound`` is perfect balance (see :mod:`swiftmoe.sim.systems`); its all-to-all is the lower of an
even one and the static layout's under uniform routing (the engine's split on uniform counts).

Shape legend: I iterations (n_it), L layers, E experts, N ranks, S slots per rank, K = N*S slots,
Q = N source ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swiftmoe._checks import is_int
from swiftmoe.engine import costmodel
from swiftmoe.engine.burst import pad_counts, plan_bursts
from swiftmoe.engine.burst_run import DecisionGate
from swiftmoe.engine.split import METHODS, PlanIndexCache
from swiftmoe.planning.client import JobSpec, SidecarClient
from swiftmoe.planning.job import SidecarJob
from swiftmoe.planning.process import ManagedSidecar
from swiftmoe.sim import model
from swiftmoe.sim.calibration import ExpertTime
from swiftmoe.sim.plans import FetchedPlan, PlanFeed
from swiftmoe.sim.systems import BOUND, CAPACITY, ENGINE, PADDED, SystemSpec
from swiftmoe.sim.trace import StreamedTrace, source_counts, uniform_loads
from swiftmoe.sim.traffic import split_traffic

__all__ = ["FIELDS", "SimConfig", "SimResult", "simulate"]

FIELDS = (
    "step_ms",
    "compute_ms",
    "a2a_ms",
    "transfer_ms",
    "migration_ms",
    "copy_ms",
    "decision_ms",
    "split_ms",
    "bursts",
    "dropped",
    "max_over_mean",
)
FLOPS_PER_PARAM = 6  # forward+backward FLOPs of one token per expert parameter
STRATEGY_SOURCE = "PLAN_SOURCE_STRATEGY"


@dataclass(frozen=True)
class SimConfig:
    cluster: model.Cluster
    slots: int  # SwiftMoE's and FlexMoE's slots per GPU
    static_slots: int  # the static systems' and the bound's slots per GPU
    other_ms: float = 0.0  # per-iteration time outside the MoE layers, added to every system
    flops_per_s: float = 0.0  # one GPU's expert throughput for the cost model (0: unknown)
    # swiftmoe-burst: burst slots per GPU, and the busiest rank over the mean above which bursts
    # are considered (the engine's defaults, SwiftMoEConfig.burst_slots_per_rank and
    # burst_threshold)
    burst_slots: int = 1
    burst_threshold: float = 1.1
    # swiftmoe-burst: host time charged to each layer call whose burst decision runs (past the
    # threshold): the engine decides on the CPU before the dispatch, and the cost model does not
    # count that (0: not charged)
    decision_ms: float = 0.0
    # swiftmoe-burst: charge each decision its own wall time on this host instead (the engine's
    # code, C or NumPy, as the engine would run it here); not deterministic
    decision_measured: bool = False
    # swiftmoe-burst: the engine's decision gate (burst_run.DecisionGate), with decision_ms as
    # the decision's host time (with decision_measured, the median of the iteration before's
    # measured decisions); a gated decision is charged nothing
    decision_gate: bool = True
    # swiftmoe and swiftmoe-burst: host time charged to every layer call for the engine's token
    # split of the planned placement (and its checks), made on the CPU between the counts'
    # all-reduce and the dispatch, which the cost model does not count (0: not charged)
    split_ms: float = 0.0
    # the same two charges on a layer call whose placement changed since the iteration before
    # (and in the first iteration): the engine's first split of a new placement, its caches
    # cold, costs more than a split of one it has split before (None: split_ms, decision_ms)
    split_new_ms: float | None = None
    decision_new_ms: float | None = None
    # swiftmoe and swiftmoe-burst: the engine's split_method ("auto": stage 1 chosen by the cost
    # model on several nodes, swiftmoe.engine.split.priced; "fast", "exact": min-max amounts)
    split_method: str = "auto"
    plugin_timeout_s: float = 30.0
    rpc_timeout_s: float = 60.0
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("slots", "static_slots"):
            v = getattr(self, name)
            if not is_int(v, 1):
                raise ValueError(f"--{name.replace('_', '-')} is {v!r}: pass an integer >= 1")
        if not (self.other_ms >= 0 and np.isfinite(self.other_ms)):
            raise ValueError(f"--other-ms is {self.other_ms!r}: pass milliseconds >= 0")
        if not (self.decision_ms >= 0 and np.isfinite(self.decision_ms)):
            raise ValueError(
                f"--decision-ms is {self.decision_ms!r}: pass milliseconds >= 0 (0: not charged)"
            )
        if not (self.split_ms >= 0 and np.isfinite(self.split_ms)):
            raise ValueError(
                f"--split-ms is {self.split_ms!r}: pass milliseconds >= 0 (0: not charged)"
            )
        for name in ("split_new_ms", "decision_new_ms"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and np.isfinite(v)):
                raise ValueError(
                    f"--{name.replace('_', '-')} is {v!r}: pass milliseconds >= 0, or leave it "
                    f"out to charge --{name.replace('_new', '').replace('_', '-')} there too"
                )
        if not (self.flops_per_s >= 0 and np.isfinite(self.flops_per_s)):
            raise ValueError(f"flops_per_s is {self.flops_per_s!r}: pass FLOP/s >= 0 (0: unknown)")
        if not is_int(self.burst_slots, 0):
            raise ValueError(f"--burst-slots is {self.burst_slots!r}: pass an integer >= 0")
        if not self.plugin_timeout_s > 0:
            raise ValueError(f"--plugin-timeout is {self.plugin_timeout_s}: pass seconds > 0")
        if self.split_method not in METHODS:
            raise ValueError(f"--split is {self.split_method!r}: pass one of {', '.join(METHODS)}")
        if not (self.burst_threshold >= 1.0 and np.isfinite(self.burst_threshold)):
            raise ValueError(
                f"--burst-threshold is {self.burst_threshold!r}: pass a number >= 1.0 (busiest "
                "rank over the mean)"
            )

    def cost_params(self) -> costmodel.CostParams:
        """The simulated cluster's step-time cost model (swiftmoe.engine.costmodel)."""
        c = self.cluster
        return costmodel.CostParams(
            ranks=c.gpus,
            ranks_per_node=c.ranks_per_node,
            token_bytes=float(c.token_bytes),
            expert_bytes=float(c.expert_numel * c.bytes_per_param),
            flops_per_token=float(FLOPS_PER_PARAM * c.expert_numel),
            flops_per_s=self.flops_per_s,
            intra_bw=float(c.intra_bw),
            inter_bw=float(c.inter_bw) if c.ranks_per_node else 0.0,
        )


@dataclass
class JobState:
    key: tuple
    strategy: str
    options: dict[str, str]
    S: int
    burst: bool = False  # the job's systems make burst replicas
    job_id: str = ""
    slots_LK: list[np.ndarray] = field(default_factory=list)
    pending_migrated: int = 0
    migrated_bytes: int = 0
    placement_changes: int = 0
    changed_L: list[bool] | None = None  # per layer, placed anew this iteration (None: all)
    fallbacks: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class SimResult:
    systems: list[SystemSpec]
    per_iteration: dict[str, dict[str, np.ndarray]]  # system -> field -> [I]
    replicas: dict[str, np.ndarray]  # system -> replicas_ILE in force (systems with a plan)
    jobs: dict[str, dict[str, Any]]  # system -> its job's counters
    timing_s: dict[str, float]
    iterations: int
    layers: int
    experts: int


def _check_shapes(loads_ILE: np.ndarray, cfg: SimConfig, systems: list[SystemSpec]) -> None:
    if loads_ILE.ndim != 3 or min(loads_ILE.shape) < 1:
        raise ValueError("loads_ILE must be [iterations, layers, experts] with every size >= 1")
    E, N = loads_ILE.shape[2], cfg.cluster.gpus
    for s in systems:
        S = cfg.static_slots if s.static else cfg.slots
        if N * S < E:
            flag = "--static-slots" if s.static else "--slots"
            raise ValueError(
                f"{s.name}: {N} GPUs x {S} slots = {N * S} slots cannot hold {E} experts: raise "
                f"{flag} to at least {-(-E // N)} or --gpus"
            )


def _job_spec(cfg: SimConfig, job: JobState, L: int, E: int) -> JobSpec:
    c = cfg.cluster
    return JobSpec(
        world_size=c.gpus,
        slots_per_rank=job.S,
        experts_per_layer=[E] * L,
        expert_param_numel=[c.expert_numel],
        strategy=job.strategy,
        strategy_options=job.options,
        ranks_per_node=min(c.gpus_per_node, c.gpus),
        bytes_per_param=c.bytes_per_param,
        optimizer_bytes_per_param=c.optimizer_bytes,
        intra_node_bandwidth=float(c.intra_bw),
        inter_node_bandwidth=float(c.inter_bw),
        token_bytes=float(c.token_bytes),
        flops_per_second=cfg.flops_per_s,
        burst_slots_per_rank=cfg.burst_slots if job.burst else 0,
        burst_threshold=cfg.burst_threshold if job.burst else 0.0,
    )


def _apply(job: JobState, fp: FetchedPlan, it: int) -> None:
    """Puts the job's plan for iteration it in force and counts what it changed."""
    if fp.iteration != it:
        raise RuntimeError(f"plan for iteration {fp.iteration} arrived at {it}; a simulator bug")
    if fp.source != STRATEGY_SOURCE:
        job.fallbacks += 1
        if len(job.notes) < 3:
            job.notes.append(f"iteration {it}: {fp.source}: {fp.note}")
    job.changed_L = [
        not np.array_equal(a, b) for a, b in zip(fp.slots_LK, job.slots_LK, strict=True)
    ]
    if any(job.changed_L):
        job.placement_changes += 1
    job.slots_LK = fp.slots_LK
    job.pending_migrated = fp.migrated_bytes
    job.migrated_bytes += fp.migrated_bytes


def _burst_layer(
    cfg: SimConfig,
    et: ExpertTime,
    params: costmodel.CostParams,
    counts_QE: np.ndarray,
    slots_K: np.ndarray,
    S: int,
    flow: model.Flow,
    planned: model.LayerCost,
    gate: DecisionGate,
    layer: int,
    decision_ms: float,
) -> tuple[model.LayerCost, float, int, float]:
    """A layer with the engine's burst replicas on ``slots_K`` (split ``flow``, cost ``planned``):
    (its cost, the copies' ms, the bursts made, the decision's host ms charged: where its
    threshold was passed and its gate (``gate``'s of ``layer``, as the engine's) let it run,
    ``decision_ms`` (the config's, or its new-placement figure), or its wall time here with
    ``decision_measured``; else 0). With none made,
    the planned cost."""
    c = cfg.cluster
    load_R = flow.x_RS.sum(axis=1).astype(np.int64)
    limit = gate.limit(layer)
    t0 = time.perf_counter()
    bp = plan_bursts(
        counts_QE,
        slots_K,
        S,
        cfg.burst_slots,
        c.ranks_per_node,
        params,
        cfg.burst_threshold,
        method=cfg.split_method,
        load_R=load_R,
        planned=flow.planned,  # the split made above, as the engine passes its own
        gate=limit,
    )
    took_ms = (time.perf_counter() - t0) * 1e3
    gate.saw(layer, bp.before_ms, bp.after_ms)
    # It ran (and costs host time, whatever it makes) where past the threshold and its gate.
    charge = (took_ms if cfg.decision_measured else decision_ms) if gate.last_ran else 0.0
    if bp.count == 0:
        return planned, 0.0, 0, charge
    Sx = bp.slots_per_rank
    split = split_traffic(
        pad_counts(counts_QE),
        bp.slots_K,
        Sx,
        ranks_per_node=c.ranks_per_node,
        method=cfg.split_method,
        weighted=False,
        cost=params,
    )
    cost = model.flow_layer(c, et, model.flow_of(c, Sx, split), Sx)
    # Burst slots hold copies for this layer only: the planned slots' transfers stay, the
    # copies and their gradients' return are copy_ms (what the overlap leaves exposed).
    cost.transfer_ms = planned.transfer_ms
    return cost, bp.copy_ms, bp.count, charge


def simulate(
    loads_ILE: np.ndarray | StreamedTrace,
    cfg: SimConfig,
    et: ExpertTime,
    systems: list[SystemSpec],
    address: str | None = None,
    binary: str | None = None,
    plugins_dir: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Runs every system over the trace; starts (and stops) its own sidecar unless ``address``.

    ``loads_ILE`` may be a StreamedTrace still being drawn: every iteration is read once it is
    filled (timing_s["trace_s"]: what the replay waited for it). ``progress(done, total)``, when
    given, is called after every iteration.
    """
    wait = None
    if isinstance(loads_ILE, StreamedTrace):
        wait, loads_ILE = loads_ILE.wait, loads_ILE.loads_ILE
    loads_ILE = np.asarray(loads_ILE, dtype=np.int64)
    _check_shapes(loads_ILE, cfg, systems)
    n_it, L, E = loads_ILE.shape
    c = cfg.cluster
    N = c.gpus
    jobs: dict[tuple, JobState] = {}
    for s in systems:
        if s.job_key not in jobs:
            jobs[s.job_key] = JobState(
                s.job_key,
                s.strategy,
                dict(s.options),
                cfg.static_slots if s.static else cfg.slots,
                burst=s.burst and cfg.burst_slots > 0,
            )
    per = {s.name: {f: np.zeros(n_it) for f in FIELDS} for s in systems}
    bound_costs: dict[tuple, model.LayerCost] = {}
    planned = [s for s in systems if s.kind != BOUND]
    reps = {s.name: np.zeros((n_it, L, E), dtype=np.int64) for s in planned}
    timing = {"split_s": 0.0, "sidecar_s": 0.0, "cost_s": 0.0, "burst_s": 0.0}
    params = cfg.cost_params()
    indexes = PlanIndexCache()  # the placements in force, indexed once for every split
    # Each burst system's decision gate, as the engine keeps one per job (layers by index).
    gates = {s.name: DecisionGate() for s in systems if s.burst}
    took: dict[str, list[float]] = {name: [] for name in gates}  # measured decisions, per it
    if wait is not None:
        timing["trace_s"] = 0.0
    t_start = time.perf_counter()
    sidecar = None
    client = None
    feed = None
    try:
        if jobs:
            if address is None:
                sidecar = ManagedSidecar(
                    binary=binary,
                    plugins_dir=plugins_dir,
                    # The simulated cluster's slots and links come from cfg, not this machine.
                    extra_args=(
                        "--plugin-timeout",
                        f"{cfg.plugin_timeout_s:g}s",
                        "--discover=false",
                    ),
                    start_timeout_s=cfg.start_timeout_s,
                )
                address = sidecar.address
            client = SidecarClient(address, cfg.rpc_timeout_s)
            t0 = time.perf_counter()
            for job in jobs.values():
                reg = SidecarJob(client, _job_spec(cfg, job, L, E)).register()
                job.job_id = reg.job_id
                job.slots_LK = [np.asarray(r, dtype=np.int64) for r in reg.initial_plan.slots_LK]
            timing["sidecar_s"] += time.perf_counter() - t0
            if n_it > 1:
                feed = PlanFeed(
                    client, [j.job_id for j in jobs.values()], loads_ILE, cfg.rpc_timeout_s, wait
                )
        for it in range(n_it):
            if wait is not None:
                t0 = time.perf_counter()
                wait(it)
                timing["trace_s"] += time.perf_counter() - t0
            if it > 0 and feed is not None:
                t0 = time.perf_counter()
                for j, job in enumerate(jobs.values()):
                    _apply(job, feed.next(j), it)
                timing["sidecar_s"] += time.perf_counter() - t0
            for s in planned:  # the bound never migrates
                job = jobs[s.job_key]
                per[s.name]["migration_ms"][it] = model.migration_ms(c, job.pending_migrated)
                for li, slots_K in enumerate(job.slots_LK):
                    reps[s.name][it, li] = np.bincount(slots_K, minlength=E)
            for job in jobs.values():
                job.pending_migrated = 0
            for li in range(L):
                L_E = loads_ILE[it, li]
                total = int(L_E.sum())
                counts_QE = None
                # The placement of each job: systems sharing one share its split and cost.
                pk_J = {key: (job.S, job.slots_LK[li].tobytes()) for key, job in jobs.items()}
                padded = {pk_J[s.job_key] for s in systems if s.kind in (PADDED, CAPACITY)}
                flows: dict[tuple, model.Flow] = {}
                engine_costs: dict[tuple, model.LayerCost] = {}
                for s in systems:
                    job = jobs[s.job_key]
                    S, slots_K, pk = job.S, job.slots_LK[li], pk_J[s.job_key]
                    tc = time.perf_counter()
                    if s.kind == BOUND:
                        key = (total, E, *pk)  # depends on the total and the static layout
                        cost = bound_costs.get(key)
                        if cost is None:
                            # The static layout's all-to-all under uniform routing.
                            ts = time.perf_counter()
                            split = split_traffic(
                                source_counts(uniform_loads(total, E), N),
                                indexes.index(slots_K, S, N, E),
                                S,
                                ranks_per_node=c.ranks_per_node,
                                weighted=False,
                            )
                            timing["split_s"] += time.perf_counter() - ts
                            tc += time.perf_counter() - ts
                            static = model.flow_layer(c, et, model.flow_of(c, S, split), S)
                            cost = model.bound_layer(c, et, total, S, static.a2a_ms)
                            if len(bound_costs) > 64:
                                bound_costs.clear()
                            bound_costs[key] = cost
                    else:
                        # SwiftMoE's engine splits as it would run: its split_method, priced.
                        ours = s.strategy == "swiftmoe"
                        fk = (*pk, ours)
                        flow = flows.get(fk)
                        if flow is None:
                            if counts_QE is None:
                                counts_QE = source_counts(L_E, N)
                            ts = time.perf_counter()
                            split = split_traffic(
                                counts_QE,
                                indexes.index(slots_K, S, N, E),
                                S,
                                ranks_per_node=c.ranks_per_node,
                                method=cfg.split_method if ours else "auto",
                                weighted=pk in padded,  # padding reweights who sends what
                                cost=params if ours else None,
                            )
                            timing["split_s"] += time.perf_counter() - ts
                            tc += time.perf_counter() - ts
                            flow = model.flow_of(c, S, split)
                            flows[fk] = flow
                        if s.kind == PADDED:
                            cost = model.padded_layer(c, et, L_E, slots_K, S, flow)
                        elif s.kind == CAPACITY:
                            cost = model.capacity_layer(
                                c, et, L_E, slots_K, S, s.capacity_factor, flow
                            )
                        else:
                            assert s.kind == ENGINE
                            cost = engine_costs.get(fk)
                            if cost is None:  # systems on one placement share the cost too
                                cost = model.flow_layer(c, et, flow, S)
                                engine_costs[fk] = cost
                            new = job.changed_L is None or job.changed_L[li]
                            if ours:
                                per[s.name]["split_ms"][it] += (
                                    cfg.split_new_ms
                                    if new and cfg.split_new_ms is not None
                                    else cfg.split_ms
                                )
                            if s.burst and cfg.burst_slots:
                                ts = time.perf_counter()
                                cost, copy_ms, made, charged = _burst_layer(
                                    cfg, et, params, counts_QE, slots_K, S, flow, cost,
                                    gates[s.name], li,
                                    cfg.decision_new_ms
                                    if new and cfg.decision_new_ms is not None
                                    else cfg.decision_ms,
                                )  # fmt: skip
                                if charged and cfg.decision_measured:
                                    took[s.name].append(charged)
                                timing["burst_s"] += time.perf_counter() - ts
                                per[s.name]["copy_ms"][it] += copy_ms
                                per[s.name]["bursts"][it] += made
                                per[s.name]["decision_ms"][it] += charged
                    timing["cost_s"] += time.perf_counter() - tc
                    row = per[s.name]
                    row["compute_ms"][it] += cost.compute_ms
                    row["a2a_ms"][it] += cost.a2a_ms
                    row["transfer_ms"][it] += cost.transfer_ms
                    row["dropped"][it] += cost.dropped
                    mean = float(cost.load_R.mean())
                    mom = float(cost.load_R.max()) / mean if mean > 0 else 1.0
                    row["max_over_mean"][it] = max(row["max_over_mean"][it], mom)
            for name, gate in gates.items():  # between iterations, as the engine's step
                est = cfg.decision_ms
                if cfg.decision_measured:
                    est = float(np.median(took[name])) if took[name] else gate.decision_ms
                gate.next_iteration(est if cfg.decision_gate else 0.0)
                took[name].clear()
            if progress is not None:
                progress(it + 1, n_it)
    finally:
        if feed is not None:
            feed.close()
            timing["sidecar_rpc_s"] = feed.rpc_s
        if client is not None:
            client.close()
        if sidecar is not None:
            sidecar.close()
    for s in systems:
        row = per[s.name]
        row["step_ms"][:] = (
            row["compute_ms"]
            + row["a2a_ms"]
            + row["transfer_ms"]
            + row["migration_ms"]
            + row["copy_ms"]
            + row["decision_ms"]
            + row["split_ms"]
            + cfg.other_ms
        )
    timing["total_s"] = time.perf_counter() - t_start
    job_info = {}
    for s in systems:
        j = jobs[s.job_key]
        job_info[s.name] = {
            "strategy": j.strategy,
            "strategy_options": j.options,
            "slots_per_gpu": j.S,
            "placement_changes": j.placement_changes,
            "migrated_bytes": j.migrated_bytes,
            "fallback_plans": j.fallbacks,
            "fallback_notes": j.notes,
        }
    return SimResult(systems, per, reps, job_info, timing, n_it, L, E)
