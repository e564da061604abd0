"""The public surface with the tools users combine it with: DDP over the dense parameters, and
observe mode on a HuggingFace model with router jitter (RNG use must leave no trace)."""

from __future__ import annotations

import copy

import pytest
import torch
from distributed import run_ranks
from engine_harness import (
    SLOTS_FOR,
    B,
    TinyNet,
    full_state,
    global_batch,
    make_handle,
    reference_run,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig

STEPS = 4


def _ddp_train(rank: int, world_size: int) -> dict:
    model, handle, opt = make_handle(world_size, "AdamW")
    ignored = handle.ddp_ignore(model)
    ddp = DDP(model)  # broadcast_buffers=True: the ignored load buffers must stay per rank
    for step in range(STEPS):
        x, y = global_batch(step, world_size)
        x, y = x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        handle.step()
        opt.zero_grad()
        handle.zero_grad()
    handle.config.plan_source.close()
    return {"state": full_state(model, handle), "ignored": ignored}


def test_ddp_on_dense_parameters_matches_single_process() -> None:
    world_size = 2
    results = run_ranks(_ddp_train, world_size, timeout_s=90)
    want = reference_run("AdamW", STEPS, world_size)
    for rank, res in enumerate(results):
        assert len(res["ignored"]) == 4
        for k, v in want.items():
            torch.testing.assert_close(
                res["state"][k],
                v,
                rtol=0,
                atol=1e-5,
                msg=lambda m, k=k, r=rank: f"rank {r} {k}: {m}",
            )


def test_observe_mode_leaves_no_trace_on_jittered_hf_router() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        vocab_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_jitter_noise=0.1,
        output_router_logits=True,
    )
    plain = transformers.MixtralForCausalLM(cfg).train()
    observed = copy.deepcopy(plain)
    handle = replicate_(observed, SwiftMoEConfig(slots_per_rank=4, mode="observe"))
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (plain, observed):
        torch.manual_seed(42)  # the jitter draws from the global RNG
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        outs.append(out)
    assert torch.equal(outs[0].logits, outs[1].logits)
    assert torch.equal(outs[0].aux_loss, outs[1].aux_loss)
    for (n, p), (_, q) in zip(plain.named_parameters(), observed.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n
    stats = handle.step()
    assert [sum(row) for row in stats.loads_LE] == [2 * 7 * 2] * 2


def test_a_split_that_misroutes_stops_the_layer(monkeypatch) -> None:
    """The engine checks the split it is about to run: one that loses a token never reaches the
    all_to_all. Here the Python path's split and checks (SWIFTMOE_NATIVE=0); the native split's
    one call is checked the same way by test_splitter.py (a fault in the library)."""
    from swiftmoe.engine import native
    from swiftmoe.engine import split as splitlib

    monkeypatch.setenv(native.ENV_SWITCH, "0")
    monkeypatch.setattr(native, "_state", {})  # loaded again, turned off; the old state after
    model = TinyNet()
    replicate_(model, SwiftMoEConfig(slots_per_rank=SLOTS_FOR[1], optimizer="SGD"))
    x, _ = global_batch(0, 1)
    model(x)  # the real split passes its own checks
    real = splitlib.split_tokens_for_rank

    def lossy(*args, **kwargs):
        rs = real(*args, **kwargs)
        send_K = rs.send_K.clone()
        send_K[int(torch.argmax(send_K))] -= 1
        return rs._replace(send_K=send_K)

    monkeypatch.setattr(splitlib, "split_tokens_for_rank", lossy)
    with pytest.raises(RuntimeError, match="does not conserve the counts"):
        model(x)


def test_a_native_split_that_misroutes_stops_the_layer(use_lib) -> None:
    """The same with the native split: with the library's test fault on (a token taken from what
    the rank sends), the layer call stops before its all_to_all."""
    import ctypes

    from swiftmoe.engine import native

    model = TinyNet()
    replicate_(model, SwiftMoEConfig(slots_per_rank=SLOTS_FOR[1], optimizer="SGD"))
    x, _ = global_batch(0, 1)
    model(x)
    fault = ctypes.c_int64.in_dll(native.library(), "smoe_fault_tokens")
    fault.value = 1
    try:
        with pytest.raises(RuntimeError, match="does not conserve the counts"):
            model(x)
    finally:
        fault.value = 0


def test_a_layer_looks_its_placement_up_once_not_per_call(monkeypatch) -> None:
    """The layers keep their placement's checked index (from the splitter's cache) and pass it
    to the split: a layer call hashes no placement. A new placement is indexed once, when it is
    installed; the split is the same either way."""
    from native_cases import counted

    from swiftmoe.engine.split import plan_index

    model = TinyNet()
    replicate_(model, SwiftMoEConfig(slots_per_rank=SLOTS_FOR[1], optimizer="SGD"))
    x, _ = global_batch(0, 1)
    want = model(x)
    hashed = counted(monkeypatch, plan_index, "_raw_key")  # the cache's key of a placement
    got = model(x)
    assert hashed == []
    assert torch.equal(got, want)
