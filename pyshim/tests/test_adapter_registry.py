"""The adapter registry: built-ins on import, lookup order, and the documented custom adapter.

Shape legend: B batch, S sequence, T tokens, D model dim, E experts, K top-k.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from test_adapters_hf import (
    D,
    Mixtral4xBlock,
    Qwen3Moe4xBlock,
    UserFusedBlock,
    hidden,
    reference_combine,
    tiny_mixtral,
    tiny_qwen3,
)
from torch import nn

import swiftmoe.adapters as adapters
from swiftmoe.adapters import (
    HFFusedExpertsAdapter,
    HFModuleListAdapter,
    MoEAdapter,
    find_adapter,
    register_adapter,
    registered_adapters,
)
from swiftmoe.adapters import base as adapters_base


@pytest.fixture
def registry():
    """Restore the process-wide registry after a test that registers adapters."""
    saved = list(adapters_base._REGISTRY)
    yield
    adapters_base._REGISTRY[:] = saved


def test_public_surface():
    for name in ("MoEAdapter", "ExpertSpec", "RouteResult", "register_adapter", "find_adapter"):
        assert name in adapters.__all__ and hasattr(adapters, name), name


def test_builtin_adapters_registered_on_import():
    kinds = {type(a) for a in registered_adapters()}
    assert {HFFusedExpertsAdapter, HFModuleListAdapter} <= kinds, kinds


@pytest.mark.parametrize(
    ("make", "want"),
    [
        (lambda: tiny_mixtral().model.layers[1].mlp, HFFusedExpertsAdapter),
        (lambda: tiny_qwen3().model.layers[0].mlp, HFFusedExpertsAdapter),
        (lambda: Mixtral4xBlock(), HFModuleListAdapter),
        (lambda: Qwen3Moe4xBlock(), HFModuleListAdapter),
        (lambda: UserFusedBlock(), HFFusedExpertsAdapter),
        (lambda: tiny_qwen3(mlp_only_layers=[0]).model.layers[0].mlp, None),
        (lambda: nn.Sequential(nn.Linear(D, 2 * D), nn.SiLU(), nn.Linear(2 * D, D)), None),
    ],
    ids=["mixtral-5x", "qwen3-5x", "mixtral-4x", "qwen3-4x", "user-fused", "dense-mlp", "mlp"],
)
def test_find_adapter_picks_by_structure(make, want):
    got = find_adapter(make())
    if want is None:
        assert got is None, f"got {type(got).__name__}, want None"
    else:
        assert isinstance(got, want), f"got {type(got).__name__}, want {want.__name__}"


def test_find_adapter_finds_every_block_of_a_model_and_nothing_else():
    model = tiny_mixtral()
    found = [n for n, m in model.named_modules() if find_adapter(m) is not None]
    assert found == ["model.layers.0.mlp", "model.layers.1.mlp"], found


def test_later_registration_takes_precedence(registry):
    class Override(HFFusedExpertsAdapter):
        name = "team-override"

    block = tiny_qwen3().model.layers[0].mlp
    assert type(find_adapter(block)) is HFFusedExpertsAdapter
    mine = register_adapter(Override())
    assert find_adapter(block) is mine
    assert find_adapter(Mixtral4xBlock()).name == "hf-modulelist-experts"


def test_register_adapter_rejects_non_adapters(registry):
    with pytest.raises(TypeError, match="subclass swiftmoe.adapters.MoEAdapter"):
        register_adapter(HFFusedExpertsAdapter)  # the class, not an instance


def _docstring_example() -> str:
    doc = adapters.__doc__
    start = doc.index(".. code-block:: python")
    body = doc[start:].split("\n", 1)[1]
    return textwrap.dedent(body)


def test_docstring_example_runs_and_is_exact(registry):
    src = _docstring_example()
    assert "class TeamMoEAdapter(MoEAdapter)" in src and "register_adapter(TeamMoEAdapter())" in src
    ns: dict = {}
    exec(compile(src, "swiftmoe/adapters/__init__.py:example", "exec"), ns)
    team_moe, team_adapter = ns["TeamMoE"], ns["TeamMoEAdapter"]

    torch.manual_seed(0)
    block = team_moe()
    adapter = find_adapter(block)
    assert isinstance(adapter, team_adapter) and isinstance(adapter, MoEAdapter)
    assert find_adapter(tiny_qwen3().model.layers[0].mlp).name == "hf-fused-experts"

    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        want = block(x)
        got, route = reference_combine(adapter, block, x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert route.topk_ids_TK.shape == (12, 2)

    saved = [tuple(t.detach().clone() for t in p) for p in adapter.get_expert_params(block)]
    adapter.remove_expert_params(block)
    assert [n for n, _ in block.named_parameters()] == ["router.weight"]
    assert adapter.expert_spec(block).numel == 2 * 32 * 16
    adapter.set_expert_params(block, saved)
    with torch.no_grad():
        torch.testing.assert_close(block(x), want, atol=1e-6, rtol=1e-6)


def test_reference_combine_helper_detects_a_wrong_adapter(registry):
    """The equivalence check these tests rely on fails when an adapter is wrong."""

    class WrongTopK(HFModuleListAdapter):
        name = "wrong"

        def route(self, block, x_TD):
            r = super().route(block, x_TD)
            r.topk_weights_TK = r.topk_weights_TK.flip(-1)
            return r

    block = Qwen3Moe4xBlock().eval()
    register_adapter(WrongTopK())
    x = hidden()
    with torch.no_grad():
        want = block(x.clone())[0]
        got, _ = reference_combine(find_adapter(block), block, x.clone())
    assert not torch.allclose(got[0], want, atol=1e-4)
