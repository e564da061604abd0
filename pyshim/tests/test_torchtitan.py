"""torchtitan (0.3.0) models under SwiftMoE, enabled through ``swiftmoe.integrations.torchtitan``.

Tiny DeepSeek-V3 (sigmoid router, group-limited, routed scaling, a shared expert, one dense and
two MoE layers) and Qwen3 (softmax router, no shared expert) models are built from their
configs (no weights downloaded) the way torchtitan's Trainer builds them (meta, parallelize,
``to_empty``, ``init_weights``, the optimizer container, ``post_optimizer_build_fn``); the
Trainer itself needs a GPU, so the test drives these steps. On 1, 2 and 4 gloo ranks, with
FSDP2 on the dense parameters and a placement that changes every step, AdamW and Adam give the
unpatched single-process run's loss curve, parameters (dense, shared experts, exported routed
experts) and auxiliary-loss-free balancing bias trajectory (torchtitan's own hook) within 1e-5. torchtitan's experts compute in
bf16, so these placements give each expert one replica per step (see the adapter's docstring).

Shape legend: B sequences per rank, L sequence length, N ranks, S slots per rank, E experts.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from distributed import run_ranks
from families import changing_source

pytest.importorskip("torchtitan")

VOCAB, GLOBAL_B, L, STEPS = 64, 4, 8, 3
# torchtitan's optimizer container builds Adam, AdamW and DistMuon only (no SGD): SGD with
# momentum is covered on the transformers families.
OPTIMIZERS = {"AdamW": {"lr": 3e-3, "weight_decay": 0.01}, "Adam": {"lr": 1e-2}}
EXPERTS = {"dsv3": 8, "qwen3": 4}
TOL = dict(rtol=0, atol=1e-5)


def _sdpa(layers):
    from torchtitan.models.common.attention import ScaledDotProductAttention

    for layer in layers:  # flex/varlen attention need a GPU; SDPA (causal) runs on CPU
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
    return layers


def tiny_config(kind: str):
    from torchtitan.models import deepseek_v3 as dsv3
    from torchtitan.models import qwen3
    from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm

    dim = 16
    if kind == "dsv3":
        layers = dsv3._build_dsv3_layers(
            n_layers=3,
            n_dense_layers=1,
            dim=dim,
            n_heads=2,
            q_lora_rank=0,
            kv_lora_rank=8,
            qk_nope_head_dim=4,
            qk_rope_head_dim=4,
            v_head_dim=4,
            mscale=0.70,
            dense_hidden_dim=32,
            moe_hidden_dim=8,
            num_experts=8,
            num_shared_experts=1,
            router_top_k=3,
            router_score_func="sigmoid",
            router_num_expert_groups=4,
            router_num_limited_groups=2,
            router_route_scale=2.5,
            router_route_norm=True,
            attn_backend="flex",
            moe_comm_backend="standard",
            non_blocking_capacity_factor=None,
            rope=ComplexRoPE.Config(dim=4, max_seq_len=64, theta=10000.0, scaling="none"),
        )
        for layer in layers:
            if layer.moe is not None:
                layer.moe.load_balance_coeff = 1e-2
        return dsv3.DeepSeekV3Model.Config(
            vocab_size=VOCAB,
            dim=dim,
            tok_embeddings=Embedding.Config(
                num_embeddings=VOCAB, embedding_dim=dim, param_init=dsv3._EMBEDDING_INIT
            ),
            norm=RMSNorm.Config(normalized_shape=dim, param_init=dsv3._NORM_INIT),
            lm_head=Linear.Config(
                in_features=dim, out_features=VOCAB, param_init=dsv3._output_linear_init(dim)
            ),
            layers=_sdpa(layers),
            mtp_layers=[],
        )
    layers = qwen3._build_qwen3_moe_layers(
        n_layers=2,
        dim=dim,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        moe_hidden_dim=8,
        num_experts=4,
        top_k=2,
        attn_backend="flex",
        moe_comm_backend="standard",
        rope=CosSinRoPE.Config(dim=8, max_seq_len=64, theta=1000000.0),
    )
    for layer in layers:
        if layer.moe is not None:
            layer.moe.load_balance_coeff = 1e-2
    return qwen3.Qwen3Model.Config(
        vocab_size=VOCAB,
        dim=dim,
        norm=qwen3._qwen3_norm(dim),
        tok_embeddings=Embedding.Config(
            num_embeddings=VOCAB, embedding_dim=dim, param_init=qwen3._EMBEDDING_INIT
        ),
        lm_head=Linear.Config(in_features=dim, out_features=VOCAB, param_init=qwen3._LINEAR_INIT),
        layers=_sdpa(layers),
    )


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(700 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_B, L), generator=g)
    ids[:2, ::2] = 5
    return ids


def _setup(kind: str, N: int, opt_name: str, swiftmoe: bool):
    """Model, optimizer container and spec, built in the Trainer's order."""
    from torchtitan.components.optimizer import (
        OptimizersContainer,
        ParamGroupConfig,
        register_moe_load_balancing_hook,
    )
    from torchtitan.distributed import ParallelDims
    from torchtitan.protocols.model_spec import ModelSpec

    from swiftmoe.engine.config import SwiftMoEConfig
    from swiftmoe.integrations.torchtitan import SwiftMoEConverter, enable

    cfg = SwiftMoEConverter.Config().build().convert(tiny_config(kind))
    spec = ModelSpec(
        name=kind,
        flavor="tiny",
        model=cfg,
        parallelize_fn=lambda model, **kw: model,
        pipelining_fn=None,
        post_optimizer_build_fn=register_moe_load_balancing_hook,
        state_dict_adapter=None,
    )
    source = None
    if swiftmoe:
        E = EXPERTS[kind]
        source = changing_source(N, E // N, E, replicas=False)
        spec = enable(
            spec,
            SwiftMoEConfig(
                slots_per_rank=E // N,
                optimizer=opt_name,
                optimizer_kwargs=OPTIMIZERS[opt_name],
                plan_source=source,
                plan_deadline_s=20.0,
            ),
        )
    pd = ParallelDims(dp_replicate=1, dp_shard=N, cp=1, tp=1, pp=1, ep=1, world_size=N)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = cfg.build()
    model = spec.parallelize_fn(model, parallel_dims=pd)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    model.train()
    if N > 1:  # FSDP2 on the dense parameters (after init: DTensor init draws differently)
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers.values():
            fully_shard(layer)
        fully_shard(model)
    opt = OptimizersContainer.Config(
        param_groups=[
            ParamGroupConfig(
                pattern=".*", optimizer_name=opt_name, optimizer_kwargs=OPTIMIZERS[opt_name]
            )
        ],
        implementation="for-loop",
    ).build(model_parts=[model])
    spec.post_optimizer_build_fn(opt, [model], pd)
    return model, opt, spec, source


def _train(rank: int, N: int, kind: str, opt_name: str, swiftmoe: bool) -> dict:
    from torchtitan.models.common.moe import MoE

    from swiftmoe.integrations.torchtitan import handles

    model, opt, spec, source = _setup(kind, N, opt_name, swiftmoe)
    experts_left = [n for n, _ in model.named_parameters() if "inner_experts" in n]
    B = GLOBAL_B // N
    losses, biases, placements = [], [], []
    for step in range(STEPS):
        if swiftmoe:
            placements.append(handles(spec)[0].placement)
        ids = global_batch(step)[rank * B : (rank + 1) * B]
        loss = F.cross_entropy(model(ids).flatten(0, 1).float(), ids.flatten())
        loss.backward()
        opt.step()  # pre-hook: torchtitan's bias update; post-hook: SwiftMoE's expert step
        opt.zero_grad()
        mean = loss.detach().clone()
        if N > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / N)
        biases.append([m.expert_bias_E.clone() for m in model.modules() if isinstance(m, MoE)])
    state = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
        if "swiftmoe" not in k
    }
    if swiftmoe:
        for fqn, experts in handles(spec)[0].export_expert_weights().items():
            for i, n in enumerate(("w1_EFD", "w2_EDF", "w3_EFD")):
                state[f"{fqn}.routed_experts.inner_experts.{n}"] = torch.stack(
                    [p[i] for p in experts]
                )
        source.close()
    return {
        "losses": losses,
        "biases": biases,
        "state": state,
        "left": experts_left,
        "placements": placements,
    }


def _all(rank: int, N: int, swiftmoe: bool) -> dict:
    return {(k, o): _train(rank, N, k, o, swiftmoe) for k in EXPERTS for o in OPTIMIZERS}


@pytest.fixture(scope="module")
def references() -> dict:
    (ref,) = run_ranks(_all, 1, False, timeout_s=300, collective_timeout_s=120)
    return ref


@pytest.mark.parametrize("N", [1, 2, 4])
def test_torchtitan_models_train_like_unpatched(N: int, references: dict) -> None:
    results = run_ranks(_all, N, True, timeout_s=600, collective_timeout_s=120)
    for key, ref in references.items():
        assert any(float(b.abs().max()) > 0 for b in ref["biases"][-1]), f"{key}: bias never moved"
        for rank, res in enumerate(results):
            out, what = res[key], f"{key} rank {rank} of {N}"
            assert out["left"] == [], f"{what}: experts left in the parameters {out['left']}"
            p = out["placements"]
            assert sum(a != b for a, b in zip(p, p[1:], strict=False)) == STEPS - 1, p
            torch.testing.assert_close(
                torch.tensor(out["losses"]), torch.tensor(ref["losses"]), **TOL, msg=what
            )
            for s, (got, want) in enumerate(zip(out["biases"], ref["biases"], strict=True)):
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w, **TOL, msg=f"{what} bias at step {s}")
            assert set(out["state"]) == set(ref["state"])
            for k, want in ref["state"].items():
                torch.testing.assert_close(
                    out["state"][k], want, **TOL, msg=lambda m, k=k, w=what: f"{w} {k}: {m}"
                )


def test_converter_and_adapter_refuse_what_swiftmoe_cannot_drive() -> None:
    """Expert parallelism (the DeepEP dispatcher) is refused at config time by the converter,
    and Float8/MXFP8-style grouped experts at replicate time by the adapter, with the fix."""
    import types

    from torchtitan.models.common.moe import MoE

    from swiftmoe.adapters.torchtitan import TorchtitanMoEAdapter
    from swiftmoe.integrations.torchtitan import SwiftMoEConverter

    cfg = tiny_config("qwen3")
    for _fqn, moe, *_ in cfg.traverse(MoE.Config):
        disp = moe.routed_experts.token_dispatcher
        moe.routed_experts.token_dispatcher = types.new_class("DeepEPConfig", (type(disp),))(
            num_experts=disp.num_experts, top_k=disp.top_k
        )
    with pytest.raises(ValueError, match=r"token_dispatcher is .*DeepEPConfig; SwiftMoE replaces "):
        SwiftMoEConverter.Config().build().convert(cfg)

    torch.manual_seed(0)
    with torch.device("meta"):
        model = tiny_config("qwen3").build()
    block = model.layers["0"].moe
    inner = block.routed_experts.inner_experts

    class Float8Experts(type(inner)):
        def _grouped_mm(self, *, A, B_t, offs):  # a converter's low-precision GEMM
            return super()._grouped_mm(A=A, B_t=B_t, offs=offs)

    inner.__class__ = Float8Experts
    why = TorchtitanMoEAdapter().why_not(block)
    assert why is not None and why.startswith("experts: Float8Experts computes its experts"), why
    assert "drop that converter" in why, why
