"""Under bf16 autocast the patched block returns what the transformers block returns: the slot
GEMMs follow the block's experts implementation (grouped_mm ignores autocast) and the combine
sums in its dtypes and order. Before, the engine's combine stayed in bf16 (about 0.7% off).

Shape legend: B batch, L sequence length.
"""

from __future__ import annotations

import pytest
import torch
from families import VOCAB, build

from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig


@pytest.mark.parametrize("impl", ["grouped_mm", "eager"])
@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2_moe", "gpt_oss"])
def test_autocast_block_output_matches_transformers(name: str, impl: str) -> None:
    ref, model = build(name), build(name)
    for m in (ref, model):
        m.set_experts_implementation(impl)
    replicate_(
        model, SwiftMoEConfig(slots_per_rank=8, optimizer="SGD", optimizer_kwargs={"lr": 0.1})
    )
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    outs = {}
    for key, m in (("ref", ref), ("got", model)):
        seen = []
        hooks = [
            b.register_forward_hook(lambda mod, a, o, seen=seen: seen.append(o))
            for n, b in m.named_modules()
            if n.endswith(".mlp") and hasattr(b, "experts")
        ]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            m(input_ids=ids)
        for h in hooks:
            h.remove()
        outs[key] = [o[0] if isinstance(o, tuple) else o for o in seen]
    assert len(outs["got"]) == len(outs["ref"]) == 2
    for got, want in zip(outs["got"], outs["ref"], strict=True):
        assert got.dtype == want.dtype
        rel = float((got.float() - want.float()).abs().max() / want.float().abs().max())
        assert rel < 1e-5, f"{name} {impl}: max difference {rel:.3g} of the output's scale"
