"""Equivalence on HuggingFace models: tiny Mixtral and Qwen3-MoE (transformers 5 fused experts),
built from their configs, trained on 1 and 2 gloo ranks with placements that change every step,
match the unpatched model trained in one process on the global batch: the loss curve and every
parameter within 1e-5.

Shape legend: B sequences per rank, L sequence length, N ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks
from engine_harness import SLOTS_FOR, adversarial_source, allreduce_dense_grads

from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig

transformers = pytest.importorskip("transformers")

E, VOCAB, B, L, STEPS = 4, 64, 2, 6, 4
OPT = {"lr": 3e-3, "weight_decay": 0.01}
COMMON = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    vocab_size=VOCAB,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    pad_token_id=0,
    tie_word_embeddings=False,
    num_experts_per_tok=2,
)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "mixtral":
        cfg = transformers.MixtralConfig(**COMMON, num_local_experts=E)
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen3MoeConfig(
        **COMMON, moe_intermediate_size=32, num_experts=E, decoder_sparse_step=1, mlp_only_layers=[]
    )
    return transformers.Qwen3MoeForCausalLM(cfg)


def batch(step: int, world_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(500 + step)
    ids = torch.randint(3, VOCAB, (world_size * B, L), generator=g)
    ids[: world_size * B // 2, ::2] = 5  # a skew: one token everywhere in half the batch
    return ids


def reference(name: str, world_size: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = build(name).train()
    opt = torch.optim.AdamW(model.parameters(), **OPT)
    losses = []
    for step in range(STEPS):
        ids = batch(step, world_size)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(rank: int, world_size: int, name: str) -> dict:
    model = build(name).train()
    S = SLOTS_FOR[world_size]
    src = adversarial_source(world_size, S)
    handle = replicate_(
        model,
        SwiftMoEConfig(
            slots_per_rank=S,
            optimizer="AdamW",
            optimizer_kwargs=OPT,
            plan_source=src,
            plan_deadline_s=20.0,
        ),
    )
    opt = torch.optim.AdamW(handle.dense_parameters(), **OPT)
    losses = []
    for step in range(STEPS):
        ids = batch(step, world_size)[rank * B : (rank + 1) * B]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        allreduce_dense_grads(model, world_size)
        opt.step()
        stats = handle.step()
        assert stats.plan_event == "accepted", stats.plan_event
        opt.zero_grad()
        handle.zero_grad()
        mean = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / world_size)
    src.close()
    exported = handle.export_expert_weights()
    plain = build(name)
    plain.load_state_dict(model.state_dict(), strict=False)
    handle.export_to(plain)
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    return {"losses": losses, "state": state, "layers": sorted(exported)}


@pytest.mark.parametrize("name", ["mixtral", "qwen3"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_hf_model_trains_like_unpatched(name: str, world_size: int) -> None:
    (res0, *rest) = run_ranks(_train, world_size, name, timeout_s=120)
    want_losses, want_state = reference(name, world_size)
    assert len(res0["layers"]) == 2, res0["layers"]
    for res in (res0, *rest):
        torch.testing.assert_close(
            torch.tensor(res["losses"]), torch.tensor(want_losses), rtol=0, atol=1e-5
        )
        assert set(res["state"]) == set(want_state)
        for k, v in want_state.items():
            torch.testing.assert_close(
                res["state"][k], v, rtol=0, atol=1e-5, msg=lambda m, k=k: f"{name} {k}: {m}"
            )
