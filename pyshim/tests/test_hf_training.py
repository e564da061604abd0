"""Tiny transformers 5.x Mixtral and Qwen3-MoE models trained under ``swiftmoe.replicate_``.

On 1 and 2 gloo ranks, with the placement changing every step (experts moving to ranks that
never held them, one expert filling most slots), AdamW training gives the same loss curve and
the same parameters as the unpatched model trained in one process, within 1e-5. The loss
includes the router aux loss, whose logits transformers records with a hook on the router, so
the curve also shows that the patched blocks keep that path alive.

The reference sees what data parallelism computes: the mean over ranks of each rank's loss on
its slice of the global batch (the aux loss is per slice, as under DDP).

Shape legend: B sequences per rank, L sequence length, N ranks, S slots per rank, E experts.
"""

from __future__ import annotations

import pytest
import torch
from distributed import run_ranks
from engine_harness import E as ENGINE_E
from engine_harness import adversarial_source, allreduce_dense_grads
from test_adapters_hf import VOCAB, E, tiny_mixtral, tiny_qwen3

from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig

STEPS, B, L = 4, 2, 6
SLOTS_FOR = {1: 6, 2: 3}
ADAMW = {"lr": 3e-3, "weight_decay": 0.01}
MODELS = {"mixtral": tiny_mixtral, "qwen3": tiny_qwen3}
TOL = dict(rtol=0, atol=1e-5)


def global_batch(step: int, world_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randint(3, VOCAB, (world_size * B, L), generator=g)


def rank_loss(model: torch.nn.Module, ids_BL: torch.Tensor) -> torch.Tensor:
    """Next-token loss plus router_aux_loss_coef * aux loss, as the model computes it."""
    return model(input_ids=ids_BL, labels=ids_BL, output_router_logits=True).loss


def reference(kind: str, world_size: int) -> dict:
    model = MODELS[kind]().train()
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    losses = []
    for step in range(STEPS):
        ids = global_batch(step, world_size)
        loss = sum(rank_loss(model, ids[r * B : (r + 1) * B]) for r in range(world_size))
        loss = loss / world_size
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        held_out = float(rank_loss(model.eval(), global_batch(99, 1)))
    return {"losses": losses, "state": state, "held_out": held_out}


def train_rank(rank: int, world_size: int, kind: str) -> dict:
    assert ENGINE_E == E, "adversarial_source plans for the engine tests' expert count"
    model = MODELS[kind]().train()
    S = SLOTS_FOR[world_size]
    source = adversarial_source(world_size, S)
    cfg = SwiftMoEConfig(
        slots_per_rank=S,
        optimizer="AdamW",
        optimizer_kwargs=ADAMW,
        plan_source=source,
        plan_deadline_s=20.0,
    )
    handle = replicate_(model, cfg)
    left = [n for n, _ in model.named_parameters() if ".experts." in n]
    dense_opt = torch.optim.AdamW(handle.dense_parameters(), **ADAMW)
    losses, placements = [], []
    for step in range(STEPS):
        placements.append(handle.placement)
        ids = global_batch(step, world_size)[rank * B : (rank + 1) * B]
        loss = rank_loss(model, ids)
        loss.backward()
        allreduce_dense_grads(model, world_size)
        dense_opt.step()
        handle.step()
        dense_opt.zero_grad()
        handle.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(("swiftmoe_loads_E", "dropped"))}
    export = handle.export_expert_weights()
    for fqn, experts in export.items():
        for i, name in enumerate(("gate_up_proj", "down_proj")):
            state[f"{fqn}.experts.{name}"] = torch.stack([p[i] for p in experts])
    fresh = MODELS[kind]().eval()  # unpatched: trained dense weights, then the export
    dense = {k: v for k, v in state.items() if ".experts." not in k}
    missing, unexpected = fresh.load_state_dict(dense, strict=False)
    assert unexpected == [] and all(".experts." in k for k in missing), (missing, unexpected)
    handle.export_to(fresh)
    with torch.no_grad():
        held_out = float(rank_loss(fresh, global_batch(99, 1)))
    source.close()
    return {
        "losses": losses,
        "state": state,
        "held_out": held_out,
        "left": left,
        "placements": placements,
        "events": dict(handle.plan_events),
    }


def _train_all(rank: int, world_size: int) -> dict:
    return {kind: train_rank(rank, world_size, kind) for kind in MODELS}


@pytest.mark.parametrize("world_size", [1, 2])
def test_hf_models_train_like_unpatched(world_size: int) -> None:
    results = run_ranks(_train_all, world_size, timeout_s=300, collective_timeout_s=120)
    for kind in MODELS:
        ref = reference(kind, world_size)
        outs = [res[kind] for res in results]
        for rank, out in enumerate(outs):
            assert out["left"] == [], f"{kind} rank {rank}: experts left on the model"
            assert out["events"] == {"accepted": STEPS}, f"{kind} rank {rank}: {out['events']}"
            p = out["placements"]
            assert sum(a != b for a, b in zip(p, p[1:], strict=False)) == STEPS - 1
        curve = [sum(o["losses"][s] for o in outs) / world_size for s in range(STEPS)]
        torch.testing.assert_close(
            torch.tensor(curve, dtype=torch.float64),
            torch.tensor(ref["losses"], dtype=torch.float64),
            **TOL,
            msg=lambda m, k=kind, c=curve, w=ref["losses"]: (
                f"{k} loss curve {c} vs unpatched {w}: {m}"
            ),
        )
        assert ref["losses"][-1] < ref["losses"][0], f"{kind} did not train: {ref['losses']}"
        want_state = dict(ref["state"])
        for rank, out in enumerate(outs):
            assert set(out["state"]) == set(want_state), sorted(set(out["state"]) ^ set(want_state))
            for name, want in want_state.items():
                torch.testing.assert_close(
                    out["state"][name],
                    want,
                    **TOL,
                    msg=lambda m, n=name, r=rank, k=kind: f"{k} rank {r} {n}: {m}",
                )
            assert abs(out["held_out"] - ref["held_out"]) < 1e-5, (kind, out["held_out"])


@pytest.mark.parametrize("kind", list(MODELS))
def test_hf_observe_mode_leaves_the_model_untouched(kind: str) -> None:
    """Observe mode (one process): same outputs, recorded router logits and gradients, loads
    counted; the router is looked at without firing the hook transformers records with."""
    ref, model = MODELS[kind]().train(), MODELS[kind]().train()
    handle = replicate_(model, SwiftMoEConfig(slots_per_rank=E, mode="observe"))
    for step in range(2):
        ids = global_batch(step, 2)
        want = ref(input_ids=ids, labels=ids, output_router_logits=True)
        got = model(input_ids=ids, labels=ids, output_router_logits=True)
        assert len(got.router_logits) == len(want.router_logits) == 2
        for g, w in zip(got.router_logits, want.router_logits, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
        want.loss.backward()
        got.loss.backward()
        stats = handle.step()
        assert [sum(le) for le in stats.loads_LE] == [ids.numel() * 2] * 2, stats.loads_LE
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=0, atol=0, msg=n)
