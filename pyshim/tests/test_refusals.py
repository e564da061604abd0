"""Blocks SwiftMoE cannot drive exactly are refused before any collective, each with a message
that names the block, the missing piece and the fix; ``swiftmoe check`` lists the same without
training; and a forward run on one rank alone raises instead of hanging.
"""

from __future__ import annotations

import json
import time
import types

import pytest
import torch
import torch.distributed as dist
import transformers as tf
from distributed import run_ranks
from families import BASE, deepseek_v3, llama4
from torch import nn

from swiftmoe import cli
from swiftmoe.engine.blocks import find_moe_blocks

FIX = r"fix: register an adapter of your own .* or exclude them with filter_fn"


def _dsv3_block() -> nn.Module:
    torch.manual_seed(0)
    return deepseek_v3().model.layers[1].mlp


def _refused(block: nn.Module, piece: str, reason: str) -> None:
    holder = nn.Module()
    holder.moe = block
    with pytest.raises(ValueError) as err:
        find_moe_blocks(holder)
    msg = str(err.value)
    assert f"moe ({type(block).__name__}): " in msg, msg
    assert f"{piece}: " in msg and reason in msg, msg
    assert __import__("re").search(FIX, msg), msg


def test_router_taking_extra_arguments():
    block = _dsv3_block()

    class NeedsMask(type(block.gate)):
        def forward(self, hidden_states, mask):
            return super().forward(hidden_states)

    block.gate.__class__ = NeedsMask
    _refused(block, "router", "a router that takes arguments the adapter does not know")


def test_router_that_raises_on_a_probe():
    cfg = tf.DeepseekV2Config(
        **BASE,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        intermediate_size=32,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=2,
        topk_method="noaux_tc",  # HF's own block leaves topk_weights unbound: it crashes
        kv_lora_rank=8,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=4,
    )
    block = tf.DeepseekV2ForCausalLM(cfg).model.layers[1].mlp
    _refused(block, "router", "calling the router on a probe raised UnboundLocalError")


def test_router_with_an_unknown_return_structure():
    block = _dsv3_block()

    class TwoOutputs(type(block.gate)):
        def forward(self, hidden_states):
            return super().forward(hidden_states)[1:]

    block.gate.__class__ = TwoOutputs
    _refused(block, "router", "the router returned (Tensor(3, 3), Tensor(3, 3))")


def test_experts_with_unknown_parameters():
    block = _dsv3_block()
    block.experts.scale = nn.Parameter(torch.ones(8))
    _refused(block, "experts", "experts holds parameters ['down_proj', 'gate_up_proj', 'scale']")


def test_experts_implementation_not_reproduced():
    block = _dsv3_block()
    block.experts.config = types.SimpleNamespace(_experts_implementation="sonicmoe")
    _refused(block, "experts", "experts implementation 'sonicmoe' is not reproduced; call")


def test_block_with_an_extra_child():
    block = _dsv3_block()
    block.post_norm = nn.LayerNorm(16)
    _refused(block, "block", "children ['post_norm'] besides the router")


def test_block_with_parameters_of_its_own():
    block = _dsv3_block()
    block.out_scale = nn.Parameter(torch.ones(16))
    _refused(block, "block", "the block holds tensors of its own (['out_scale'])")


def test_shared_gate_that_is_not_a_linear_to_one():
    torch.manual_seed(0)
    block = llama4().model.layers[1].feed_forward
    block.shared_expert_gate = nn.Linear(16, 2)
    _refused(block, "shared experts", "shared_expert_gate is not an nn.Linear(16, 1)")


def test_block_whose_forward_does_more_than_its_pieces():
    block = _dsv3_block()

    class Scaled(type(block)):
        def forward(self, hidden_states):
            return 2 * super().forward(hidden_states)

    block.__class__ = Scaled
    _refused(block, "block", "its output differs from what its router, experts and shared")


def test_block_whose_forward_needs_more_arguments():
    block = _dsv3_block()

    class Masked(type(block)):
        def forward(self, hidden_states, mask):
            return super().forward(hidden_states * mask)

    block.__class__ = Masked
    _refused(block, "block", "its forward, called with the hidden states alone, raised TypeError")


def test_check_command_lists_blocks_offline(tmp_path, capsys):
    deepseek_v3().config.save_pretrained(tmp_path / "ok")
    assert cli.main(["check", str(tmp_path / "ok"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(b["fqn"], b["adapter"]) for b in rep["blocks"]] == [
        ("model.layers.1.mlp", "hf-fused-experts"),
        ("model.layers.2.mlp", "hf-fused-experts"),
    ]
    cfg = tf.DeepseekV2Config(
        **BASE,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=2,
        topk_method="noaux_tc",
        kv_lora_rank=8,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=4,
    )
    cfg.save_pretrained(tmp_path / "bad")
    assert cli.main(["check", str(tmp_path / "bad" / "config.json")]) == 1
    out = capsys.readouterr().out
    assert "model.layers.1.mlp" in out and "REFUSED: hf-fused-experts: router: calling" in out
    assert cli.main(["check", str(tmp_path / "missing" / "x" / "config.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _lone_forward(rank: int, N: int) -> str:
    from swiftmoe.api import replicate_
    from swiftmoe.engine.config import SwiftMoEConfig
    from swiftmoe.engine.dist import LoneForwardError

    torch.manual_seed(0)
    model = deepseek_v3()
    replicate_(model, SwiftMoEConfig(slots_per_rank=4, eval_forward_timeout_s=2.0))
    model.eval()
    if rank == 0:
        ids = torch.randint(3, 64, (1, 4), generator=torch.Generator().manual_seed(0))
        t0 = time.monotonic()
        try:
            with torch.no_grad():
                model(input_ids=ids)
        except LoneForwardError as e:
            return f"{time.monotonic() - t0:.1f}s {e}"
        return "no error"
    time.sleep(4.0)  # then pair with rank 0's pending count all-reduce so both exit cleanly
    dist.all_reduce(torch.zeros(N, 8, dtype=torch.long))
    return "drained"


def test_forward_on_one_rank_alone_raises_instead_of_hanging():
    out, drained = run_ranks(_lone_forward, 2, timeout_s=120, collective_timeout_s=60)
    assert drained == "drained"
    assert "did not run the same forward within 2 s" in out, out
    assert "if rank == 0: model.generate" in out and "handle.export_to(copy)" in out, out
    assert float(out.split("s ", 1)[0]) < 10, out
