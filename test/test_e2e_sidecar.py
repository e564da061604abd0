"""End to end: the real swiftmoe-sidecar process plans for real Python ranks while they train.

Two gloo ranks train TinyNet (two swiftmoe.nn.MoE blocks, skewed routing so that the swiftmoe
strategy keeps moving replicas) with ``SwiftMoEConfig(strategy="swiftmoe")``: rank 0 starts the
bundled sidecar (or attaches to one the test started), registers the job, reports every
iteration's loads and adopts the plans. Every case checks the central invariant, parameters
equal to single-process dropless training on the global batch within 1e-5, and that no sidecar
or plugin process, socket or socket directory is left behind. The cases:

* clean: every plan arrives and is accepted, placements change;
* attach: the same against a sidecar the test owns, which the engine must not stop;
* kill: the sidecar is SIGKILLed mid-run; training keeps the last valid placement, the sidecar
  is restarted, the job registered again, plans are accepted again, and the parameters equal
  those of the clean run;
* hang: the sidecar is SIGSTOPped mid-run; no step waits past the plan deadline by more than a
  margin, the sidecar is replaced, plans come back; SIGCONT at the end.

Each case marks the processes it starts with its own ``SWIFTMOE_TEST_CASE`` environment value
and looks for them in /proc (see pyshim/tests/orphan_guard.py) after ``handle.close()`` and after
the ranks exit. The last test checks that the /proc scan really finds an orphan.

Shape legend: B tokens of one rank, N ranks, S slots per rank, K = N*S slots of a layer.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orphan_guard
import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks
from engine_harness import (
    SLOTS_FOR,
    allreduce_dense_grads,
    full_state,
    global_batch,
    make_handle,
    reference_run,
)

REPO = Path(__file__).resolve().parents[1]
SIDECAR = REPO / "bin" / "swiftmoe-sidecar"
CASE_ENV = "SWIFTMOE_TEST_CASE"
OPT = "AdamW"
N = 2
S = SLOTS_FOR[N]
STEPS = 8
KILL_STEP = 3  # the sidecar dies before this step's forward (its loads find it dead)
HANG_STEP = 3
HANG_DEADLINE_S = 0.25  # plan_deadline_s while the sidecar hangs
HANG_MARGIN_S = 1.0  # a step may exceed the deadline by this much (busy 2-core machine)
HANG_MAX_S = 25.0  # give up waiting for the replacement sidecar after this long
ATOL = 1e-5

needs_sidecar = pytest.mark.skipif(
    not os.access(SIDECAR, os.X_OK), reason=f"{SIDECAR} is missing: run `make build`"
)


def _guard():
    """The /proc scanner of the session's orphan guard (pyshim/tests/orphan_guard.py)."""
    return orphan_guard


def _procs(case: str, grace_s: float = 0.0) -> list[dict]:
    """Live sidecar/plugin processes carrying this case's marker, as plain dicts."""
    g = _guard()
    found = g.find_orphans(case, None, grace_s=grace_s, env_key=CASE_ENV)
    return [{"pid": i.pid, "name": i.name, "start": i.start_ticks, "cmd": i.cmdline} for i in found]


def _same_alive(p: dict) -> bool:
    """The process recorded in ``p`` still runs (same pid and start time, not a zombie)."""
    info = _guard().proc_info(p["pid"])
    return info is not None and info.start_ticks == p["start"] and info.state not in ("Z", "X")


def _socket_path(address: str) -> Path:
    assert address.startswith("unix://"), f"sidecar address {address!r} is not a unix socket"
    return Path(address[len("unix://") :])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def _wait_dead(sidecar, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while sidecar.alive():
        if time.monotonic() > end:
            raise AssertionError(f"sidecar pid {sidecar.pid} still alive {timeout_s}s after kill")
        time.sleep(0.01)


def _proc_start(pid: int) -> int | None:
    info = _guard().proc_info(pid)
    return None if info is None else info.start_ticks


# ---------------------------------------------------------------------------- the rank worker


def _train(rank: int, world_size: int, scenario: str, tmpdir: str, case: str, address) -> dict:
    """One rank: train TinyNet with the sidecar planning; what happened, by step."""
    os.environ["TMPDIR"] = tmpdir  # the sidecar's private socket directory goes here
    os.environ[CASE_ENV] = case  # inherited by the sidecar and its plugins
    records = _Records()
    log = logging.getLogger("swiftmoe")
    log.setLevel(logging.INFO)
    log.addHandler(records)
    deadline = HANG_DEADLINE_S if scenario == "hang" else 10.0
    model, handle, dense_opt = make_handle(
        world_size,
        OPT,
        source_kind="sidecar",
        strategy="swiftmoe",
        sidecar_address=address,
        plan_deadline_s=deadline,
        slots_per_rank="auto" if scenario == "auto" else S,
    )
    svc = handle.plan_source  # PlanService on rank 0, None elsewhere
    out: dict = {"rank": rank, "placements": [], "events": [], "step_s": [], "plugins": []}
    out["S"] = handle.config.slots_per_rank
    if rank == 0:
        assert svc is not None, "rank 0 has no plan service with strategy='swiftmoe'"
        out["registration"] = svc.registration
        out["address0"] = svc.client.address
        out["pid0"] = svc.sidecar.pid if svc.sidecar is not None else None
        out["pid0_start"] = None if out["pid0"] is None else _proc_start(out["pid0"])
    stopped = None  # (pid, start ticks, time) of the SIGSTOPped sidecar
    step, after_restart_accepted = 0, False
    while True:
        if rank == 0 and scenario == "kill" and step == KILL_STEP:
            out["killed_pid"] = svc.sidecar.pid
            os.kill(svc.sidecar.pid, signal.SIGKILL)
            _wait_dead(svc.sidecar)
        if rank == 0 and scenario == "hang" and step == HANG_STEP:
            pid = svc.sidecar.pid
            os.kill(pid, signal.SIGSTOP)
            stopped = (pid, _proc_start(pid), time.monotonic())
            out["stopped_pid"] = pid
        out["placements"].append(handle.placement)
        x, y = global_batch(step, world_size)
        B = x.shape[0] // world_size
        x, y = x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        allreduce_dense_grads(model, world_size)
        dense_opt.step()
        t0 = time.perf_counter()
        stats = handle.step()
        out["step_s"].append(time.perf_counter() - t0)
        dense_opt.zero_grad()
        handle.zero_grad()
        out["events"].append(stats.plan_event)
        if rank == 0 and step == 1:  # the plugin runs by now
            out["plugins"] = [p for p in _procs(case) if p["name"] != "swiftmoe-sidecar"]
        step += 1
        # rank 0 decides when to stop; every rank follows
        go = torch.zeros(1, dtype=torch.long)
        if rank == 0:
            if scenario != "hang":
                go[0] = int(step < STEPS)
            else:
                restarted = svc.events.get("restarts", 0) > 0
                if restarted and stats.plan_event == "accepted" and step > HANG_STEP + 1:
                    after_restart_accepted = True
                waited = time.monotonic() - stopped[2] if stopped else 0.0
                go[0] = int(
                    step <= HANG_STEP or not (after_restart_accepted or waited > HANG_MAX_S)
                )
        dist.broadcast(go, src=0)
        if not int(go[0]):
            break
    out["steps"] = step
    out["placements"].append(handle.placement)
    out["state"] = full_state(model, handle)
    out["plan_events"] = dict(handle.plan_events)
    if rank == 0:
        out["svc_events"] = dict(svc.events)
        out["address1"] = svc.client.address
        out["pid1"] = svc.sidecar.pid if svc.sidecar is not None else None
        out["alive_before_close"] = _procs(case)
        if stopped is not None:  # SIGCONT the hung sidecar if the service has not replaced it
            out["stopped_alive_at_end"] = _proc_start(stopped[0]) == stopped[1]
            if out["stopped_alive_at_end"]:
                os.kill(stopped[0], signal.SIGCONT)
    t0 = time.perf_counter()
    handle.close()
    out["close_s"] = time.perf_counter() - t0
    if rank == 0:
        out["after_close"] = _procs(case, grace_s=5.0)
        left = []
        if address is None:  # an owned sidecar's socket and private directory are removed
            for a in {out["address0"], out["address1"]}:
                sock = _socket_path(a)
                left += [str(p) for p in (sock, sock.parent) if p.exists()]
        out["sockets_after_close"] = left
    out["logs"] = records.lines
    return out


def _run(scenario: str, address: str | None = None, tmpdir: str | None = None) -> tuple:
    """Both ranks of one scenario, then the checks that nothing outlived them."""
    own_tmp = tmpdir is None
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="smoe-e2e-")  # short: socket paths <= 107 bytes
    case = uuid.uuid4().hex
    try:
        t0 = time.perf_counter()
        res = run_ranks(
            _train, N, scenario, tmpdir, case, address, timeout_s=120, collective_timeout_s=60
        )
        wall = time.perf_counter() - t0
        survivors = _procs(case, grace_s=5.0)
        assert survivors == [], f"{scenario}: processes outlived the ranks: {survivors}"
        if address is None:  # the owned sidecars made their private socket dirs in tmpdir
            for a in (res[0]["address0"], res[0]["address1"]):
                assert _socket_path(a).parent.parent == Path(tmpdir), f"{a} not under {tmpdir}"
            left = [n for n in os.listdir(tmpdir) if n.startswith("swiftmoe")]
            assert left == [], f"{scenario}: left in the sidecar's TMPDIR {tmpdir}: {left}"
    finally:
        if own_tmp:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return res, wall


def _assert_matches_reference(res: list[dict], what: str) -> None:
    steps = res[0]["steps"]
    ref = reference_run(OPT, steps, N)
    for r in res:
        assert r["steps"] == steps
        assert set(r["state"]) == set(ref)
        for name, want in ref.items():
            torch.testing.assert_close(
                r["state"][name],
                want,
                rtol=0,
                atol=ATOL,
                msg=lambda m, n=name, k=r["rank"]: f"{what}: rank {k} {n} vs reference: {m}",
            )
    assert all(r["placements"] == res[0]["placements"] for r in res), "ranks disagree"
    assert all(r["events"] == res[0]["events"] for r in res), "ranks saw different plan events"


def _assert_closed_clean(r0: dict, what: str) -> None:
    assert r0["after_close"] == [], f"{what}: alive after handle.close(): {r0['after_close']}"
    assert r0["sockets_after_close"] == [], f"{what}: left after close: {r0['sockets_after_close']}"
    for p in r0["plugins"]:
        assert not _same_alive(p), f"{what}: plugin {p} outlived the run"


@pytest.fixture(scope="module")
def clean_run():
    return _run("clean")


# ---------------------------------------------------------------------------- tests


@needs_sidecar
def test_plans_arrive_are_accepted_and_training_matches_reference(clean_run) -> None:
    res, wall = clean_run
    r0 = res[0]
    print(f"clean: {STEPS} steps on {N} ranks in {wall:.1f}s (spawn included)")
    assert r0["events"] == ["accepted"] * STEPS, r0["events"]
    assert r0["plan_events"] == {"accepted": STEPS}
    ev = r0["svc_events"]
    assert ev.get("planned") == STEPS and ev.get("submitted") == STEPS, ev
    for bad in ("sidecar_failed", "restarts", "rejected", "job_lost", "recover_failed"):
        assert ev.get(bad, 0) == 0, ev
    pl = r0["placements"]
    changed = sum(a != b for a, b in zip(pl, pl[1:], strict=False))
    assert changed >= 1, f"the swiftmoe strategy never moved a replica under skew: {pl}"
    assert r0["pid0"] == r0["pid1"] and r0["pid0"] is not None
    assert r0["plugins"], "no swiftmoe-strategy-* plugin process was seen while training"
    _assert_matches_reference(res, "clean")


@needs_sidecar
def test_no_orphans_after_close_and_after_exit(clean_run) -> None:
    res, _ = clean_run
    r0 = res[0]
    _assert_closed_clean(r0, "clean")
    assert r0["pid0"] is not None and r0["pid0_start"] is not None
    assert not _same_alive({"pid": r0["pid0"], "start": r0["pid0_start"]}), "sidecar survived"
    sock = _socket_path(r0["address0"])
    assert not sock.exists() and not sock.parent.exists(), f"{sock} or its directory remains"


@needs_sidecar
def test_auto_slots_chosen_by_the_sidecar_train_to_the_reference() -> None:
    """slots_per_rank="auto": rank 0's sidecar chooses the slots from its hardware discovery
    (no GPU here: its default of 4, within [ceil(E/N), E]); every rank adopts them, the plans
    fit them, and training still equals dropless single-process training."""
    res, _ = _run("auto")
    r0 = res[0]
    reg = r0["registration"]
    chosen = reg.topology["slots_per_rank"]
    E = len(set(r0["placements"][0][0]))
    assert -(-E // N) <= chosen <= E, (chosen, E)
    assert [r["S"] for r in res] == [chosen] * N, "ranks disagree on the chosen slots"
    assert any(line.startswith(f"slots_per_rank = {chosen}: ") for line in reg.defaults), reg
    for placement in r0["placements"]:
        assert all(len(slots_K) == N * chosen for slots_K in placement), placement
    assert r0["events"] == ["accepted"] * STEPS, r0["events"]
    assert any("chose" in line and "slots per rank" in line for line in r0["logs"]), r0["logs"]
    _assert_matches_reference(res, "auto")
    _assert_closed_clean(r0, "auto")


@needs_sidecar
def test_attached_sidecar_plans_and_is_left_running(monkeypatch) -> None:
    from swiftmoe.planning.process import ManagedSidecar

    case = uuid.uuid4().hex
    sockdir = tempfile.mkdtemp(prefix="smoe-att-")
    monkeypatch.setenv("TMPDIR", sockdir)
    monkeypatch.setenv(CASE_ENV, case)
    try:
        sc = ManagedSidecar(start_timeout_s=30)
        try:
            address = sc.address
            res, wall = _run("attach", address=address, tmpdir=sockdir)
            print(f"attach: {STEPS} steps in {wall:.1f}s")
            r0 = res[0]
            assert r0["pid0"] is None, "attached: the engine must not own a sidecar"
            assert r0["events"] == ["accepted"] * STEPS, r0["events"]
            _assert_matches_reference(res, "attach")
            assert sc.alive() and sc.address == address, (
                "the engine stopped a sidecar it attached to"
            )
            assert _socket_path(address).exists()
        finally:
            sc.close()
        assert not sc.alive()
        assert _procs(case, grace_s=5.0) == []
        left = [n for n in os.listdir(sockdir) if n.startswith("swiftmoe")]
        assert left == [], f"left after close: {left}"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@needs_sidecar
def test_sidecar_killed_mid_run_training_continues_and_matches(clean_run) -> None:
    clean, _ = clean_run
    res, wall = _run("kill")
    r0 = res[0]
    print(f"kill: {STEPS} steps in {wall:.1f}s; events {r0['events']}; service {r0['svc_events']}")
    ev = r0["events"]
    assert "accepted" in ev[:KILL_STEP], ev
    # The loads of KILL_STEP found the sidecar dead: a step from there on kept the last valid
    # placement (on a loaded machine the step right at KILL_STEP may still adopt a plan that
    # the live sidecar answered late, from earlier loads).
    kept = [k for k in range(KILL_STEP, len(ev)) if ev[k] == "kept"]
    assert kept, ev
    pl = r0["placements"]
    assert pl[kept[0] + 1] == pl[kept[0]], "the placement changed without a plan"
    # ... the sidecar was restarted, the job registered again, and plans came back.
    assert "accepted" in ev[KILL_STEP + 1 :], ev
    assert "rejected" not in ev and "error" not in ev, ev
    svc = r0["svc_events"]
    assert svc.get("sidecar_failed", 0) >= 1, svc
    assert svc.get("restarts", 0) >= 1 and svc.get("reregistered", 0) >= 1, svc
    assert r0["pid1"] != r0["killed_pid"] and r0["pid1"] is not None
    assert r0["address1"] != r0["address0"], "a restarted sidecar listens on a fresh socket"
    logs = "\n".join(r0["logs"])
    assert "restarting it" in logs and "registered again" in logs, logs
    _assert_closed_clean(r0, "kill")
    _assert_matches_reference(res, "kill")
    for name, want in clean[0]["state"].items():
        torch.testing.assert_close(
            r0["state"][name], want, rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )


@needs_sidecar
def test_hung_sidecar_never_stalls_a_step_past_the_deadline() -> None:
    res, wall = _run("hang")
    r0 = res[0]
    steps = r0["steps"]
    hung = r0["step_s"][HANG_STEP:]
    print(
        f"hang: {steps} steps in {wall:.1f}s; deadline {HANG_DEADLINE_S}s; step before the hang "
        f"max {max(r0['step_s'][:HANG_STEP]):.3f}s, while hung max {max(hung):.3f}s; "
        f"close {r0['close_s']:.2f}s; service {r0['svc_events']}"
    )
    for r in res:
        worst = max(r["step_s"])
        assert worst <= HANG_DEADLINE_S + HANG_MARGIN_S, (
            f"rank {r['rank']}: a step took {worst:.3f}s with a hung sidecar "
            f"(deadline {HANG_DEADLINE_S}s + margin {HANG_MARGIN_S}s); step times {r['step_s']}"
        )
    ev = r0["events"]
    # The hung sidecar's plans never came: some step from HANG_STEP on kept its placement (the
    # step right at HANG_STEP may adopt a plan the sidecar answered late, from earlier loads).
    assert "kept" in ev[HANG_STEP:], ev
    svc = r0["svc_events"]
    assert svc.get("sidecar_failed", 0) >= 1 and svc.get("restarts", 0) >= 1, svc
    assert "accepted" in ev[HANG_STEP + 1 :], f"no plan after the replacement sidecar: {ev}"
    assert r0["pid1"] != r0["stopped_pid"]
    assert not r0["stopped_alive_at_end"], "the hung sidecar was never stopped"
    _assert_closed_clean(r0, "hang")
    _assert_matches_reference(res, "hang")


def test_orphan_check_finds_a_detached_sidecar_named_process(tmp_path) -> None:
    """The session guard's /proc scan finds a process named like the sidecar that carries the
    marker but was reparented away from pytest, and one that descends from pytest without it."""
    g = _guard()
    fake = tmp_path / "swiftmoe-sidecar"
    shutil.copy("/bin/sleep", fake)
    plugin = tmp_path / "swiftmoe-strategy-fake"
    shutil.copy("/bin/sleep", plugin)
    marker = uuid.uuid4().hex
    env = dict(os.environ, SWIFTMOE_TEST_SESSION=marker)
    # Detached: the shell prints the child's pid and exits, so the child is reparented.
    out = subprocess.run(
        ["/bin/sh", "-c", f'"{fake}" 60 </dev/null >/dev/null 2>&1 & echo $!'],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    orphan = int(out.stdout.strip())
    child = subprocess.Popen([str(plugin), "60"], env={"PATH": "/bin"})  # no marker
    try:
        info = g.proc_info(orphan)
        assert info is not None and info.ppid != os.getpid() and info.marker == marker
        found = g.find_orphans(marker, os.getpid(), grace_s=0.5)
        by_pid = {i.pid: i for i in found}
        assert orphan in by_pid and by_pid[orphan].name == "swiftmoe-sidecar", found
        assert child.pid in by_pid and by_pid[child.pid].name == "swiftmoe-strategy-fake", found
        # Another session's processes are not ours: neither rule matches them.
        assert g.find_orphans(uuid.uuid4().hex, None, grace_s=0.0) == []
        assert g.kill_same(by_pid[orphan]) and g.kill_same(by_pid[child.pid])
        child.wait(timeout=10)
        assert g.find_orphans(marker, os.getpid(), grace_s=5.0) == []
    finally:
        for pid in (orphan, child.pid):
            info = g.proc_info(pid)
            if info is not None and g.is_swiftmoe_name(info.name):
                os.kill(pid, signal.SIGKILL)
        child.wait(timeout=10)


def test_session_guard_fails_a_run_that_leaves_an_orphan(tmp_path) -> None:
    """A pytest session whose only (passing) test leaves a detached process named like the
    sidecar ends with exit status 1, names the process, and has killed it."""
    fake = tmp_path / "swiftmoe-sidecar"
    shutil.copy("/bin/sleep", fake)
    pidfile = tmp_path / "pid"
    (tmp_path / "test_leak.py").write_text(
        "import subprocess\n\n\n"
        "def test_leaks():\n"
        f'    cmd = \'"{fake}" 60 </dev/null >/dev/null 2>&1 & echo $! > "{pidfile}"\'\n'
        "    subprocess.run(['/bin/sh', '-c', cmd], check=True, timeout=10)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SWIFTMOE_TEST_SESSION"}
    env["SWIFTMOE_ORPHAN_GRACE_S"] = "1"
    # The guard as this project's pytest configuration loads it: a plugin found on the path.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "pyshim" / "tests"), *sys.path])
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "orphan_guard"]
        + [str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    pid = int(pidfile.read_text())
    g = _guard()
    try:
        assert r.returncode == 1, f"exit status {r.returncode}:\n{r.stdout}\n{r.stderr}"
        assert "1 passed" in r.stdout and "orphaned processes" in r.stdout, r.stdout
        assert f"pid {pid} " in r.stdout, r.stdout
        end = time.monotonic() + 10
        while (info := g.proc_info(pid)) is not None and info.state not in ("Z", "X"):
            assert time.monotonic() < end, f"the guard did not kill orphan pid {pid}"
            time.sleep(0.05)
    finally:
        info = g.proc_info(pid)
        if info is not None and info.name == "swiftmoe-sidecar":
            os.kill(pid, signal.SIGKILL)
