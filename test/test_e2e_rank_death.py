"""End to end: a rank that dies in the middle of training.

SwiftMoE has no elastic recovery: the job stops. What it promises is that it stops cleanly. Two
gloo ranks train TinyNet with the sidecar planning; rank 1 vanishes (``os._exit``) before its
third step. Rank 0's next collective then raises within the process group's timeout (it does
not hang), ``handle.close()`` stops the sidecar it started with its plugins, and nothing of
theirs (process, socket, private directory) is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orphan_guard
import pytest
from distributed import run_ranks
from engine_harness import make_handle, train_steps

REPO = Path(__file__).resolve().parents[1]
SIDECAR = REPO / "bin" / "swiftmoe-sidecar"
CASE_ENV = "SWIFTMOE_TEST_CASE"
COLLECTIVE_TIMEOUT_S = 15.0
DIE_AT = 2

pytestmark = pytest.mark.skipif(
    not os.access(SIDECAR, os.X_OK), reason=f"{SIDECAR} is missing: run `make build`"
)


def _train_then_die(rank: int, world_size: int, tmpdir: str, case: str) -> dict:
    os.environ["TMPDIR"], os.environ[CASE_ENV] = tmpdir, case
    model, handle, dense_opt = make_handle(
        world_size, "AdamW", source_kind="sidecar", strategy="swiftmoe", plan_deadline_s=10.0
    )
    train_steps(rank, world_size, model, handle, dense_opt, range(DIE_AT))
    if rank == 1:
        os._exit(0)  # vanish: no goodbye to the process group
    address = handle.plan_source.client.address
    t0 = time.monotonic()
    error = ""
    try:
        train_steps(rank, world_size, model, handle, dense_opt, range(DIE_AT, DIE_AT + 3))
    except Exception as e:  # what a training script sees
        error = f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - t0
    handle.close()
    left = orphan_guard.find_orphans(case, None, grace_s=5.0, env_key=CASE_ENV)
    sock = Path(address[len("unix://") :])
    return {
        "error": error,
        "elapsed": elapsed,
        "left": [f"{i.name} pid {i.pid}" for i in left],
        "files": [str(p) for p in (sock, sock.parent) if p.exists()],
    }


def test_a_dead_rank_stops_the_job_cleanly_within_the_timeout() -> None:
    tmpdir = tempfile.mkdtemp(prefix="smoe-die-")
    case = uuid.uuid4().hex
    try:
        res = run_ranks(
            _train_then_die,
            2,
            tmpdir,
            case,
            timeout_s=120,
            collective_timeout_s=COLLECTIVE_TIMEOUT_S,
            may_vanish=(1,),
        )
        assert orphan_guard.find_orphans(case, None, grace_s=5.0, env_key=CASE_ENV) == []
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    r0 = res[0]
    print(f"rank death: rank 0 raised after {r0['elapsed']:.1f}s: {r0['error'][:200]}")
    assert res[1] is None
    assert r0["error"], "rank 0 trained on without its peer"
    assert r0["elapsed"] <= COLLECTIVE_TIMEOUT_S + 10, r0["elapsed"]
    assert r0["left"] == [] and r0["files"] == [], r0
