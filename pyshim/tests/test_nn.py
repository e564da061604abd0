"""swiftmoe.nn.MoE (the reference layer) and its adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import swiftmoe.nn as smnn
from swiftmoe.adapters.base import find_adapter
from swiftmoe.adapters.native import NativeMoEAdapter


def naive_moe(moe: smnn.MoE, x_TD: torch.Tensor) -> torch.Tensor:
    """Token by token: sum_k w_k * expert_{id_k}(x)."""
    probs = torch.softmax(moe.router(x_TD), -1)
    w, ids = probs.topk(moe.top_k, -1)
    w = w / w.sum(-1, keepdim=True)
    rows = []
    for t in range(x_TD.shape[0]):
        y = torch.zeros(x_TD.shape[1])
        for k in range(moe.top_k):
            e = int(ids[t, k])
            h = F.silu(moe.w_gate[e] @ x_TD[t]) * (moe.w_up[e] @ x_TD[t])
            y = y + w[t, k] * (moe.w_down[e] @ h)
        rows.append(y)
    return torch.stack(rows)


def test_forward_matches_token_by_token_reference() -> None:
    torch.manual_seed(0)
    moe = smnn.MoE(8, 12, 5, 2)
    x = torch.randn(3, 7, 8)
    y = moe(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.reshape(-1, 8), naive_moe(moe, x.reshape(-1, 8)))


def test_gradients_reach_router_and_experts() -> None:
    torch.manual_seed(1)
    moe = smnn.MoE(4, 8, 3, 2)
    moe(torch.randn(6, 4)).pow(2).sum().backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dim": 0}, "dim"),
        ({"hidden_dim": -1}, "hidden_dim"),
        ({"num_experts": 0}, "num_experts"),
        ({"top_k": 5}, "top_k"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {"dim": 4, "hidden_dim": 8, "num_experts": 4, "top_k": 2} | kwargs
    with pytest.raises(ValueError, match=field):
        smnn.MoE(**args)


def test_adapter_is_registered_and_describes_the_block() -> None:
    moe = smnn.MoE(4, 6, 3, 2)
    adapter = find_adapter(moe)
    assert isinstance(adapter, NativeMoEAdapter)
    assert (adapter.num_experts(moe), adapter.top_k(moe)) == (3, 2)
    spec = adapter.expert_spec(moe)
    assert spec.numel == 6 * 4 * 3
    x = torch.randn(5, 4)
    params = adapter.get_expert_params(moe)
    want = smnn.swiglu_expert(x, moe.w_gate[1], moe.w_up[1], moe.w_down[1])
    torch.testing.assert_close(spec.forward(x, *params[1]), want)
    route = adapter.route(moe, x)
    ids, w = moe.route(x)
    assert torch.equal(route.topk_ids_TK, ids) and torch.equal(route.topk_weights_TK, w)


def test_remove_then_set_expert_params_round_trips() -> None:
    torch.manual_seed(2)
    moe = smnn.MoE(4, 6, 3, 2)
    x = torch.randn(5, 4)
    want = moe(x)
    adapter = find_adapter(moe)
    saved = [tuple(t.detach().clone() for t in ps) for ps in adapter.get_expert_params(moe)]
    adapter.remove_expert_params(moe)
    assert {n for n, _ in moe.named_parameters()} == {"router.weight"}
    with pytest.raises(ValueError, match="already"):
        adapter.get_expert_params(moe)
    adapter.set_expert_params(moe, saved)
    assert {n for n, _ in moe.named_parameters()} == {
        "router.weight",
        "w_gate",
        "w_up",
        "w_down",
    }
    torch.testing.assert_close(moe(x), want)


def test_set_expert_params_rejects_wrong_shapes() -> None:
    moe = smnn.MoE(4, 6, 3, 2)
    adapter = find_adapter(moe)
    good = [tuple(t.detach() for t in ps) for ps in adapter.get_expert_params(moe)]
    with pytest.raises(ValueError, match="3 experts|num_experts=3"):
        adapter.set_expert_params(moe, good[:2])
    bad = list(good)
    bad[1] = (good[1][0], good[1][1], torch.zeros(6, 4))
    with pytest.raises(ValueError, match="w_down"):
        adapter.set_expert_params(moe, bad)


def test_grouped_swiglu_matches_per_slot_experts() -> None:
    """The grouped path (CUDA in production) computes what per-slot experts compute."""
    torch.manual_seed(4)
    S, D, F = 3, 8, 16
    w = [torch.randn(S, F, D), torch.randn(S, F, D), torch.randn(S, D, F)]
    w = [t.requires_grad_() for t in w]
    x = torch.randn(11, D)
    rows = [2, 5, 4]
    offs = torch.tensor([2, 7, 11], dtype=torch.int32)
    try:
        y = smnn.grouped_swiglu(x, offs, *w)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._grouped_mm unavailable here: {e}")
    parts, start = [], 0
    for s, n in enumerate(rows):
        parts.append(smnn.swiglu_expert(x[start : start + n], w[0][s], w[1][s], w[2][s]))
        start += n
    want = torch.cat(parts)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    try:
        g_grouped = torch.autograd.grad(y.sum(), w)
    except RuntimeError as e:  # the CPU kernel has no backward for every layout
        pytest.skip(f"forward checked; torch._grouped_mm backward unavailable here: {e}")
    g_loop = torch.autograd.grad(want.sum(), w)
    for a, b in zip(g_grouped, g_loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
