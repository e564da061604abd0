"""Plugin trust, option checks, fallbacks and the load history, against the real sidecar and its
real plugins (``make build``): what the shim sees and reports.

* A strategy option with a bad value is refused when the job registers (INVALID_ARGUMENT naming
  the option and what it accepts; ``swiftmoe.replicate_`` raises ValueError), not at each plan.
* A plugin binary replaced while the sidecar was down is refused by the restarted sidecar,
  because the plan service sends the digest the job first saw; the refusal is an error log line,
  ``refusal`` and ``events["refused"]``, and every plan is then the placement in force, reported
  as a fallback (``origin``), never as the strategy's.
* The job's load history leaves the sidecar (``state_dict``) and comes back on a fresh one
  (``load_state_dict``), which then plans exactly as the first would have.

Every RPC, wait and subprocess has a timeout.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from swiftmoe import planning as sc
from swiftmoe.planning.client import history_from_proto

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin"
SIDECAR = BIN / "swiftmoe-sidecar"

real = pytest.mark.skipif(not os.access(SIDECAR, os.X_OK), reason=f"{SIDECAR} missing: make build")

LOADS = [
    [[40, 3, 2, 1], [1, 1, 30, 9]],
    [[5, 30, 2, 1], [9, 1, 1, 30]],
    [[1, 2, 3, 50], [7, 7, 7, 7]],
]


def spec(strategy: str = "swiftmoe", **opts: str) -> sc.JobSpec:
    return sc.JobSpec(
        world_size=2,
        slots_per_rank=3,
        experts_per_layer=[4, 4],
        expert_param_numel=[16],
        strategy=strategy,
        strategy_options=opts,
    )


def plugins_copy(tmp_path: Path) -> Path:
    """A private plugins directory holding copies of the built plugins (no SHA256SUMS)."""
    d = tmp_path / "plugins"
    d.mkdir()
    for p in BIN.glob("swiftmoe-strategy-*"):
        shutil.copy2(p, d / p.name)
    return d


def tamper(path: Path) -> None:
    """Replace a plugin with a runnable binary of another digest (trailing bytes)."""
    tmp = path.with_suffix(".new")
    shutil.copy2(path, tmp)
    with tmp.open("ab") as f:
        f.write(b"tampered")
    os.replace(tmp, path)


def wait_for(cond, timeout_s: float = 30.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def records():
    h = Records()
    log = logging.getLogger("swiftmoe")
    old = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(h)
    yield h
    log.removeHandler(h)
    log.setLevel(old)


# ---------------------------------------------------------------------------- options


@real
@pytest.mark.parametrize(
    "strategy, opts, wants",
    [
        (
            "flexmoe",
            {"threshold": "NaN", "interval": "0"},
            [
                'option interval = "0"; want an integer in [1, 2147483647]',
                'option threshold = "NaN"; want a number in [1, inf] (default 1.2)',
            ],
        ),
        (
            "swiftmoe",
            {"node_policy": "bogus"},
            ['option node_policy = "bogus"; want one of spread, pack (default spread)'],
        ),
        ("static", {"anything": "1"}, ['unknown option "anything"']),
    ],
)
def test_bad_option_values_are_refused_at_registration(strategy, opts, wants):
    s = sc.ManagedSidecar(binary=SIDECAR)
    try:
        with sc.SidecarClient(s.address, 20) as c:
            with pytest.raises(sc.SidecarError) as err:
                c.register_job(spec(strategy, **opts), job_id="bad-opts")
            assert err.value.code.name == "INVALID_ARGUMENT"
            for w in wants:
                assert w in str(err.value), str(err.value)
            # Nothing was registered; good options are.
            with pytest.raises(sc.SidecarError, match="NOT_FOUND"):
                c.get_plan("bad-opts")
            assert c.register_job(spec(strategy), job_id="good").job_id == "good"
    finally:
        s.close()


@real
def test_replicate_raises_value_error_for_a_bad_option_value():
    from engine_harness import TinyNet

    import swiftmoe

    cfg = swiftmoe.SwiftMoEConfig(
        slots_per_rank=4,
        strategy="flexmoe",
        strategy_options={"threshold": "NaN"},
        plugins_dir=str(BIN),
    )
    with pytest.raises(ValueError, match=r'option threshold = "NaN"; want a number in \[1, inf\]'):
        swiftmoe.replicate_(TinyNet(), cfg)


# ---------------------------------------------------------------------------- trust


@real
def test_restarted_sidecar_refuses_a_replaced_plugin(tmp_path, records):
    plugins = plugins_copy(tmp_path)
    svc = sc.PlanService(
        spec("swiftmoe"), binary=SIDECAR, plugins_dir=plugins, rpc_timeout_s=5, max_backoff_s=0.5
    )
    try:
        reg = svc.start()
        digest = reg.strategy["sha256"]
        assert len(digest) == 64 and svc.pin == digest and svc.refusal == ""
        svc.submit(0, LOADS[0])
        first = svc.poll(20.0)
        assert first is not None and svc.origin is not None and not svc.origin.fallback
        assert svc.origin.source == "strategy"

        tamper(plugins / "swiftmoe-strategy-swiftmoe")
        old = svc.sidecar.pid
        os.kill(old, signal.SIGKILL)
        svc.submit(1, LOADS[1])  # finds the sidecar dead: restart, register with the pin
        assert wait_for(lambda: svc.events["refused"] >= 1), dict(svc.events)
        assert svc.sidecar.pid != old
        assert "plugin checksum refused" in svc.refusal and digest in svc.refusal, svc.refusal
        errors = records.lines(logging.ERROR)
        assert any("refused" in e and "placement in force" in e for e in errors), errors

        # Every plan is now the placement in force, reported as a fallback.
        for it in (2, 3, 4):
            svc.submit(it, LOADS[it % 3])
            plan = svc.poll(20.0)
            assert plan == first, (it, plan, first)
            o = svc.origin
            assert o is not None and o.fallback and o.source == "last_valid", o
            assert o.reason == "refused" and "refused" in o.note, o
        assert svc.events["fallback"] == 3, dict(svc.events)
        warnings = [w for w in records.lines(logging.WARNING) if "served a fallback" in w]
        assert len(warnings) == 1 and "reason refused" in warnings[0], warnings
    finally:
        svc.close()


@real
def test_first_registration_with_a_tampered_listed_plugin_fails(tmp_path):
    """With SHA256SUMS in the plugins directory the file decides: a binary that does not match
    it is refused, and a job that starts on it fails at once instead of training on static."""
    plugins = plugins_copy(tmp_path)
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(plugins.iterdir())
    )
    (plugins / "SHA256SUMS").write_text(sums)
    tamper(plugins / "swiftmoe-strategy-static")
    svc = sc.PlanService(spec("static"), binary=SIDECAR, plugins_dir=plugins, rpc_timeout_s=5)
    with pytest.raises(sc.SidecarError, match="refused the plugin of strategy 'static'"):
        svc.start()
    assert svc.sidecar is None or not svc.sidecar.alive()


# ---------------------------------------------------------------------------- load history


@real
@pytest.mark.parametrize("predictor", ["last", "ewma"])
def test_load_history_survives_a_fresh_sidecar(predictor):
    """state_dict() takes the job's history off one sidecar; load_state_dict() gives it, with
    the placement in force, to a fresh one, which then plans exactly as the first."""
    opts = {"predictor": predictor}
    a = sc.PlanService(spec("swiftmoe", **opts), binary=SIDECAR, rpc_timeout_s=5)
    b = sc.PlanService(spec("swiftmoe", **opts), binary=SIDECAR, rpc_timeout_s=5)
    try:
        a.start()
        b.start()
        placement = None
        for it in range(2):
            a.submit(it, LOADS[it])
            placement = a.poll(20.0) or placement
        state = a.state_dict()
        hist = state["history"]
        assert [len(layer["reports"]) for layer in hist["layers"]] == [2, 2]
        assert hist["layers"][1]["reports"][-1] == LOADS[1][1]
        assert set(hist["layers"][0]["series"]) == {"ewma"}
        assert state["strategy_sha256"] == a.pin and len(a.pin) == 64
        b.load_state_dict(state, placement)
        for it in range(2, 6):
            a.submit(it, LOADS[it % 3])
            b.submit(it, LOADS[it % 3])
            pa, pb = a.poll(20.0), b.poll(20.0)
            assert pa == pb and pa is not None, (it, pa, pb)
        # Without the history the fresh sidecar would plan differently: the check can fail.
        c = sc.PlanService(spec("swiftmoe", **opts), binary=SIDECAR, rpc_timeout_s=5)
        try:
            c.start()
            c.load_state_dict(None, placement)
            c.submit(2, LOADS[2])
            a2 = sc.PlanService(spec("swiftmoe", **opts), binary=SIDECAR, rpc_timeout_s=5)
            a2.start()
            a2.load_state_dict(state, placement)
            a2.submit(2, LOADS[2])
            if predictor == "ewma":
                assert c.poll(20.0) != a2.poll(20.0)
            a2.close()
        finally:
            c.close()
    finally:
        a.close()
        b.close()


@real
def test_load_state_dict_refuses_a_history_that_does_not_fit():
    svc = sc.PlanService(spec("static"), binary=SIDECAR, rpc_timeout_s=5)
    try:
        svc.start()
        placement = svc.registration.initial_plan.slots_LK
        state = svc.state_dict()
        bad = dict(state, history={"layers": [{"reports": [[1, 2]], "series": {}}]})
        with pytest.raises(ValueError, match="one entry per MoE layer"):
            svc.load_state_dict(bad, placement)
        # the sidecar's own checks: an unknown series
        bad = dict(
            state,
            history={
                "layers": [
                    {"reports": [[1, 2, 3, 4]], "series": {"median": [1, 2, 3, 4]}},
                    {"reports": [], "series": {}},
                ]
            },
        )
        with pytest.raises(ValueError, match='unknown series "median"'):
            svc.load_state_dict(bad, placement)
        with pytest.raises(ValueError, match="plan-source state is 'other'"):
            svc.load_state_dict({"kind": "other"}, placement)
        svc.load_state_dict(state, placement)  # the good one still loads
    finally:
        svc.close()


def test_job_spec_checks_trust_and_history_fields():
    with pytest.raises(ValueError, match="JobSpec.strategy_sha256"):
        sc.JobSpec(
            world_size=1,
            slots_per_rank=1,
            experts_per_layer=[1],
            expert_param_numel=[1],
            strategy_sha256="ABC",
        )
    with pytest.raises(ValueError, match=r"history\['layers'\]\[0\]\['reports'\]\[0\]: want 2"):
        sc.JobSpec(
            world_size=1,
            slots_per_rank=2,
            experts_per_layer=[2],
            expert_param_numel=[1],
            history={"layers": [{"reports": [[1, -1]], "series": {}}]},
        )
    ok = sc.JobSpec(
        world_size=1,
        slots_per_rank=2,
        experts_per_layer=[2],
        expert_param_numel=[1],
        strategy_sha256="a" * 64,
        history={"layers": [{"reports": [[1, 2]], "series": {"ewma": [1.0, 2.5]}}]},
    )
    msg = ok.to_proto()
    assert msg.strategy_sha256 == "a" * 64
    assert history_from_proto(msg.history) == {
        "layers": [{"reports": [[1, 2]], "series": {"ewma": [1.0, 2.5]}}]
    }
