"""Burst replicas in training: equivalence with dropless single-process training.

TinyNet (engine_harness) trains on 2 and 4 gloo ranks with the placement changing every step and
the cost model set so that every burst pays (free links, slow experts) with threshold 1.0, so the
engine makes bursts in most iterations. Four ways, each against the reference within 1e-5: the
per-slot path, the grouped-GEMM path (torch._grouped_mm runs on the CPU in fp32), gradient
accumulation (two forwards per step, each with its own bursts), and reentrant activation
checkpointing (the recompute repeats the decision and the copies). A spy on the decision records
every burst plan, so the test also checks that the ranks agreed, that bursts went to ranks
holding the expert in no slot, and that the recompute repeated the forward's plans. A log of the
copy's steps and the slot GEMMs checks the overlap: the planned slots' forward runs between the
copy's start and its wait, and their backward between the gradients' return's start and its
wait, on both paths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distributed import run_ranks
from engine_harness import (
    OPTIMIZERS,
    B,
    D,
    E,
    TinyNet,
    adversarial_source,
    allreduce_dense_grads,
    full_state,
    global_batch,
)
from torch.utils.checkpoint import checkpoint

from swiftmoe.api import replicate_
from swiftmoe.engine import burst_run, step_costs
from swiftmoe.engine import layer as layer_mod
from swiftmoe.engine.config import SwiftMoEConfig

STEPS = 4
MICRO = 2
# Copies free and expert compute dear: every burst that lowers the busiest rank pays.
FORCE = dict(
    burst_threshold=1.0,
    intra_node_bandwidth=1e15,
    inter_node_bandwidth=1e15,
    expert_flops_per_s=1e3,
)
# As many slots as experts (E = 4), so each expert has one planned replica, and burst slots.
SLOTS = {2: 2, 4: 1}
BURST_SLOTS = {2: 2, 4: 1}


class SkewedNet(TinyNet):
    """TinyNet whose routers follow the sign of input feature 0: every token with x[:, 0] > 0
    goes to expert i of layer i, every token with x[:, 0] < 0 to expert i+2 (half of all
    assignments, above the mean rank load on 2 and 4 ranks); ``_batch`` sets the sign."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        with torch.no_grad():
            self.inp.weight[0].zero_()
            self.inp.weight[0, 0] = 2.0  # h[:, 0] = tanh(2 x[:, 0]), about +-1
            self.inp.bias[0] = 0.0
            for i, moe in enumerate(self.moes):
                moe.router.weight[i % E, 0] += 6.0
                moe.router.weight[(i + 2) % E, 0] -= 6.0


class CheckpointedNet(SkewedNet):
    """SkewedNet with each MoE call under reentrant activation checkpointing."""

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x_BD))
        for moe, mix in zip(self.moes, self.mix, strict=True):
            h = h + checkpoint(moe, h, use_reentrant=True)
            h = h + torch.tanh(mix(h))
        return self.head(h).squeeze(-1)


_DECIDE = burst_run.split_and_decide
_GROUPED = layer_mod.use_grouped_mm
_RUN_SLOTS = layer_mod.ExpertLayer.run_slots
_COPY = {n: getattr(burst_run._Copy, n) for n in ("start", "wait", "start_return", "wait_return")}


class _Mark(torch.autograd.Function):
    """Identity that logs ``what`` when its backward runs."""

    @staticmethod
    def forward(ctx, x, log, what):  # noqa: D102
        ctx.log, ctx.what = log, what
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        ctx.log.append(ctx.what)
        return g, None, None


def _spy_order(log: list) -> None:
    """Log the weight copy's steps and the slot GEMMs' forward and backward, in the order they
    run: "fwd planned" / "fwd burst" when the GEMMs run, "bwd <kind>" when their backward
    starts and "bwd <kind> done" when it has the inputs' gradient."""

    def run_slots(self, xs, rows_S, weights=None, **kw):
        kind = "planned" if weights is None else "burst"
        log.append(f"fwd {kind}")
        if torch.is_grad_enabled():
            xs = _Mark.apply(xs, log, f"bwd {kind} done")
        ys = _RUN_SLOTS(self, xs, rows_S, weights, **kw)
        return _Mark.apply(ys, log, f"bwd {kind}") if torch.is_grad_enabled() else ys

    def logged(name):
        def f(self, *a):
            log.append(name)
            return _COPY[name](self, *a)

        return f

    layer_mod.ExpertLayer.run_slots = run_slots
    for name in _COPY:
        setattr(burst_run._Copy, name, logged(name))


def _unspy_order() -> None:
    layer_mod.ExpertLayer.run_slots = _RUN_SLOTS
    for name, f in _COPY.items():
        setattr(burst_run._Copy, name, f)


def _check_overlap(log: list) -> int:
    """Every burst layer call ran its planned slots while its weights were in flight, and their
    backward while the gradients' return was; returns how many calls did."""
    fwd = ["start", "fwd planned", "wait", "fwd burst"]
    bwd = [
        "bwd burst",
        "bwd burst done",
        "start_return",
        "bwd planned",
        "bwd planned done",
        "wait_return",
    ]
    seen = 0
    for i, ev in enumerate(log):
        if ev == "start":
            assert log[i : i + 4] == fwd, log[i : i + 4]
            seen += 1
        if ev == "start_return":
            assert log[i - 2 : i + 4] == bwd, log[i - 2 : i + 4]
    assert log.count("start") == log.count("start_return") == log.count("wait_return")
    return seen


def _spy(records: list) -> None:
    """Record every layer call's burst decision (the real function splits and decides)."""

    def spy(layer, *args, **kwargs):
        rs, got = _DECIDE(layer, *args, **kwargs)
        plan = None if got is None else got.plan
        records.append(
            (
                layer.index,
                layer.slots_t.tolist(),
                [] if plan is None else plan.expert_C.tolist(),
                [] if plan is None else plan.src_C.tolist(),
                [] if plan is None else plan.dst_C.tolist(),
            )
        )
        return rs, got

    burst_run.split_and_decide = spy


def _handle(world_size: int, model_cls=SkewedNet, **cfg_kw):
    """The model replicated with bursts forced, a placement changing every step, and the
    dense optimizer; ``cfg_kw`` adds config (ranks_per_node)."""
    model = model_cls()
    S = SLOTS[world_size]
    cfg = SwiftMoEConfig(
        slots_per_rank=S,
        optimizer="AdamW",
        optimizer_kwargs=OPTIMIZERS["AdamW"],
        plan_source=adversarial_source(world_size, S),
        plan_deadline_s=20.0,
        burst_slots_per_rank=BURST_SLOTS[world_size],
        **(FORCE | cfg_kw),
    )
    handle = replicate_(model, cfg)
    dense = torch.optim.AdamW(handle.dense_parameters(), **OPTIMIZERS["AdamW"])
    return model, handle, dense


def _close(handle) -> None:
    src = handle.config.plan_source
    if hasattr(src, "close"):
        src.close()


def _batch(step: int, m: int, world_size: int):
    """Micro-batch m of a step's global batch: feature 0 is +3 in even micro-batches and -3 in
    odd ones, so the forwards of one step route to different hot experts."""
    x, y = global_batch(MICRO * step + m, world_size)
    x[:, 0] = 3.0 if m % 2 == 0 else -3.0
    return x, y


def _train(rank: int, world_size: int, model_cls=SkewedNet, micro: int = 1, **cfg_kw) -> dict:
    """Train with ``micro`` forwards per step (the loss their mean); stats, records, state."""
    model, handle, dense = _handle(world_size, model_cls, **cfg_kw)
    stats = []
    for step in range(STEPS):
        for m in range(micro):
            x, y = _batch(step, m, world_size)
            sl = slice(rank * B, (rank + 1) * B)
            (F.mse_loss(model(x[sl]), y[sl]) / micro).backward()
        allreduce_dense_grads(model, world_size)
        dense.step()
        stats.append(handle.step())
        dense.zero_grad()
        handle.zero_grad()
    out = {"stats": stats, "state": full_state(model, handle)}
    out["grouped"] = all(la.grouped for la in handle.layers)
    out["gate_ms"] = handle._run.bursts.gate.decision_ms
    _close(handle)
    return out


def _worker(rank: int, world_size: int) -> dict:
    results = {}
    for name, fn in (
        ("plain", lambda: _train(rank, world_size)),
        ("accumulated", lambda: _train(rank, world_size, micro=MICRO)),
        ("checkpointed", lambda: _train(rank, world_size, CheckpointedNet)),
        ("grouped", lambda: _train(rank, world_size)),
        ("nodes", lambda: _train(rank, world_size, ranks_per_node=world_size // 2)),
    ):
        records: list = []
        log: list = []
        _spy(records)
        if name in ("plain", "grouped"):
            _spy_order(log)
        if name == "grouped":  # the GPU path's grouped GEMMs, on the CPU in fp32
            layer_mod.use_grouped_mm = lambda *a: True
        if name == "nodes":  # the per-slot path again, on 2 nodes
            layer_mod.use_grouped_mm = _GROUPED
        try:
            out = fn()
        finally:
            _unspy_order()
        out["records"] = records
        out["log"] = log
        results[name] = out
    return results


def _reference(world_size: int, micro: int = 1) -> dict:
    """Single-process dropless training of SkewedNet on the global batch (``micro``
    micro-batches per step, the loss their mean)."""
    model = SkewedNet()
    opt = torch.optim.AdamW(model.parameters(), **OPTIMIZERS["AdamW"])
    for step in range(STEPS):
        loss = 0.0
        for m in range(micro):
            x, y = _batch(step, m, world_size)
            loss = loss + F.mse_loss(model(x), y) / micro
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        torch.testing.assert_close(
            got[name], w, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def _burst_steps(stats) -> int:
    return sum(1 for s in stats if sum(s.bursts_L) > 0)


def _check_records(records, world_size: int) -> int:
    """Every burst lands on a rank that holds its expert in no planned slot; returns the
    bursts made."""
    S = SLOTS[world_size]
    made = 0
    for _, slots, e_C, src_C, dst_C in records:
        for e, q, d in zip(e_C, src_C, dst_C, strict=True):
            assert e in slots[q * S : (q + 1) * S], f"burst of {e} copied from rank {q}"
            assert e not in slots[d * S : (d + 1) * S], f"burst of {e} onto rank {d} holding it"
            made += 1
    return made


@pytest.mark.parametrize("world_size", [2, 4])
def test_burst_replicas_train_like_single_process(world_size: int) -> None:
    results = run_ranks(_worker, world_size, timeout_s=240)
    ref = _reference(world_size)
    ref_acc = _reference(world_size, MICRO)
    for case in ("plain", "grouped", "accumulated", "checkpointed", "nodes"):
        for rank, res in enumerate(results):
            out = res[case]
            what = f"{case} rank {rank}"
            _assert_state(out["state"], ref_acc if case == "accumulated" else ref, what)
            # Bursts in most iterations.
            assert _burst_steps(out["stats"]) >= STEPS - 1, (
                what,
                [s.bursts_L for s in out["stats"]],
            )
            assert _check_records(out["records"], world_size) > 0
            if case in ("plain", "grouped"):  # the copy overlapped the planned slots' GEMMs
                assert _check_overlap(out["log"]) >= STEPS - 1, what
            # Every rank decided the same bursts.
            assert out["records"] == results[0][case]["records"], what
    # Gradient accumulation: the two forwards of a step made different bursts at least once.
    recs = results[0]["accumulated"]["records"]
    per_step = 2 * MICRO  # two layers, MICRO forwards
    assert any(recs[i : i + 2] != recs[i + 2 : i + 4] for i in range(0, len(recs), per_step)), (
        "every micro-batch made the same bursts: the test does not exercise accumulation"
    )
    # Reentrant checkpointing: the recompute (backward, last layer first) repeats each forward
    # decision exactly.
    recs = results[0]["checkpointed"]["records"]
    assert len(recs) == 4 * STEPS
    for i in range(0, len(recs), 4):
        fwd0, fwd1, re1, re0 = recs[i : i + 4]
        assert (re0, re1) == (fwd0, fwd1)
    assert results[0]["grouped"]["grouped"] and not results[0]["plain"]["grouped"]
    assert not results[0]["nodes"]["grouped"]
    # Two nodes of world_size // 2 ranks: some bursts were copied from one node to the other.
    G = world_size // 2
    across = [
        (e, q, d)
        for _, _, e_C, src_C, dst_C in results[0]["nodes"]["records"]
        for e, q, d in zip(e_C, src_C, dst_C, strict=True)
        if q // G != d // G
    ]
    assert across, results[0]["nodes"]["records"]


def _gated_worker(rank: int, world_size: int) -> dict:
    results = {}
    for name, ms in (("stopped", 1e9), ("auto", "auto")):
        records: list = []
        _spy(records)
        out = _train(rank, world_size, burst_decision_ms=ms)
        out["records"] = records
        results[name] = out
    return results


def test_decision_gate_on_ranks():
    """The decision's gate in training on 2 gloo ranks. A decision priced far above any gain
    (1e9 ms) runs in the first step only (no step reached before it) and is stopped in every
    later one, and training is unchanged. With "auto", rank 0's measured figure reaches every
    rank, and the ranks make the same bursts."""
    results = run_ranks(_gated_worker, 2, timeout_s=240)
    ref = _reference(2)
    for rank, res in enumerate(results):
        out = res["stopped"]
        _assert_state(out["state"], ref, f"stopped rank {rank}")
        made = [sum(s.bursts_L) > 0 for s in out["stats"]]
        assert made == [True] + [False] * (STEPS - 1), made
        assert out["gate_ms"] == 1e9
        # The step stats count the decisions that ran and those the gate stopped.
        ran = [sum(s.decisions_L) for s in out["stats"]]
        stopped = [sum(s.stopped_L) for s in out["stats"]]
        assert ran[0] > 0 and ran[1:] == [0] * (STEPS - 1), ran
        assert stopped[0] == 0 and all(n > 0 for n in stopped[1:]), stopped
        assert [s.decision_ms for s in out["stats"]] == [1e9] * STEPS
        auto = res["auto"]
        _assert_state(auto["state"], ref, f"auto rank {rank}")
        assert auto["gate_ms"] == results[0]["auto"]["gate_ms"] > 0
        assert auto["records"] == results[0]["auto"]["records"]
        assert [s.decision_ms for s in auto["stats"]] == [
            s.decision_ms for s in results[0]["auto"]["stats"]
        ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"burst_slots_per_rank": -1}, "burst_slots_per_rank: must be an integer >= 0"),
        ({"burst_slots_per_rank": 1.5}, "burst_slots_per_rank"),
        ({"burst_threshold": 0.99}, r"burst_threshold: must be a finite number >= 1\.0"),
        ({"burst_threshold": float("inf")}, "burst_threshold"),
        ({"intra_node_bandwidth": -1.0}, "intra_node_bandwidth: must be a finite number of bytes"),
        ({"inter_node_bandwidth": float("nan")}, "inter_node_bandwidth"),
        ({"expert_flops_per_s": "fast"}, "expert_flops_per_s: must be a finite number of FLOP/s"),
    ],
)
def test_bad_burst_config_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SwiftMoEConfig(**({"slots_per_rank": 4} | kwargs))


def _policies(rank: int, world_size: int) -> dict:
    """The burst policy every rank builds, from a factory's topology, the config, or the
    device's defaults; rank 0 alone has the factory's answer."""
    from swiftmoe.engine.plan_source import StartedPlanSource
    from swiftmoe.engine.replicate import replicate_ as engine_replicate_
    from swiftmoe.planning.sources import CallablePlanSource

    def factory(config, job):
        assert (job.intra_node_bandwidth, job.inter_node_bandwidth) == (5e9, 0.0)
        # The cost model the planner gets: one token's row of the experts' input width D in
        # fp32, the device's default throughput, and the engine's burst replicas.
        assert job.token_bytes == D * 4
        assert job.flops_per_second == step_costs.CPU_FLOPS_PER_THREAD
        assert (job.burst_slots_per_rank, job.burst_threshold) == (1, 1.1)
        src = CallablePlanSource(lambda it, loads: None, name="none")
        return StartedPlanSource(src, job.slots_per_rank, 7e9, 3e9)

    out = {}
    for name, kw, factory_or_none in (
        ("topology", {"strategy": "fake", "intra_node_bandwidth": 5e9}, factory),
        ("config", {"intra_node_bandwidth": 5e9, "expert_flops_per_s": 2e12}, None),
        ("defaults", {}, None),
        ("off", {"burst_slots_per_rank": 0}, None),
    ):
        cfg = SwiftMoEConfig(slots_per_rank=SLOTS[world_size], **kw)
        handle = engine_replicate_(TinyNet(), cfg, plan_sources=factory_or_none)
        ctx = handle.layers[0].ctx
        pol, costs = ctx.bursts, ctx.costs
        out[name] = (
            None if pol is None else (costs.intra_bw, costs.inter_bw, costs.flops_per_s, pol.B)
        )
        handle.close()
    return out


def test_the_policy_takes_the_sidecars_topology_then_the_config_then_the_defaults() -> None:
    results = run_ranks(_policies, 2, timeout_s=120)
    cpu = step_costs.CPU_BW
    flops = step_costs.CPU_FLOPS_PER_THREAD  # one torch thread per test rank
    for res in results:  # rank 1 has rank 0's figures (a broadcast)
        assert res == {
            "topology": (7e9, 3e9, flops, 1),
            "config": (5e9, cpu, 2e12, 1),
            "defaults": (cpu, cpu, flops, 1),
            "off": None,
        }
