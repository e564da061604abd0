"""Tests of the sidecar client, process and plan service (swiftmoe.planning) against a scripted
fake Planner and, when built, the real sidecar.

The fake Planner runs in-process (grpc.server on a unix socket) or, run as a script
(``python test_sidecar_client.py serve ...``), as a fake ``swiftmoe-sidecar`` process that prints
the same ``listening on unix:///...`` line. Every RPC, wait and subprocess here has a timeout.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from swiftmoe import planning as sc
from swiftmoe._proto.v1 import swiftmoe_pb2 as pb
from swiftmoe._proto.v1 import swiftmoe_pb2_grpc as pb_grpc
from swiftmoe.planning import binaries

PYSHIM = Path(__file__).resolve().parents[1]
REPO = PYSHIM.parent
REAL_BINARY = REPO / "bin" / "swiftmoe-sidecar"


# ---------------------------------------------------------------------------- fake planner


def fake_slots_LK(loads_LE: list[list[int]], num_slots: int) -> list[list[int]]:
    """The fake strategy: slot k holds expert k % E, and every slot past E the most loaded one."""
    out = []
    for row_E in loads_LE:
        E = len(row_E)
        hot = max(range(E), key=lambda e: row_E[e])
        out.append([k % E if k < E else hot for k in range(num_slots)])
    return out


class FakePlanner(pb_grpc.PlannerServicer):
    """Planner with scripted behaviour: ``mode`` is "ok", "hang" (until ``release`` is set) or
    "error" (UNAVAILABLE)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.release = threading.Event()
        self.jobs: dict[str, pb.RegisterJobRequest] = {}
        self.plans: dict[str, pb.Plan] = {}
        self.registrations = 0
        self.reports = 0

    def _behave(self, context: grpc.ServicerContext) -> None:
        if self.mode == "hang":
            self.release.wait(30)
        elif self.mode == "error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")

    def _plan(self, job_id: str, iteration: int, slots_LK: list[list[int]]) -> pb.Plan:
        job = self.jobs[job_id]
        return pb.Plan(
            job_id=job_id,
            iteration=iteration,
            strategy=job.strategy,
            world_size=job.topology.world_size,
            slots_per_rank=job.topology.slots_per_rank,
            layers=[pb.LayerPlan(slots=s, max_over_mean=1.0) for s in slots_LK],
            max_over_mean=1.0,
            source=pb.PLAN_SOURCE_STRATEGY,
        )

    def RegisterJob(self, request, context):
        self._behave(context)
        self.registrations += 1
        job_id = request.job_id or f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = request
        K = request.topology.world_size * request.topology.slots_per_rank
        static = [[k % E for k in range(K)] for E in request.experts_per_layer]
        self.plans[job_id] = self._plan(job_id, 0, static)
        return pb.RegisterJobResponse(
            job_id=job_id,
            initial_plan=self.plans[job_id],
            shard_layout=[
                pb.LayerShardLayout(
                    layer=0,
                    expert_param_numel=8,
                    ranges=[pb.ShardRange(rank=0, offset=0, length=8)],
                )
            ],
            strategy=pb.StrategyInfo(name=request.strategy, version="fake"),
        )

    def ReportLoads(self, request, context):
        self._behave(context)
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id!r} is not registered")
        job = self.jobs[request.job_id]
        if len(request.layers) != len(job.experts_per_layer):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "layers: wrong count")
        self.reports += 1
        K = job.topology.world_size * job.topology.slots_per_rank
        slots = fake_slots_LK([list(layer.tokens) for layer in request.layers], K)
        self.plans[request.job_id] = self._plan(request.job_id, request.iteration + 1, slots)
        return pb.ReportLoadsResponse(plan=self.plans[request.job_id])

    def GetPlan(self, request, context):
        self._behave(context)
        if request.job_id not in self.plans:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id!r} is not registered")
        return self.plans[request.job_id]

    def ListStrategies(self, request, context):
        self._behave(context)
        return pb.ListStrategiesResponse(
            strategies=[pb.StrategyInfo(name="static"), pb.StrategyInfo(name="swiftmoe")]
        )


def start_fake_server(sock: Path) -> tuple[grpc.Server, FakePlanner]:
    planner = FakePlanner()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_PlannerServicer_to_server(planner, server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    return server, planner


@pytest.fixture
def fake_server():
    with tempfile.TemporaryDirectory(prefix="swiftmoe-fake-") as d:
        sock = Path(d) / "planner.sock"
        server, planner = start_fake_server(sock)
        try:
            yield f"unix://{sock}", planner
        finally:
            planner.release.set()
            server.stop(grace=0).wait(5)


SPEC = sc.JobSpec(world_size=2, slots_per_rank=3, experts_per_layer=[4, 4], expert_param_numel=[8])
LOADS_LE = [[10, 50, 20, 20], [5, 5, 80, 10]]


# ---------------------------------------------------------------------------- process helpers


def gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def wait_for(cond, timeout_s: float = 15.0, step_s: float = 0.05) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


@pytest.fixture
def fake_binary(tmp_path):
    """An executable that runs this file as a fake swiftmoe-sidecar."""
    b = tmp_path / "bin" / "swiftmoe-sidecar"
    b.parent.mkdir()
    b.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{PYSHIM}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" '
        f'"{Path(__file__).resolve()}" "$@"\n'
    )
    b.chmod(0o755)
    return b


# ---------------------------------------------------------------------------- finding binaries


def test_find_binary_explicit_env_and_missing(tmp_path, monkeypatch, fake_binary):
    monkeypatch.delenv(sc.ENV_BINARY, raising=False)
    assert sc.find_sidecar_binary(fake_binary) == fake_binary
    with pytest.raises(sc.SidecarNotFoundError, match="binary argument"):
        sc.find_sidecar_binary(tmp_path / "nope")
    monkeypatch.setenv(sc.ENV_BINARY, str(fake_binary))
    assert sc.find_sidecar_binary() == fake_binary
    monkeypatch.setenv(sc.ENV_BINARY, str(tmp_path / "nope"))
    with pytest.raises(sc.SidecarNotFoundError, match=r"\$SWIFTMOE_SIDECAR"):
        sc.find_sidecar_binary()
    monkeypatch.delenv(sc.ENV_BINARY)
    monkeypatch.setattr(binaries, "_PKG_DIR", tmp_path / "pkg")
    monkeypatch.setattr(binaries, "_REPO_DIR", tmp_path / "repo")
    with pytest.raises(sc.SidecarNotFoundError) as ei:
        sc.find_sidecar_binary()
    assert "make build" in str(ei.value) and "pip install ." in str(ei.value)


def test_find_binary_prefers_bundled_over_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(sc.ENV_BINARY, raising=False)
    pkg, repo = tmp_path / "pkg", tmp_path / "repo"
    for p in (pkg / "_bin" / "swiftmoe-sidecar", repo / "bin" / "swiftmoe-sidecar"):
        p.parent.mkdir(parents=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    (repo / "go.mod").write_text("module x\n")
    monkeypatch.setattr(binaries, "_PKG_DIR", pkg)
    monkeypatch.setattr(binaries, "_REPO_DIR", repo)
    assert sc.find_sidecar_binary() == pkg / "_bin" / "swiftmoe-sidecar"
    (pkg / "_bin" / "swiftmoe-sidecar").unlink()
    assert sc.find_sidecar_binary() == repo / "bin" / "swiftmoe-sidecar"
    (repo / "go.mod").unlink()  # not a source checkout: its bin/ is not used
    with pytest.raises(sc.SidecarNotFoundError):
        sc.find_sidecar_binary()


def test_find_plugins_dir(tmp_path, monkeypatch, fake_binary):
    monkeypatch.delenv(sc.ENV_PLUGINS, raising=False)
    assert sc.find_plugins_dir(None, fake_binary) == fake_binary.parent.resolve()
    monkeypatch.setenv(sc.ENV_PLUGINS, str(tmp_path))
    assert sc.find_plugins_dir(None, fake_binary) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert sc.find_plugins_dir(other, fake_binary) == other
    with pytest.raises(sc.SidecarNotFoundError, match="plugins_dir argument"):
        sc.find_plugins_dir(tmp_path / "missing", fake_binary)


# ---------------------------------------------------------------------------- job spec


@pytest.mark.parametrize(
    "override, field",
    [
        ({"world_size": 0}, "world_size"),
        ({"slots_per_rank": True}, "slots_per_rank"),
        ({"slots_per_rank": -1}, "slots_per_rank"),
        ({"slots_per_rank": 0, "current_slots": [[0, 1, 2, 3]]}, "current_slots"),
        ({"experts_per_layer": []}, "experts_per_layer"),
        ({"experts_per_layer": [4, 0]}, "experts_per_layer"),
        ({"expert_param_numel": [8, 8, 8]}, "expert_param_numel"),
        ({"strategy": ""}, "strategy"),
        ({"strategy_options": {"x": 1}}, "strategy_options"),
        ({"ranks_per_node": -1}, "ranks_per_node"),
        ({"inter_node_bandwidth": float("nan")}, "inter_node_bandwidth"),
        ({"token_bytes": -1.0}, "token_bytes"),
        ({"flops_per_token": float("inf")}, "flops_per_token"),
        ({"flops_per_second": "fast"}, "flops_per_second"),
    ],
)
def test_job_spec_rejects_bad_fields(override, field):
    args = dict(world_size=2, slots_per_rank=2, experts_per_layer=[4], expert_param_numel=[8])
    args.update(override)
    with pytest.raises(ValueError, match=f"JobSpec.{field}"):
        sc.JobSpec(**args)


def test_job_spec_sends_its_cost_model_only_when_known():
    base = dict(world_size=2, slots_per_rank=2, experts_per_layer=[4], expert_param_numel=[8])
    assert not sc.JobSpec(**base).to_proto().HasField("cost_model")
    cm = sc.JobSpec(**base, token_bytes=1536, flops_per_second=6e14).to_proto().cost_model
    assert (cm.token_bytes, list(cm.flops_per_token), cm.flops_per_second) == (1536, [], 6e14)
    cm = sc.JobSpec(**base, flops_per_token=48.0).to_proto().cost_model
    assert list(cm.flops_per_token) == [48.0] and cm.token_bytes == 0


# ---------------------------------------------------------------------------- client


def test_client_round_trip(fake_server):
    address, planner = fake_server
    c = sc.SidecarClient(address, timeout_s=5)
    assert c._channel is None  # lazy: nothing is opened before the first call
    try:
        assert [s["name"] for s in c.list_strategies()] == ["static", "swiftmoe"]
        c.check_health()
        reg = c.register_job(SPEC, job_id="j1")
        assert reg.job_id == "j1"
        assert reg.initial_plan.slots_LK == [[0, 1, 2, 3, 0, 1]] * 2
        assert reg.shard_layout == [[(0, 0, 8)]]
        assert planner.jobs["j1"].topology.world_size == 2
        plan = c.report_loads("j1", 7, LOADS_LE)
        assert plan.iteration == 8 and plan.source == "PLAN_SOURCE_STRATEGY"
        assert (
            plan.slots_LK == fake_slots_LK(LOADS_LE, 6) == [[0, 1, 2, 3, 1, 1], [0, 1, 2, 3, 2, 2]]
        )
        assert c.get_plan("j1").slots_LK == plan.slots_LK
        with pytest.raises(sc.SidecarError) as ei:
            c.report_loads("nobody", 0, LOADS_LE)
        assert ei.value.code == grpc.StatusCode.NOT_FOUND and "nobody" in str(ei.value)
        for bad, where in (
            ([[1, -2]], r"loads_LE\[0\]\[1\]"),
            ("x", "loads_LE"),
            ([[1.5]], r"\[0\]\[0\]"),
        ):
            with pytest.raises(ValueError, match=where):
                c.report_loads("j1", 0, bad)
        with pytest.raises(ValueError, match="iteration"):
            c.report_loads("j1", -1, LOADS_LE)
    finally:
        c.close()


def test_client_deadline_when_server_hangs(fake_server):
    address, planner = fake_server
    planner.mode = "hang"
    with sc.SidecarClient(address, timeout_s=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(sc.SidecarError) as ei:
            c.report_loads("j1", 0, LOADS_LE)
        took = time.monotonic() - t0
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 0.3 + 1.0, f"call returned after {took:.2f}s, want about the 0.3s deadline"


def test_client_unavailable_is_fast(tmp_path):
    with sc.SidecarClient(f"unix://{tmp_path}/none.sock", timeout_s=5) as c:
        t0 = time.monotonic()
        with pytest.raises(sc.SidecarError) as ei:
            c.list_strategies()
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------------- plan service (attached)


def test_plan_service_attached_round_trip(fake_server):
    address, planner = fake_server
    svc = sc.PlanService(SPEC, address=address, job_id="j2", rpc_timeout_s=2)
    try:
        reg = svc.start()
        assert reg.job_id == "j2" and svc.latest.iteration == 0
        t0 = time.monotonic()
        svc.submit(0, LOADS_LE)
        assert time.monotonic() - t0 < 0.05, "submit must not wait for the sidecar"
        assert svc.poll(5.0) == fake_slots_LK(LOADS_LE, 6)
        assert svc.poll(0.0) is None  # the newest plan was already returned
        svc.submit(1, [[0, 0, 0, 9], [9, 0, 0, 0]])
        assert svc.poll(5.0) == [[0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 0, 0]]
        assert svc.latest.iteration == 2 and planner.reports == 2
        svc.submit(2, [["x"]])  # garbage is logged and counted, never raised
        assert svc.poll(0.2) is None and svc.events["bad_input"] == 1
    finally:
        svc.close()


def test_plan_service_hang_then_recovery(fake_server):
    address, planner = fake_server
    svc = sc.PlanService(SPEC, address=address, job_id="j3", rpc_timeout_s=0.3, max_backoff_s=0.5)
    try:
        svc.start()
        planner.mode = "hang"
        svc.submit(0, LOADS_LE)
        t0 = time.monotonic()
        assert svc.poll(0.05) is None
        took = time.monotonic() - t0
        assert took < 0.05 + 0.2, f"poll took {took:.3f}s, want about its 0.05s deadline"
        assert wait_for(lambda: svc.events["sidecar_failed"] >= 1, 10)
        planner.mode = "ok"
        planner.release.set()

        def planned() -> bool:
            svc.submit(1, LOADS_LE)
            return svc.poll(1.0) == fake_slots_LK(LOADS_LE, 6)

        assert wait_for(planned, 15), f"no plan after the sidecar recovered: {dict(svc.events)}"
        assert svc.events["reregistered"] >= 1 and svc.events["restarts"] == 0
        assert planner.jobs.keys() == {"j3"}
    finally:
        svc.close()


def test_plan_service_auto_slots_need_a_sidecar_that_chooses(fake_server):
    """The fake answers like a sidecar that predates automatic slots (no topology): slots 0 is
    refused with the fix, while a job with explicit slots keeps them."""
    address, planner = fake_server
    svc = sc.PlanService(replace(SPEC, slots_per_rank=0), address=address, rpc_timeout_s=2)
    with pytest.raises(
        sc.SidecarError, match="without choosing slots_per_rank.*set slots_per_rank"
    ):
        svc.start()
    with sc.PlanService(SPEC, address=address, rpc_timeout_s=2) as ok:
        assert ok.spec.slots_per_rank == SPEC.slots_per_rank


def test_plan_service_reregisters_lost_job(fake_server):
    address, planner = fake_server
    svc = sc.PlanService(SPEC, address=address, rpc_timeout_s=2)
    try:
        job_id = svc.start().job_id
        planner.jobs.clear()  # as if the sidecar forgot the job
        svc.submit(0, LOADS_LE)
        assert svc.poll(5.0) is None and svc.events["job_lost"] == 1
        assert list(planner.jobs) == [job_id], "the same job id must be registered again"
        svc.submit(1, LOADS_LE)
        assert svc.poll(5.0) == fake_slots_LK(LOADS_LE, 6)
    finally:
        svc.close()


def test_plan_service_reregisters_with_placement_in_force(fake_server):
    address, planner = fake_server
    svc = sc.PlanService(SPEC, address=address, rpc_timeout_s=2)
    try:
        job_id = svc.start().job_id
        assert not planner.jobs[job_id].current_slots, "first registration: static placement"
        svc.submit(0, LOADS_LE)
        in_force = svc.poll(5.0)
        assert in_force == fake_slots_LK(LOADS_LE, 6)
        planner.jobs.clear()  # the sidecar forgot the job (e.g. it restarted)
        svc.submit(1, LOADS_LE)
        assert svc.poll(5.0) is None and svc.events["job_lost"] == 1
        sent = [list(ls.slots) for ls in planner.jobs[job_id].current_slots]
        assert sent == in_force, "re-registration must carry the placement the engine adopted"
    finally:
        svc.close()


def test_jobspec_current_slots_checked():
    with pytest.raises(ValueError, match="current_slots"):
        sc.JobSpec(
            world_size=2,
            slots_per_rank=2,
            experts_per_layer=[3],
            expert_param_numel=[4],
            current_slots=[[0, 1, 2]],
        )


def test_plan_service_start_failure_is_clear(tmp_path):
    svc = sc.PlanService(SPEC, address=f"unix://{tmp_path}/none.sock", rpc_timeout_s=1)
    with pytest.raises(sc.SidecarError, match="RegisterJob"):
        svc.start()
    svc.close()


# ---------------------------------------------------------------------------- managed (fake process)


def test_managed_sidecar_start_close_no_orphans(fake_binary, tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PIDFILE", str(pidfile))
    s = sc.ManagedSidecar(binary=fake_binary, extra_args=["--fake-mode", "spawn-child"])
    pid = s.pid
    try:
        assert s.address.startswith("unix://")
        sock = Path(s.address[len("unix://") :])
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert s.command[1:5] == [
            "serve",
            "--exit-with-parent",
            "--plugins-dir",
            str(fake_binary.parent.resolve()),
        ]
        with sc.SidecarClient(s.address, 5) as c:
            assert len(c.list_strategies()) == 2
        assert wait_for(pidfile.exists, 5)
        child = int(pidfile.read_text())
        assert not gone(child)
    finally:
        s.close()
    assert wait_gone(pid) and wait_gone(child), "sidecar or its child survived close()"
    assert not sock.exists() and not sock.parent.exists()
    s.close()  # twice is fine
    with pytest.raises(sc.SidecarError, match="not running"):
        _ = s.address


def test_managed_sidecar_kills_when_sigterm_ignored(fake_binary):
    s = sc.ManagedSidecar(
        binary=fake_binary, extra_args=["--fake-mode", "ignore-term"], stop_timeout_s=0.5
    )
    pid = s.pid
    t0 = time.monotonic()
    s.close()
    took = time.monotonic() - t0
    assert wait_gone(pid), "SIGKILL after the stop timeout must end the sidecar"
    assert 0.4 < took < 0.5 + 3, f"close took {took:.2f}s, want the 0.5s stop timeout then SIGKILL"


@pytest.mark.parametrize(
    "mode, message",
    [
        ("no-ready", "printed no 'listening on ADDRESS' line"),
        ("exit-early", "exited with status 3"),
    ],
)
def test_managed_sidecar_start_failures(fake_binary, tmp_path, monkeypatch, mode, message):
    pidfile = tmp_path / "self.pid"
    monkeypatch.setenv("FAKE_SELF_PIDFILE", str(pidfile))
    t0 = time.monotonic()
    with pytest.raises(sc.SidecarError, match=message) as ei:
        sc.ManagedSidecar(binary=fake_binary, extra_args=["--fake-mode", mode], start_timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0 + 6
    if mode == "exit-early":
        assert "fake startup failure" in str(ei.value)  # the stderr tail is in the message
    assert wait_gone(int(pidfile.read_text()))


def test_plan_service_restarts_killed_sidecar(fake_binary):
    svc = sc.PlanService(SPEC, binary=fake_binary, rpc_timeout_s=1.0, max_backoff_s=0.5)
    try:
        job_id = svc.start().job_id
        svc.submit(0, LOADS_LE)
        assert svc.poll(5.0) == fake_slots_LK(LOADS_LE, 6)
        old = svc.sidecar.pid
        os.kill(old, signal.SIGKILL)
        assert wait_gone(old)
        svc.submit(1, LOADS_LE)
        t0 = time.monotonic()
        assert svc.poll(0.01) is None
        assert time.monotonic() - t0 < 0.2
        assert wait_for(lambda: svc.events["reregistered"] >= 1, 20), dict(svc.events)
        new = svc.sidecar.pid
        assert new != old and svc.events["restarts"] == 1
        svc.submit(2, [[0, 0, 0, 9], [9, 0, 0, 0]])
        assert svc.poll(5.0) == [[0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 0, 0]]
        assert svc.latest.job_id == job_id and svc.latest.iteration == 3
    finally:
        svc.close()
    assert wait_gone(new), "the restarted sidecar survived close()"


CHILD_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from swiftmoe import planning as sc
    marker = Path(sys.argv[2])
    def prev(signum, frame):
        marker.write_text("previous handler ran")
        os._exit(0)  # no atexit: only the SIGTERM handler can have stopped the sidecar
    if sys.argv[3] == "sigterm":
        signal.signal(signal.SIGTERM, prev)
    s = sc.ManagedSidecar(binary=sys.argv[1])
    print(s.pid, flush=True)
    if sys.argv[3] == "sigterm":
        time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_no_orphan_when_owner_exits(fake_binary, tmp_path, how):
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=f"{PYSHIM}:{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(fake_binary), str(marker), how],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = p.stdout.readline()
        assert line.strip().isdigit(), f"owner printed {line!r}"
        pid = int(line)
        if how == "sigterm":
            assert not gone(pid)
            p.send_signal(signal.SIGTERM)
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        p.stdout.close()
    assert wait_gone(pid), f"sidecar {pid} outlived its owner ({how})"
    if how == "sigterm":
        assert marker.read_text() == "previous handler ran", "the previous SIGTERM handler must run"


# ---------------------------------------------------------------------------- real binary

real = pytest.mark.skipif(
    not REAL_BINARY.is_file(), reason="bin/swiftmoe-sidecar is not built (`make build`)"
)


@real
def test_real_sidecar_round_trip():
    s = sc.ManagedSidecar(binary=REAL_BINARY)
    pid = s.pid
    try:
        sock = Path(s.address[len("unix://") :])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        with sc.SidecarClient(s.address, 10) as c:
            names = {x["name"] for x in c.list_strategies()}
            assert {"static", "swiftmoe"} <= names
            spec = sc.JobSpec(
                world_size=2,
                slots_per_rank=3,
                experts_per_layer=[4, 4],
                expert_param_numel=[16],
                strategy="swiftmoe",
            )
            reg = c.register_job(spec, job_id="real-1")
            assert reg.job_id == "real-1" and len(reg.initial_plan.slots_LK) == 2
            plan = c.report_loads("real-1", 0, LOADS_LE)
            assert plan.iteration == 1 and len(plan.slots_LK) == 2
            for slots_K in plan.slots_LK:
                assert len(slots_K) == 6 and set(slots_K) == {0, 1, 2, 3}
            assert c.get_plan("real-1").slots_LK == plan.slots_LK
    finally:
        s.close()
    assert wait_gone(pid) and not sock.exists()


@real
def test_real_sidecar_chooses_slots_and_reports_its_defaults():
    """slots_per_rank 0: the sidecar picks the slots from its hardware discovery and says how;
    a PlanService keeps what was chosen for re-registration."""
    spec = sc.JobSpec(
        world_size=2, slots_per_rank=0, experts_per_layer=[4, 6], expert_param_numel=[16]
    )
    with sc.PlanService(spec, binary=REAL_BINARY) as svc:
        reg = svc.registration
        chosen = reg.topology["slots_per_rank"]
        assert 3 <= chosen <= 6, reg.topology  # ceil(6 experts / 2 ranks) .. 6 experts
        assert reg.topology["world_size"] == 2
        line = next(d for d in reg.defaults if d.startswith("slots_per_rank = "))
        assert line.startswith(f"slots_per_rank = {chosen}: "), reg.defaults
        assert all(len(slots_K) == 2 * chosen for slots_K in reg.initial_plan.slots_LK)
        assert svc.spec.slots_per_rank == chosen
        assert svc.spec.intra_node_bandwidth == reg.topology["intra_node_bandwidth"]
    off = sc.ManagedSidecar(binary=REAL_BINARY, extra_args=("--discover=false",))
    try:
        with sc.SidecarClient(off.address, 10) as c:
            with pytest.raises(sc.SidecarError, match="topology.slots_per_rank.*--discover=false"):
                c.register_job(spec)
    finally:
        off.close()


@real
def test_real_sidecar_restart_after_kill():
    spec = sc.JobSpec(
        world_size=2,
        slots_per_rank=2,
        experts_per_layer=[4],
        expert_param_numel=[16],
        strategy="static",
    )
    svc = sc.PlanService(
        spec, binary=REAL_BINARY, job_id="real-2", rpc_timeout_s=2.0, max_backoff_s=0.5
    )
    try:
        svc.start()
        svc.submit(0, [[1, 2, 3, 4]])
        assert svc.poll(10.0) is not None
        old = svc.sidecar.pid
        os.kill(old, signal.SIGKILL)
        assert wait_gone(old)
        svc.submit(1, [[1, 2, 3, 4]])
        assert wait_for(lambda: svc.events["reregistered"] >= 1, 30), dict(svc.events)
        svc.submit(2, [[1, 2, 3, 4]])
        plan = svc.poll(10.0)
        assert plan is not None and sorted(plan[0]) == [0, 1, 2, 3]
        assert svc.latest.job_id == "real-2"
        new = svc.sidecar.pid
    finally:
        svc.close()
    assert wait_gone(new)


# ---------------------------------------------------------------------------- fake sidecar process


def _fake_sidecar_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("--exit-with-parent", action="store_true")
    ap.add_argument("--plugins-dir", required=True)
    ap.add_argument("--fake-mode", default="ok")
    a = ap.parse_args(argv)
    if os.environ.get("FAKE_SELF_PIDFILE"):
        Path(os.environ["FAKE_SELF_PIDFILE"]).write_text(str(os.getpid()))
    if a.fake_mode == "exit-early":
        print("fake startup failure: bad flag", file=sys.stderr, flush=True)
        return 3
    if a.fake_mode == "no-ready":
        time.sleep(60)
        return 0
    if a.fake_mode == "spawn-child":
        child = subprocess.Popen(["sleep", "60"])
        Path(os.environ["FAKE_CHILD_PIDFILE"]).write_text(str(child.pid))
    d = Path(tempfile.mkdtemp(prefix="swiftmoe-fake-sidecar-"))
    sock = d / "sidecar.sock"
    server, _ = start_fake_server(sock)
    sock.chmod(0o600)
    stop = threading.Event()
    if a.fake_mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"listening on unix://{sock}", flush=True)
    stop.wait(120)
    server.stop(grace=0).wait(5)
    sock.unlink(missing_ok=True)
    d.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(_fake_sidecar_main(sys.argv[1:]))


@real
def test_managed_sidecar_stops_a_stopped_process_fast():
    s = sc.ManagedSidecar(binary=REAL_BINARY, stop_timeout_s=5.0)
    pid = s.pid
    os.kill(pid, signal.SIGSTOP)  # a hung sidecar
    t0 = time.monotonic()
    s.close()
    took = time.monotonic() - t0
    assert wait_gone(pid)
    assert took < 3.0, f"close of a stopped sidecar took {took:.2f}s; SIGCONT must follow SIGTERM"


def test_managed_sidecar_shutdown_refuses_restart(fake_binary):
    s = sc.ManagedSidecar(binary=fake_binary)
    pid = s.pid
    s.shutdown()
    assert wait_gone(pid)
    with pytest.raises(sc.SidecarError, match="shut down"):
        s.restart()
    assert s.pid is None or not Path(f"/proc/{s.pid}").exists()
