"""Tiny transformers 5.x models of the MoE families teams train today (a helper module, no
tests): DeepSeek-V3 (group-limited routing, a non-zero score-correction bias, one dense and two
MoE layers), DeepSeek-V2, Qwen2-MoE, GPT-OSS (non-zero expert biases, a clamp that bites),
GLM4-MoE and Llama 4, as verified in the families study; and what trains them.

Shape legend: B sequences, L sequence length, E experts, N ranks, S slots per rank.
"""

from __future__ import annotations

import random

import torch
import transformers as tf
from engine_harness import striped

from swiftmoe.engine.plan import validate_slots
from swiftmoe.planning.sources import CallablePlanSource

VOCAB = 64
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_attention_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    max_position_embeddings=64,
)


def deepseek_v3() -> torch.nn.Module:
    cfg = tf.DeepseekV3Config(
        **BASE,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        intermediate_size=32,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        n_shared_experts=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        kv_lora_rank=8,
        q_lora_rank=8,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=4,
    )
    m = tf.DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():  # _init_weights zeroes the bias: make it non-zero
        for layer in m.model.layers[cfg.first_k_dense_replace :]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.linspace(-0.01, 0.01, 8))
    return m


def deepseek_v2() -> torch.nn.Module:
    cfg = tf.DeepseekV2Config(
        **BASE,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        intermediate_size=32,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        n_shared_experts=2,
        routed_scaling_factor=1.5,
        kv_lora_rank=8,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=4,
    )
    return tf.DeepseekV2ForCausalLM(cfg)


def qwen2_moe() -> torch.nn.Module:
    cfg = tf.Qwen2MoeConfig(
        **BASE,
        num_key_value_heads=1,
        num_hidden_layers=2,
        intermediate_size=32,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=24,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    return tf.Qwen2MoeForCausalLM(cfg)


def gpt_oss() -> torch.nn.Module:
    cfg = tf.GptOssConfig(
        **BASE,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        swiglu_limit=0.1,  # a clamp that bites at init scale
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    m = tf.GptOssForCausalLM(cfg)
    with torch.no_grad():  # _init_weights zeroes the expert biases: make them non-zero
        for layer in m.model.layers:
            layer.mlp.experts.gate_up_proj_bias.normal_(0, 0.02)
            layer.mlp.experts.down_proj_bias.normal_(0, 0.02)
    return m


def glm4_moe() -> torch.nn.Module:
    cfg = tf.Glm4MoeConfig(
        **BASE,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        intermediate_size=32,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        n_shared_experts=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
    )
    m = tf.Glm4MoeForCausalLM(cfg)
    with torch.no_grad():
        for layer in m.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.linspace(-0.01, 0.01, 8))
    return m


def llama4() -> torch.nn.Module:
    cfg = tf.Llama4TextConfig(
        **BASE,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=3,
        intermediate_size=8,
        intermediate_size_mlp=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        interleave_moe_layer_step=1,
        moe_layers=[1, 2],
        attention_chunk_size=64,
        no_rope_layers=[1, 1, 0],
    )
    return tf.Llama4ForCausalLM(cfg)


FAMILIES = {
    "deepseek_v3": deepseek_v3,
    "deepseek_v2": deepseek_v2,
    "qwen2_moe": qwen2_moe,
    "gpt_oss": gpt_oss,
    "glm4_moe": glm4_moe,
    "llama4": llama4,
}
EXPERTS = {name: 4 if name == "llama4" else 8 for name in FAMILIES}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[name]().train()


def changing_plan(iteration: int, N: int, S: int, layer: int, E: int, replicas: bool) -> list[int]:
    """A valid placement for the step after ``iteration``, different every step: experts on
    ranks that never held them; with ``replicas`` random extra replicas, else each expert once
    (needs N*S == E)."""
    rng = random.Random(7919 * iteration + 31 * layer + N)
    K = N * S
    if not replicas and K != E:
        raise ValueError(f"one replica per expert needs N*S == E, got {N}*{S} != {E}")
    while True:
        reps = [1] * E
        for _ in range(K - E):
            reps[rng.randrange(E)] += 1
        slots = striped(reps, N, S, rng)
        if slots != [k % E for k in range(K)]:
            break
    validate_slots(slots, E, N, S)
    return slots


def changing_source(N: int, S: int, E: int, replicas: bool = True) -> CallablePlanSource:
    return CallablePlanSource(
        lambda it, loads: [changing_plan(it, N, S, li, E, replicas) for li in range(len(loads))],
        name="changing",
    )
