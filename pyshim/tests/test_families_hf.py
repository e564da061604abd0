"""The MoE families teams train today, from transformers 5.x, under ``swiftmoe.replicate_``:
DeepSeek-V3, DeepSeek-V2, Qwen2-MoE, GPT-OSS, GLM4-MoE and Llama 4 (tiny configs, families.py).

On 1, 2 and 4 gloo ranks, with a placement that changes every step (replicas included), AdamW
and SGD with momentum give the unpatched single-process run's loss curve and parameters (dense,
shared experts, router biases, the exported routed experts and their biases) within 1e-5. The
same holds with HF activation checkpointing (reentrant and not), gradient accumulation, DDP and
FSDP2 (``fully_shard`` on the dense parameters, gloo on CPU), and the per-expert loads SwiftMoE
reports count each token once.

Shape legend: B sequences per rank, L sequence length, N ranks, S slots per rank, E experts.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks
from engine_harness import allreduce_dense_grads
from families import EXPERTS, FAMILIES, VOCAB, build, changing_source

from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig

GLOBAL_B, L, STEPS = 4, 6, 3
OPTIMIZERS = {"AdamW": {"lr": 3e-3, "weight_decay": 0.01}, "SGD": {"lr": 0.1, "momentum": 0.9}}
TOL = dict(rtol=0, atol=1e-5)


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(500 + step)
    ids = torch.randint(3, VOCAB, (GLOBAL_B, L), generator=g)
    ids[:2, ::2] = 5  # a skew: one token everywhere in half the batch
    return ids


def slots_for(name: str, N: int) -> int:
    return -(-EXPERTS[name] // N) + 1  # every expert, and room for replicas


class BiasRecipe:
    """Auxiliary-loss-free balancing as DeepSeek-V3 recipes do it on a transformers model: a
    forward hook on each router counts the tokens per expert; after each optimizer step the
    counts are summed over ranks and ``e_score_correction_bias += coeff * sign(mean - count)``.
    """

    def __init__(self, model: torch.nn.Module, N: int, coeff: float = 1e-2) -> None:
        self.N, self.coeff, self.gates = N, coeff, []
        for m in model.modules():
            if isinstance(getattr(m, "e_score_correction_bias", None), torch.Tensor):
                m.register_forward_hook(self._count)
                m.tokens_E = torch.zeros_like(m.e_score_correction_bias)
                self.gates.append(m)
        self.trajectory: list[list[torch.Tensor]] = []

    @staticmethod
    def _count(gate, args, out) -> None:
        if gate.training:
            gate.tokens_E += torch.bincount(out[2].reshape(-1), minlength=gate.tokens_E.numel())

    def step(self) -> None:
        with torch.no_grad():
            for g in self.gates:
                t = g.tokens_E
                if self.N > 1:
                    dist.all_reduce(t)
                g.e_score_correction_bias += self.coeff * torch.sign(t.mean() - t)
                t.zero_()
        self.trajectory.append([g.e_score_correction_bias.clone() for g in self.gates])


def reference(name: str, opt_name: str, recipe: bool = False) -> dict:
    model = build(name)
    bias = BiasRecipe(model, 1) if recipe else None
    opt = getattr(torch.optim, opt_name)(model.parameters(), **OPTIMIZERS[opt_name])
    losses = []
    for step in range(STEPS):
        ids = global_batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bias is not None:
            bias.step()
        losses.append(float(loss.detach()))
    return {
        "losses": losses,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "bias": bias.trajectory if bias is not None else None,
    }


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def train(rank: int, N: int, name: str, opt_name: str, feature: str = "plain") -> dict:
    """One rank's training of family ``name`` under SwiftMoE with ``feature`` on."""
    model = build(name)
    bias = BiasRecipe(model, N) if feature == "bias_recipe" else None
    if feature.startswith("ac_"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": feature == "ac_reentrant"}
        )
    S, E = slots_for(name, N), EXPERTS[name]
    source = changing_source(N, S, E)
    cfg = SwiftMoEConfig(
        slots_per_rank=S,
        optimizer=opt_name,
        optimizer_kwargs=OPTIMIZERS[opt_name],
        plan_source=source,
        plan_deadline_s=20.0,
    )
    handle = replicate_(model, cfg)
    left = [n for n, _ in model.named_parameters() if ".experts." in n]
    net = model
    if feature == "ddp":
        handle.ddp_ignore(model)
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif feature == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    dense_opt = getattr(torch.optim, opt_name)(model.parameters(), **OPTIMIZERS[opt_name])
    B = GLOBAL_B // N
    micro = 2 if feature == "grad_accum" else 1
    losses, loads, placements = [], [], []
    for step in range(STEPS):
        placements.append(handle.placement)
        ids = global_batch(step)[rank * B : (rank + 1) * B]
        total = 0.0
        for m in range(micro):
            part = ids[m * B // micro : (m + 1) * B // micro]
            loss = net(input_ids=part, labels=part).loss / micro
            loss.backward()
            total += float(loss.detach())
        if feature not in ("ddp", "fsdp2"):
            allreduce_dense_grads(model, N)
        dense_opt.step()
        stats = handle.step()
        assert stats.plan_event == "accepted", stats.plan_event
        if bias is not None:
            bias.step()
        loads.append(stats.loads_LE)
        dense_opt.zero_grad()
        handle.zero_grad()
        mean = torch.tensor(total)
        if N > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / N)
    source.close()
    state = {
        k: _full(v)
        for k, v in model.state_dict().items()
        if not k.endswith(("swiftmoe_loads_E", "swiftmoe_dropped"))
    }
    plain = build(name)  # unpatched: the trained dense weights, then the exported experts
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert unexpected == [] and all(".experts." in k for k in missing), (missing, unexpected)
    handle.export_to(plain)
    return {
        "losses": losses,
        "loads": loads,
        "placements": placements,
        "left": left,
        "state": {k: v.detach().clone() for k, v in plain.state_dict().items()},
        "bias": bias.trajectory if bias is not None else None,
    }


def _check(name: str, out: dict, ref: dict, N: int, K: int, what: str) -> None:
    assert out["left"] == [], f"{what}: experts left on the model: {out['left']}"
    p = out["placements"]
    assert sum(a != b for a, b in zip(p, p[1:], strict=False)) == STEPS - 1, f"{what}: {p}"
    for step, layers in enumerate(out["loads"]):
        for le in layers:  # each token once: tokens of the global batch x top-k
            assert sum(le) == GLOBAL_B * L * K, f"{what} step {step}: loads {le}"
    torch.testing.assert_close(
        torch.tensor(out["losses"], dtype=torch.float64),
        torch.tensor(ref["losses"], dtype=torch.float64),
        **TOL,
        msg=lambda m: f"{what} loss curve {out['losses']} vs {ref['losses']}: {m}",
    )
    assert set(out["state"]) == set(ref["state"]), sorted(set(out["state"]) ^ set(ref["state"]))
    for k, want in ref["state"].items():
        torch.testing.assert_close(
            out["state"][k], want, **TOL, msg=lambda m, k=k: f"{what} {k}: {m}"
        )


TOP_K = {"deepseek_v3": 3, "deepseek_v2": 3, "glm4_moe": 3}


def _all_families(rank: int, N: int) -> dict:
    return {(name, opt): train(rank, N, name, opt) for name in FAMILIES for opt in OPTIMIZERS}


@pytest.fixture(scope="module")
def references() -> dict:
    return {(name, opt): reference(name, opt) for name in FAMILIES for opt in OPTIMIZERS}


@pytest.mark.parametrize("N", [1, 2, 4])
def test_families_train_like_unpatched(N: int, references: dict) -> None:
    results = run_ranks(_all_families, N, timeout_s=600, collective_timeout_s=120)
    for (name, opt), ref in references.items():
        for rank, res in enumerate(results):
            _check(name, res[(name, opt)], ref, N, TOP_K.get(name, 2), f"{name} {opt} rank {rank}")


FEATURES = ["ac_reentrant", "ac_nonreentrant", "grad_accum", "ddp", "fsdp2"]
FEATURE_FAMILIES = ["deepseek_v3", "qwen2_moe", "gpt_oss", "llama4"]


def _features(rank: int, N: int) -> dict:
    return {(n, f): train(rank, N, n, "AdamW", f) for n in FEATURE_FAMILIES for f in FEATURES}


def test_training_features_on_the_new_families(references: dict) -> None:
    """2 ranks: checkpointing (both kinds), accumulation, DDP and FSDP2 train as unpatched."""
    results = run_ranks(_features, 2, timeout_s=600, collective_timeout_s=120)
    for name in FEATURE_FAMILIES:
        ref = references[(name, "AdamW")]
        for f in FEATURES:
            for rank, res in enumerate(results):
                _check(name, res[(name, f)], ref, 2, TOP_K.get(name, 2), f"{name} {f} rank {rank}")


def _bias_recipe(rank: int, N: int) -> dict:
    return {
        name: train(rank, N, name, "AdamW", "bias_recipe") for name in ("deepseek_v3", "glm4_moe")
    }


def test_loss_free_balancing_bias_trajectory_is_unpatched() -> None:
    """2 ranks: a DeepSeek-V3-style bias update from router-hook counts moves the bias exactly
    as in unpatched single-process training (the router is called once per block forward, with
    the live bias)."""
    results = run_ranks(_bias_recipe, 2, timeout_s=300, collective_timeout_s=120)
    for name in ("deepseek_v3", "glm4_moe"):
        ref = reference(name, "AdamW", recipe=True)
        assert any(float(b.abs().max()) > 0.011 for b in ref["bias"][-1]), "bias never moved"
        for rank, res in enumerate(results):
            out = res[name]
            for s, (got, want) in enumerate(zip(out["bias"], ref["bias"], strict=True)):
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w, **TOL, msg=f"{name} rank {rank} step {s}")
            _check(name, out, ref, 2, 3, f"{name} bias recipe rank {rank}")


@pytest.mark.parametrize("name", ["deepseek_v3", "gpt_oss", "llama4"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_observe_mode_leaves_the_new_families_untouched(name: str, reentrant: bool) -> None:
    """Observe mode (one process) under activation checkpointing: the loss and every gradient
    as unpatched, and the recorded loads count each token once (not again in the recompute)."""
    ref, model = build(name), build(name)
    for m in (ref, model):
        m.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": reentrant}
        )
    handle = replicate_(model, SwiftMoEConfig(slots_per_rank=EXPERTS[name], mode="observe"))
    ids = global_batch(0)
    want = ref(input_ids=ids, labels=ids).loss
    got = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    want.backward()
    got.backward()
    grads = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, rtol=0, atol=0, msg=n)
    stats = handle.step()
    assert [sum(le) for le in stats.loads_LE] == [GLOBAL_B * L * TOP_K.get(name, 2)] * 2
