"""End to end: a job checkpointed mid-run and resumed in fresh processes, with a fresh sidecar,
trains exactly as the job that was never interrupted, with every built-in strategy and every
predictor the sidecar has.

Two gloo ranks train TinyNet with ``SwiftMoEConfig(strategy=...)`` and a plan deadline long
enough that every plan arrives at the step it is for. The uninterrupted run trains STEPS steps;
a second run trains RESUME_AT steps and saves each rank's checkpoint with
``swiftmoe.save_checkpoint`` (the model, the dense optimizer and ``handle.state_dict()``, whose
rank-0 part carries the sidecar's load history of the job). Fresh rank processes then build the
job again (their own sidecar, a new job), load the checkpoints and train to STEPS. The
placements of every step and every parameter must equal the uninterrupted run's bit for bit.

A control resumes the swiftmoe/ewma job without the plan-source state (as checkpoints did
before it was saved) and must differ: the comparison can fail.

Shape legend: N ranks, S slots per rank.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import orphan_guard
import pytest
import torch
from distributed import run_ranks
from engine_harness import OPTIMIZERS, full_state, make_handle, train_steps

import swiftmoe

REPO = Path(__file__).resolve().parents[1]
SIDECAR = REPO / "bin" / "swiftmoe-sidecar"
CASE_ENV = "SWIFTMOE_TEST_CASE"
OPT = "AdamW"
N = 2
STEPS, RESUME_AT = 9, 4
COMBOS = [
    (strategy, predictor)
    for strategy in ("swiftmoe", "flexmoe", "static")
    for predictor in ("last", "ewma")
]
CONTROL = ("swiftmoe", "ewma")

pytestmark = pytest.mark.skipif(
    not os.access(SIDECAR, os.X_OK), reason=f"{SIDECAR} is missing: run `make build`"
)


def _handle(world_size: int, strategy: str, predictor: str):
    return make_handle(
        world_size,
        OPT,
        source_kind="sidecar",
        strategy=strategy,
        strategy_options={
            "predictor": predictor,
            **({"ewma_alpha": "0.3"} if predictor == "ewma" else {}),
        },
        plan_deadline_s=20.0,
    )


def _ckpt(ckpt_dir: str, combo: tuple[str, str], rank: int) -> str:
    return os.path.join(ckpt_dir, f"{combo[0]}-{combo[1]}-rank{rank}.pt")


def _first(rank: int, world_size: int, ckpt_dir: str, tmpdir: str, case: str) -> dict:
    """The uninterrupted runs, and the runs that stop at RESUME_AT with a checkpoint."""
    os.environ["TMPDIR"], os.environ[CASE_ENV] = tmpdir, case
    out = {}
    for combo in COMBOS:
        model, handle, dense_opt = _handle(world_size, *combo)
        run = train_steps(rank, world_size, model, handle, dense_opt, range(STEPS))
        events = dict(handle.plan_events)
        state = full_state(model, handle)
        handle.close()

        model, handle, dense_opt = _handle(world_size, *combo)
        train_steps(rank, world_size, model, handle, dense_opt, range(RESUME_AT))
        swiftmoe.save_checkpoint(
            {
                "model": model.state_dict(),
                "dense_opt": dense_opt.state_dict(),
                "swiftmoe": handle.state_dict(),
            },
            _ckpt(ckpt_dir, combo, rank),
        )
        handle.close()
        out[combo] = {"placements": run["placements"], "state": state, "events": events}
    return out


def _resume(rank: int, world_size: int, ckpt_dir: str, tmpdir: str, case: str) -> dict:
    """Fresh processes: each job built again, restored, and trained to STEPS."""
    os.environ["TMPDIR"], os.environ[CASE_ENV] = tmpdir, case
    out = {}
    for combo in [*COMBOS, "control"]:
        strategy_predictor = CONTROL if combo == "control" else combo
        model, handle, dense_opt = _handle(world_size, *strategy_predictor)
        saved = torch.load(_ckpt(ckpt_dir, strategy_predictor, rank), weights_only=False)
        model.load_state_dict(saved["model"])
        dense_opt.load_state_dict(saved["dense_opt"])
        state = saved["swiftmoe"]
        if combo == "control":
            state = state | {"plan_source": None}
        elif rank == 0:
            assert state["plan_source"]["history"] is not None, "no load history was saved"
        handle.load_state_dict(state)
        assert handle.iteration == RESUME_AT
        run = train_steps(rank, world_size, model, handle, dense_opt, range(RESUME_AT, STEPS))
        out[combo] = {
            "placements": run["placements"],
            "state": full_state(model, handle),
            "events": dict(handle.plan_events),
        }
        handle.close()
    return out


def test_resume_in_fresh_processes_matches_the_uninterrupted_run() -> None:
    assert OPT in OPTIMIZERS
    tmpdir = tempfile.mkdtemp(prefix="smoe-res-")  # short: socket paths <= 107 bytes
    case = uuid.uuid4().hex
    try:
        with tempfile.TemporaryDirectory() as ckpt_dir:
            first = run_ranks(_first, N, ckpt_dir, tmpdir, case, timeout_s=300)
            resumed = run_ranks(_resume, N, ckpt_dir, tmpdir, case, timeout_s=300)
        left = orphan_guard.find_orphans(case, None, grace_s=5.0, env_key=CASE_ENV)
        assert left == [], f"processes outlived the ranks: {left}"
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for rank in range(N):
        for combo in COMBOS:
            want, got = first[rank][combo], resumed[rank][combo]
            assert want["events"] == {"accepted": STEPS}, (combo, want["events"])
            assert got["events"] == {"accepted": STEPS - RESUME_AT}, (combo, got["events"])
            assert got["placements"] == want["placements"][RESUME_AT:], (
                f"rank {rank} {combo}: placements after the resume differ"
            )
            for name, w in want["state"].items():
                assert torch.equal(got["state"][name], w), (
                    f"rank {rank} {combo}: {name} differs after the resume"
                )
        pl = first[rank][("swiftmoe", "ewma")]["placements"]
        assert any(a != b for a, b in zip(pl[RESUME_AT:], pl[RESUME_AT + 1 :], strict=False)), (
            "swiftmoe never moved a replica after the resume point: the test would not see a "
            "wrong plan"
        )
        control, want = resumed[rank]["control"], first[rank][CONTROL]
        differs = control["placements"] != want["placements"][RESUME_AT:] or any(
            not torch.equal(control["state"][n], w) for n, w in want["state"].items()
        )
        assert differs, "resuming without the load history matched too: the test cannot fail"
