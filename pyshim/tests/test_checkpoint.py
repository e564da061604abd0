"""Checkpoints: sharded save/restore resumes exactly; the consolidated export loads into the
unpatched model and gives the same outputs."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from distributed import run_ranks
from engine_harness import (
    B,
    D,
    TinyNet,
    full_state,
    global_batch,
    make_handle,
    train_steps,
)

OPT = "AdamW"
SPLIT_AT, TOTAL = 3, 6


def _uninterrupted_and_save(rank: int, world_size: int, ckpt_dir: str) -> dict:
    model, handle, dense_opt = make_handle(world_size, OPT)
    train_steps(rank, world_size, model, handle, dense_opt, range(TOTAL))
    want = full_state(model, handle)
    handle.config.plan_source.close()

    model, handle, dense_opt = make_handle(world_size, OPT)
    train_steps(rank, world_size, model, handle, dense_opt, range(SPLIT_AT))
    torch.save(
        {
            "model": model.state_dict(),
            "dense_opt": dense_opt.state_dict(),
            "swiftmoe": handle.state_dict(),
        },
        os.path.join(ckpt_dir, f"rank{rank}.pt"),
    )
    handle.config.plan_source.close()
    return want


def _restore_and_continue(rank: int, world_size: int, ckpt_dir: str) -> dict:
    model, handle, dense_opt = make_handle(world_size, OPT)
    saved = torch.load(os.path.join(ckpt_dir, f"rank{rank}.pt"), weights_only=False)
    model.load_state_dict(saved["model"])
    dense_opt.load_state_dict(saved["dense_opt"])
    handle.load_state_dict(saved["swiftmoe"])
    assert handle.iteration == SPLIT_AT
    out = train_steps(rank, world_size, model, handle, dense_opt, range(SPLIT_AT, TOTAL))
    state = full_state(model, handle)

    # The consolidated export in an unpatched model computes what the patched one computes.
    plain = TinyNet(seed=123)
    plain.load_state_dict(model.state_dict(), strict=False)
    handle.export_to(plain)
    x = global_batch(99, world_size)[0][rank * B : (rank + 1) * B]
    with torch.no_grad():
        patched_y, plain_y = model(x), plain(x)
    handle.config.plan_source.close()
    return {"state": state, "patched_y": patched_y, "plain_y": plain_y, "stats": out["stats"]}


@pytest.mark.parametrize("world_size", [2])
def test_save_restore_in_fresh_process_group_continues_exactly(world_size: int) -> None:
    with tempfile.TemporaryDirectory() as ckpt_dir:
        wants = run_ranks(_uninterrupted_and_save, world_size, ckpt_dir, timeout_s=90)
        gots = run_ranks(_restore_and_continue, world_size, ckpt_dir, timeout_s=90)
    for rank, (want, got) in enumerate(zip(wants, gots, strict=True)):
        assert set(want) == set(got["state"])
        for name, w in want.items():
            assert torch.equal(got["state"][name], w), f"rank {rank} {name} differs after resume"
        torch.testing.assert_close(got["plain_y"], got["patched_y"], rtol=0, atol=1e-6)
        assert got["patched_y"].shape == (B,)
        assert [s.iteration for s in got["stats"]] == list(range(SPLIT_AT, TOTAL))


def test_export_into_unpatched_model_single_process() -> None:
    model, handle, dense_opt = make_handle(1, OPT)
    train_steps(0, 1, model, handle, dense_opt, range(2))
    plain = TinyNet(seed=5)
    plain.load_state_dict(model.state_dict(), strict=False)
    handle.export_to(plain)
    x = torch.randn(10, D)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-6)
    handle.config.plan_source.close()


def test_load_state_dict_rejects_mismatched_checkpoints() -> None:
    model, handle, _ = make_handle(1, OPT, source_kind="none")
    state = handle.state_dict()
    with pytest.raises(ValueError, match="not a SwiftMoE sharded checkpoint"):
        handle.load_state_dict({"format": "other"})
    with pytest.raises(ValueError, match="world_size=2"):
        handle.load_state_dict(state | {"world_size": 2})
    with pytest.raises(ValueError, match="slots_per_rank=9.*set slots_per_rank=9"):
        handle.load_state_dict(state | {"slots_per_rank": 9})
    with pytest.raises(ValueError, match="MoE layers"):
        handle.load_state_dict(state | {"layers": state["layers"][:1]})
    bad_layer = dict(state["layers"][0], master=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="master has shape"):
        handle.load_state_dict(state | {"layers": [bad_layer, state["layers"][1]]})
