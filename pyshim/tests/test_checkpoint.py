"""Checkpoints: sharded save/restore resumes exactly; the consolidated export loads into the
unpatched model and gives the same outputs."""

from __future__ import annotations

import errno
import os
import subprocess
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
    with pytest.raises(ValueError, match="rank=1"):
        handle.load_state_dict(state | {"rank": 1})
    with pytest.raises(ValueError, match="slots_per_rank=9.*set slots_per_rank=9"):
        handle.load_state_dict(state | {"slots_per_rank": 9})
    with pytest.raises(ValueError, match="MoE layers"):
        handle.load_state_dict(state | {"layers": state["layers"][:1]})
    bad_layer = dict(state["layers"][0], master=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="master has shape"):
        handle.load_state_dict(state | {"layers": [bad_layer, state["layers"][1]]})


# ---- loading is all or nothing ---------------------------------------------------------------


def _snapshot(handle) -> dict:
    """Everything a load may write: masters, optimizer state, placement, iteration."""
    opt = handle._run.optimizer
    st = opt.optimizer.state_dict()
    return {
        "masters": [m.detach().clone() for m in opt.masters],
        "opt": {
            pid: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for pid, s in st["state"].items()
        },
        "groups": [dict(g) for g in st["param_groups"]],
        "placement": handle.placement,
        "iteration": handle.iteration,
        "slot_weights": [
            [t.detach().clone() for t in layer.leaves()] for layer in handle._run.layers
        ],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"] and a["placement"] == b["placement"]
    assert a["groups"] == b["groups"]
    for x, y in zip(a["masters"], b["masters"], strict=True):
        assert torch.equal(x, y)
    assert a["opt"].keys() == b["opt"].keys()
    for pid in a["opt"]:
        for k, v in a["opt"][pid].items():
            w = b["opt"][pid][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
    for la, lb in zip(a["slot_weights"], b["slot_weights"], strict=True):
        for x, y in zip(la, lb, strict=True):
            assert torch.equal(x, y)


def _bad_iteration(state):
    return state | {"iteration": "seven"}


def _bad_slots(state):
    layers = [dict(state["layers"][0], slots=[0] * len(state["layers"][0]["slots"]))]
    return state | {"layers": layers + state["layers"][1:]}


def _bad_moment_shape(state):
    opt = state["optimizer"]
    st = {pid: dict(s) for pid, s in opt["state"].items()}
    st[0]["exp_avg"] = torch.zeros(3, 3)
    return state | {"optimizer": opt | {"state": st}}


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_bad_iteration, "checkpoint iteration is 'seven'; want an integer >= 0"),
        (_bad_slots, r"placement: .*expert 1"),
        (_bad_moment_shape, r"optimizer state 'exp_avg' has shape \(3, 3\)"),
        (lambda s: s | {"optimizer": {"state": {}}}, "not an optimizer state_dict"),
        (lambda s: s | {"optimizer_class": "torch.optim.sgd.SGD"}, "expert optimizer is"),
    ],
)
def test_a_bad_checkpoint_changes_nothing(corrupt, match) -> None:
    """Every check runs before anything is written: masters, optimizer state, slot weights,
    placement and iteration are exactly as before the refused load."""
    model, handle, dense_opt = make_handle(1, OPT)
    train_steps(0, 1, model, handle, dense_opt, range(2))
    state = handle.state_dict()
    train_steps(0, 1, model, handle, dense_opt, range(2, 3))  # move on, so a load would show
    before = _snapshot(handle)
    with pytest.raises(ValueError, match=match) as err:
        handle.load_state_dict(corrupt(state))
    assert "nothing was loaded" in str(err.value)
    _assert_same(before, _snapshot(handle))
    handle.load_state_dict(state)  # the good checkpoint still loads
    assert handle.iteration == 2
    handle.config.plan_source.close()


def test_an_adamw_checkpoint_is_refused_by_an_sgd_handle() -> None:
    model, adamw, dense_opt = make_handle(1, "AdamW")
    train_steps(0, 1, model, adamw, dense_opt, range(2))
    state = adamw.state_dict()
    assert state["optimizer_class"] == "torch.optim.adamw.AdamW"
    model, sgd, dense_opt = make_handle(1, "SGD")
    train_steps(0, 1, model, sgd, dense_opt, range(1))
    before = _snapshot(sgd)
    with pytest.raises(
        ValueError,
        match=r"optimizer is torch\.optim\.adamw\.AdamW, this run's is torch\.optim\.sgd\.SGD",
    ):
        sgd.load_state_dict(state)
    _assert_same(before, _snapshot(sgd))
    # A v1 checkpoint does not name its class: its settings give it away.
    v1 = {k: v for k, v in state.items() if k not in ("optimizer_class", "plan_source")}
    v1["format"] = "swiftmoe-sharded-v1"
    with pytest.raises(ValueError, match=r"settings \[.*'betas'.*\] that SGD does not"):
        sgd.load_state_dict(v1)
    _assert_same(before, _snapshot(sgd))
    for h in (adamw, sgd):
        h.config.plan_source.close()


def test_a_world_size_mismatch_names_the_real_calls() -> None:
    model, handle, _ = make_handle(1, OPT, source_kind="none")
    with pytest.raises(ValueError) as err:
        handle.load_state_dict(handle.state_dict() | {"world_size": 2})
    msg = str(err.value)
    assert "handle.export_to(unpatched_model)" in msg and "swiftmoe.replicate_" in msg, msg
    assert "load_expert_weights" not in msg


def _one_rank_refuses(rank: int, world_size: int, ckpt_dir: str) -> dict:
    model, handle, dense_opt = make_handle(world_size, OPT)
    train_steps(rank, world_size, model, handle, dense_opt, range(2))
    state = handle.state_dict()
    train_steps(rank, world_size, model, handle, dense_opt, range(2, 3))
    before = _snapshot(handle)
    if rank == 1:
        state = state | {"iteration": -4}
    try:
        handle.load_state_dict(state)
        err = ""
    except ValueError as e:
        err = str(e)
    after = _snapshot(handle)
    handle.config.plan_source.close()
    return {"err": err, "before": before, "after": after}


def test_a_checkpoint_refused_on_one_rank_changes_nothing_on_any() -> None:
    res = run_ranks(_one_rank_refuses, 2, "", timeout_s=90)
    assert "checkpoint iteration is -4" in res[1]["err"], res[1]["err"]
    assert "another rank's checkpoint was refused" in res[0]["err"], res[0]["err"]
    for r in res:
        _assert_same(r["before"], r["after"])


# ---- atomic saves ----------------------------------------------------------------------------


def test_save_checkpoint_writes_whole_files(tmp_path) -> None:
    import swiftmoe

    path = tmp_path / "ckpt.pt"
    swiftmoe.save_checkpoint({"w": torch.arange(5)}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(5))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    os.chmod(path, 0o640)
    swiftmoe.save_checkpoint({"w": torch.arange(6)}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(6))
    assert os.stat(path).st_mode & 0o777 == 0o640, "the replaced file's mode is kept"
    # A failure while writing (here: an object pickle refuses) leaves the old file and no
    # temporary file.
    with pytest.raises(Exception, match="lambda|pickle|local object"):
        swiftmoe.save_checkpoint({"w": torch.zeros(1000), "f": lambda: 1}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(6))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs, mounted for the test (root only; skipped where mounting is refused)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_a_full_disk_leaves_the_old_checkpoint_intact(tiny_fs) -> None:
    import swiftmoe

    old = {"w": torch.arange(1000)}  # about 9 KB
    big = {"w": torch.zeros(200_000)}  # 800 KB: does not fit
    path = tiny_fs / "ckpt.pt"
    swiftmoe.save_checkpoint(old, path)
    # torch reports the full disk as OSError (ENOSPC) or as its own RuntimeError.
    with pytest.raises((OSError, RuntimeError)):
        swiftmoe.save_checkpoint(big, path)
    assert torch.equal(torch.load(path)["w"], old["w"]), "the old checkpoint was damaged"
    assert sorted(os.listdir(tiny_fs)) == ["ckpt.pt"], "a temporary file was left"
    # What the helper prevents: torch.save in place leaves a truncated file.
    with pytest.raises((OSError, RuntimeError)):
        torch.save(big, path)
    with pytest.raises(RuntimeError, match="zip archive|central directory"):
        torch.load(path)


def test_save_checkpoint_simulated_write_failure(tmp_path, monkeypatch) -> None:
    """The same without a tmpfs: the write fails half-way with ENOSPC."""
    import swiftmoe
    from swiftmoe.engine import checkpoint

    path = tmp_path / "ckpt.pt"
    swiftmoe.save_checkpoint({"w": torch.arange(3)}, path)
    real_save = torch.save

    def half_then_full(obj, f, *a, **kw):
        f.write(b"\x80\x02partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space"):
        swiftmoe.save_checkpoint({"w": torch.arange(9)}, path)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert torch.equal(torch.load(path)["w"], torch.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_a_checkpoint_saved_with_fused_steps_loads_with_this_runs_own() -> None:
    """A state saved on GPUs (fused AdamW, the default there) restores on CPUs: the groups take
    the checkpoint's hyperparameters but keep how this run computes its step."""
    model, handle, dense_opt = make_handle(1, "AdamW")
    train_steps(0, 1, model, handle, dense_opt, range(2))
    state = handle.state_dict()
    groups = state["optimizer"]["param_groups"]
    here = [(g.get("fused"), g.get("foreach")) for g in groups]
    for g in groups:
        g.update(fused=True, foreach=False, lr=0.125)
    handle.load_state_dict(state)
    got = handle._run.optimizer.optimizer.param_groups
    assert [(g.get("fused"), g.get("foreach")) for g in got] == here
    assert all(g["lr"] == 0.125 for g in got)
    train_steps(0, 1, model, handle, dense_opt, range(2, 3))  # and it steps on the CPU
    handle.config.plan_source.close()
