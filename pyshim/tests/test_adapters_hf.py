"""HuggingFace MoE adapters reproduce their blocks exactly (CPU, fp32, tiny configs).

Each block form is checked by the reference combine
``y_TD = sum_k w_TK * spec.forward(x_TD[tokens of expert], *params[expert])`` built from
``route`` and ``get_expert_params`` alone, against the unpatched block.

Shape legend: B batch, S sequence, T tokens (B*S), D model dim, INTER expert dim, E experts, K top-k.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.activations import ACT2FN

from swiftmoe.adapters import (
    HFFusedExpertsAdapter,
    HFModuleListAdapter,
    MoEAdapter,
    RouteResult,
    find_adapter,
)

D, INTER, E, K, VOCAB = 32, 64, 4, 2, 64
TOL = dict(atol=1e-6, rtol=1e-6)
COMMON = dict(
    hidden_size=D,
    num_hidden_layers=2,
    vocab_size=VOCAB,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


# ---------------------------------------------------------------------------------------------
# Tiny models of the installed transformers (5.x, fused experts).


def tiny_mixtral(**kw) -> MixtralForCausalLM:
    torch.manual_seed(0)
    cfg = dict(COMMON, intermediate_size=INTER, num_local_experts=E, num_experts_per_tok=K)
    return MixtralForCausalLM(MixtralConfig(**(cfg | kw))).eval()


def tiny_qwen3(**kw) -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    cfg = dict(
        COMMON,
        intermediate_size=INTER,
        moe_intermediate_size=INTER,
        num_experts=E,
        num_experts_per_tok=K,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**(cfg | kw))).eval()


def tiny_olmoe() -> OlmoeForCausalLM:
    torch.manual_seed(0)
    cfg = dict(COMMON, intermediate_size=INTER, num_experts=E, num_experts_per_tok=K)
    return OlmoeForCausalLM(OlmoeConfig(**cfg)).eval()


# ---------------------------------------------------------------------------------------------
# The transformers 4.x per-expert form, rebuilt: same attributes, same forward math and op order
# as 4.x's MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock (softmax in fp32 over dim 1, top-k,
# renormalise, cast to the hidden dtype, loop over hit experts, index_add, return (y, logits)).


class Mixtral4xExpert(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.ffn_dim, self.hidden_dim = ffn, hidden
        self.w1 = nn.Linear(hidden, ffn, bias=False)
        self.w2 = nn.Linear(ffn, hidden, bias=False)
        self.w3 = nn.Linear(hidden, ffn, bias=False)
        self.act_fn = ACT2FN["silu"]

    def forward(self, hidden_states):
        return self.w2(self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states))


class Qwen3Moe4xMLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.hidden_size, self.intermediate_size = hidden, inter
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.act_fn = ACT2FN["silu"]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _sparse_moe_4x(block: nn.Module, hidden_states: torch.Tensor, normalise: bool):
    batch, seq, hidden = hidden_states.shape
    hidden_states = hidden_states.view(-1, hidden)
    router_logits = block.gate(hidden_states)
    routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
    routing_weights, selected = torch.topk(routing_weights, block.top_k, dim=-1)
    if normalise:
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
    routing_weights = routing_weights.to(hidden_states.dtype)
    final = torch.zeros((batch * seq, hidden), dtype=hidden_states.dtype)
    mask = F.one_hot(selected, num_classes=block.num_experts).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in hit:
        expert = block.experts[expert_idx]
        idx, top_x = torch.where(mask[expert_idx].squeeze(0))
        state = hidden_states[None, top_x].reshape(-1, hidden)
        out = expert(state) * routing_weights[top_x, idx, None]
        final.index_add_(0, top_x, out.to(hidden_states.dtype))
    return final.reshape(batch, seq, hidden), router_logits


class Mixtral4xBlock(nn.Module):
    def __init__(self, hidden=D, ffn=INTER, num_experts=E, top_k=K, jitter=0.0):
        super().__init__()
        self.hidden_dim, self.ffn_dim = hidden, ffn
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList([Mixtral4xExpert(hidden, ffn) for _ in range(num_experts)])
        self.jitter_noise = jitter

    def forward(self, hidden_states):
        if self.training and self.jitter_noise > 0:
            hidden_states *= torch.empty_like(hidden_states).uniform_(
                1.0 - self.jitter_noise, 1.0 + self.jitter_noise
            )
        return _sparse_moe_4x(self, hidden_states, normalise=True)


class Qwen3Moe4xBlock(nn.Module):
    def __init__(self, hidden=D, inter=INTER, num_experts=E, top_k=K, norm_topk_prob=True):
        super().__init__()
        self.num_experts, self.top_k, self.norm_topk_prob = num_experts, top_k, norm_topk_prob
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList([Qwen3Moe4xMLP(hidden, inter) for _ in range(num_experts)])

    def forward(self, hidden_states):
        return _sparse_moe_4x(self, hidden_states, normalise=self.norm_topk_prob)


# ---------------------------------------------------------------------------------------------
# A team's own fused block with none of transformers' class names (optionally transposed).


class UserRouter(nn.Module):
    def __init__(self, hidden, num_experts, k):
        super().__init__()
        self.top_k = k
        self.weight = nn.Parameter(torch.randn(num_experts, hidden) / hidden**0.5)

    def forward(self, x_TD):
        logits_TE = F.linear(x_TD, self.weight)
        w_TK, ids_TK = torch.topk(logits_TE.softmax(-1), self.top_k, dim=-1)
        return logits_TE, w_TK, ids_TK


class UserExperts(nn.Module):
    def __init__(self, hidden, inter, num_experts, transposed):
        super().__init__()
        self.is_transposed = transposed
        gu, dn = (hidden, 2 * inter), (inter, hidden)
        if not transposed:
            gu, dn = gu[::-1], dn[::-1]
        self.gate_up_proj = nn.Parameter(torch.randn(num_experts, *gu) / hidden**0.5)
        self.down_proj = nn.Parameter(torch.randn(num_experts, *dn) / inter**0.5)
        self.act_fn = nn.GELU()

    def forward(self, x_TD, ids_TK, w_TK):
        y_TD = torch.zeros_like(x_TD)
        for e in range(self.gate_up_proj.shape[0]):
            tok, slot = (ids_TK == e).nonzero(as_tuple=True)
            if self.is_transposed:
                g, u = (x_TD[tok] @ self.gate_up_proj[e]).chunk(2, dim=-1)
                h = (self.act_fn(g) * u) @ self.down_proj[e]
            else:
                g, u = F.linear(x_TD[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
                h = F.linear(self.act_fn(g) * u, self.down_proj[e])
            y_TD.index_add_(0, tok, h * w_TK[tok, slot, None])
        return y_TD


class UserFusedBlock(nn.Module):
    def __init__(self, transposed=False):
        super().__init__()
        torch.manual_seed(3)
        self.gate = UserRouter(D, E, K)
        self.experts = UserExperts(D, INTER, E, transposed)

    def forward(self, x):
        x_TD = x.reshape(-1, x.shape[-1])
        _, w_TK, ids_TK = self.gate(x_TD)
        return self.experts(x_TD, ids_TK, w_TK).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Helpers.


def reference_combine(adapter: MoEAdapter, block: nn.Module, x: torch.Tensor):
    """The block's output rebuilt from the adapter alone; returns (output, RouteResult)."""
    x_TD = adapter.flatten_input(block, (x,), {})
    route = adapter.route(block, x_TD)
    spec = adapter.expert_spec(block)
    params = adapter.get_expert_params(block)
    assert len(params) == adapter.num_experts(block)
    assert route.topk_ids_TK.shape == (x_TD.shape[0], adapter.top_k(block))
    y_TD = torch.zeros_like(x_TD)
    for e, p in enumerate(params):
        assert tuple(t.shape for t in p) == spec.shapes
        tok, slot = (route.topk_ids_TK == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out_TD = spec.forward(x_TD[tok], *p) * route.topk_weights_TK[tok, slot, None]
        y_TD.index_add_(0, tok, out_TD.to(y_TD.dtype))
    return adapter.make_output(block, y_TD, route, x.shape), route


def hidden(seed=1, batch=2, seq=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, D, generator=g).to(dtype)


def block_logits(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Router logits as the unpatched block computes them."""
    x_TD = x.reshape(-1, D)
    out = block.gate(x_TD)
    return out[0] if isinstance(out, tuple) else out


BLOCKS = {
    "mixtral-5x": (lambda: tiny_mixtral().model.layers[0].mlp, HFFusedExpertsAdapter),
    "qwen3-5x-norm": (lambda: tiny_qwen3(norm_topk_prob=True).model.layers[1].mlp, None),
    "qwen3-5x-nonorm": (lambda: tiny_qwen3(norm_topk_prob=False).model.layers[0].mlp, None),
    "olmoe-5x": (lambda: tiny_olmoe().model.layers[0].mlp, HFFusedExpertsAdapter),
    "mixtral-4x": (lambda: Mixtral4xBlock().eval(), HFModuleListAdapter),
    "qwen3-4x-norm": (lambda: Qwen3Moe4xBlock(norm_topk_prob=True).eval(), None),
    "qwen3-4x-nonorm": (lambda: Qwen3Moe4xBlock(norm_topk_prob=False).eval(), None),
    "user-fused": (lambda: UserFusedBlock(), HFFusedExpertsAdapter),
    "user-fused-transposed": (lambda: UserFusedBlock(transposed=True), HFFusedExpertsAdapter),
}


def make_block(name: str) -> tuple[nn.Module, type]:
    factory, cls = BLOCKS[name]
    torch.manual_seed(0)
    block = factory()
    if cls is None:
        cls = HFFusedExpertsAdapter if "5x" in name else HFModuleListAdapter
    return block, cls


def block_output(out):
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------------
# Equivalence.


@pytest.mark.parametrize("name", list(BLOCKS))
def test_reference_combine_matches_block(name):
    block, cls = make_block(name)
    adapter = find_adapter(block)
    assert isinstance(adapter, cls), f"got {type(adapter).__name__}, want {cls.__name__}"
    x = hidden()
    with torch.no_grad():
        want = block(x.clone())
        got, route = reference_combine(adapter, block, x.clone())
        want_logits = block_logits(block, x)
    assert type(got) is type(want), f"got output type {type(got)}, want {type(want)}"
    torch.testing.assert_close(block_output(got), block_output(want), **TOL)
    logits = route.extra[0] if isinstance(route.extra, tuple) else route.extra
    torch.testing.assert_close(logits, want_logits, **TOL)
    if isinstance(want, tuple):  # 4.x returns (hidden_states, router_logits)
        assert len(got) == 2
        torch.testing.assert_close(got[1], want[1], **TOL)
    assert route.topk_ids_TK.dtype == torch.int64


@pytest.mark.parametrize("name", ["mixtral-5x", "qwen3-5x-norm", "mixtral-4x", "qwen3-4x-norm"])
def test_gradients_match_block(name):
    """Autograd through spec.forward reaches the same expert and router gradients."""
    block, _ = make_block(name)
    adapter = find_adapter(block)
    x = hidden(seed=4)
    block_output(block(x.clone())).square().sum().backward()
    want = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    got_out, _ = reference_combine(adapter, block, x.clone())
    block_output(got_out).square().sum().backward()
    for n, p in block.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-5, rtol=1e-5, msg=f"grad of {n}")


@pytest.mark.parametrize("name", ["mixtral-5x", "mixtral-4x"])
def test_training_jitter_is_reproduced(name):
    if name == "mixtral-5x":
        block = tiny_mixtral(router_jitter_noise=0.2).model.layers[0].mlp
    else:
        block = Mixtral4xBlock(jitter=0.2)
    block.train()
    adapter = find_adapter(block)
    x = hidden(seed=5)
    with torch.no_grad():
        torch.manual_seed(11)
        want = block_output(block(x.clone()))
        torch.manual_seed(11)
        got, _ = reference_combine(adapter, block, x.clone())
        no_jitter = block_output(block.eval()(x.clone()))
    torch.testing.assert_close(block_output(got), want, **TOL)
    assert not torch.allclose(want, no_jitter), "jitter had no effect; the test cannot fail"


@pytest.mark.parametrize(
    ("name", "weight_dtype"),
    [
        ("mixtral-5x", torch.float32),  # the 5.x Mixtral router keeps fp32 weights
        ("qwen3-5x-norm", torch.bfloat16),  # Qwen3 casts them back to the logits dtype
        ("mixtral-4x", torch.bfloat16),  # 4.x casts them to the hidden states' dtype
        ("qwen3-4x-nonorm", torch.bfloat16),
    ],
)
def test_bf16_routing_dtype(name, weight_dtype):
    block, _ = make_block(name)
    block = block.to(torch.bfloat16)
    adapter = find_adapter(block)
    x = hidden(seed=6, dtype=torch.bfloat16)
    with torch.no_grad():
        want = block_output(block(x.clone()))
        got, route = reference_combine(adapter, block, x.clone())
    assert route.topk_weights_TK.dtype == weight_dtype
    assert block_output(got).dtype == torch.bfloat16
    torch.testing.assert_close(block_output(got), want, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# Whole 5.x models: a block driven through the adapter keeps the logits, the router logits that
# transformers records by hook on the router, the aux loss and the gradients.


def _adapter_forward(adapter, block):
    def forward(*args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        out, _ = reference_combine(adapter, block, x)
        return out

    return forward


@pytest.mark.parametrize("make", [tiny_mixtral, tiny_qwen3], ids=["mixtral", "qwen3"])
def test_model_outputs_and_aux_loss_survive_patching(make):
    ref, model = make(), make()
    blocks = [m for m in model.modules() if find_adapter(m) is not None]
    assert len(blocks) == 2, f"got {len(blocks)} MoE blocks, want 2"
    for b in blocks:
        b.forward = _adapter_forward(find_adapter(b), b)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(8))
    outs = [
        m(input_ids=ids, labels=ids, output_router_logits=True) for m in (ref, model)
    ]  # loss includes router_aux_loss_coef * aux_loss
    want, got = outs
    assert len(got.router_logits) == 2, f"got {len(got.router_logits)} router logits, want 2"
    for g, w in zip(got.router_logits, want.router_logits, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    torch.testing.assert_close(got.aux_loss, want.aux_loss, **TOL)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    want.loss.backward()
    got.loss.backward()
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[n].grad, atol=1e-6, rtol=1e-5, msg=n)


# ---------------------------------------------------------------------------------------------
# Removing and restoring expert weights.


@pytest.mark.parametrize("name", list(BLOCKS))
def test_remove_and_set_expert_params(name):
    block, _ = make_block(name)
    adapter = find_adapter(block)
    x = hidden(seed=9)
    with torch.no_grad():
        want = block_output(block(x.clone()))
    before = {n: tuple(p.shape) for n, p in block.named_parameters()}
    spec = adapter.expert_spec(block)
    saved = [tuple(t.detach().clone() for t in p) for p in adapter.get_expert_params(block)]
    expert_ids = {
        id(t._base if t._base is not None else t)
        for p in adapter.get_expert_params(block)
        for t in p
    }

    adapter.remove_expert_params(block)
    left = [n for n, p in block.named_parameters() if id(p) in expert_ids]
    assert left == [], f"expert parameters still on the block: {left}"
    assert [n for n, _ in block.named_parameters()] == [
        n for n in before if "gate" in n.split(".")[0]
    ]
    assert all("experts" not in k for k in block.state_dict()), "expert weights in state_dict"
    assert adapter.matches(block), "a block with removed experts is no longer recognised"
    assert adapter.expert_spec(block).shapes == spec.shapes
    with pytest.raises(ValueError, match="removed by remove_expert_params"):
        adapter.get_expert_params(block)
    with pytest.raises(ValueError, match="already removed"):
        adapter.remove_expert_params(block)

    adapter.set_expert_params(block, saved)
    assert {n: tuple(p.shape) for n, p in block.named_parameters()} == before
    with torch.no_grad():
        torch.testing.assert_close(block_output(block(x.clone())), want, **TOL)


def test_set_expert_params_in_place_keeps_parameter_identity():
    block, _ = make_block("mixtral-5x")
    adapter = find_adapter(block)
    gu = block.experts.gate_up_proj
    new = [tuple(torch.zeros_like(t) for t in p) for p in adapter.get_expert_params(block)]
    adapter.set_expert_params(block, new)
    assert block.experts.gate_up_proj is gu
    assert torch.count_nonzero(gu) == 0


def test_remove_from_whole_model_hides_experts_from_optimizer():
    model = tiny_qwen3()
    n_before = sum(p.numel() for p in model.parameters())
    expert_numel = 0
    for m in model.modules():
        a = find_adapter(m)
        if a is not None:
            expert_numel += E * a.expert_spec(m).numel
            a.remove_expert_params(m)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "experts" in n], names
    assert sum(p.numel() for p in model.parameters()) == n_before - expert_numel
    assert expert_numel == 2 * E * (2 * INTER * D + D * INTER)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (lambda ok: ok[:-1], "weights for 3 experts, the block has 4"),
        (lambda ok: [ok[0][:1]] + ok[1:], r"params\[0\] must be a tuple of 2 tensors"),
        (
            lambda ok: [(ok[0][0][:, :-1], ok[0][1])] + ok[1:],
            r"params\[0\]\.gate_up_proj has shape",
        ),
        (lambda ok: torch.zeros(3), "must be a sequence of 4 per-expert tuples"),
        (lambda ok: [(ok[0][0], "w")] + ok[1:], r"params\[0\]\.down_proj is str"),
    ],
    ids=["count", "arity", "shape", "tensor", "type"],
)
def test_set_expert_params_rejects_bad_weights(params, match):
    block, _ = make_block("mixtral-5x")
    adapter = find_adapter(block)
    ok = [tuple(t.detach().clone() for t in p) for p in adapter.get_expert_params(block)]
    with pytest.raises(ValueError, match=match):
        adapter.set_expert_params(block, params(ok))


def test_set_expert_params_names_modulelist_fields():
    block, _ = make_block("mixtral-4x")
    adapter = find_adapter(block)
    ok = [tuple(t.detach().clone() for t in p) for p in adapter.get_expert_params(block)]
    bad = [(ok[0][0], ok[0][1], ok[0][2].T)] + ok[1:]
    with pytest.raises(ValueError, match=r"params\[0\]\.w2 has shape \(64, 32\), want \(32, 64\)"):
        adapter.set_expert_params(block, bad)


@pytest.mark.parametrize("name", ["mixtral-5x", "qwen3-4x-norm"])
def test_bad_hidden_states_are_named(name):
    block, _ = make_block(name)
    adapter = find_adapter(block)
    with pytest.raises(
        ValueError, match=r"hidden_states is \(2, 5, 31\), want .*\(batch, seq, 32\)"
    ):
        adapter.flatten_input(block, (torch.zeros(2, 5, 31),), {})
    with pytest.raises(ValueError, match=r"hidden_states is NoneType"):
        adapter.flatten_input(block, (), {})
    with pytest.raises(ValueError, match=r"x_TD has shape \(2, 5, 32\), want \(tokens, 32\)"):
        adapter.route(block, torch.zeros(2, 5, D))
    assert adapter.flatten_input(block, (), {"hidden_states": hidden()}).shape == (10, D)


def test_router_with_wrong_return_structure_is_named():
    block = UserFusedBlock()
    adapter = find_adapter(block)

    class TwoOutputRouter(UserRouter):
        def forward(self, x_TD):
            return super().forward(x_TD)[:2]

    block.gate.__class__ = TwoOutputRouter
    with pytest.raises(ValueError, match=r"block\.gate returned tuple, want \(router_logits_TE"):
        adapter.route(block, torch.zeros(3, D))


# ---------------------------------------------------------------------------------------------
# Detection by structure.


def _biased_experts_block():
    b = Qwen3Moe4xBlock()
    b.experts[2].up_proj = nn.Linear(D, INTER, bias=True)
    return b


def _mixed_activation_block():
    b = Mixtral4xBlock()
    b.experts[1].act_fn = nn.GELU()
    return b


def _custom_gating_block():
    b = UserFusedBlock()

    class Gated(UserExperts):
        def _apply_gate(self, gate_up):
            return gate_up[..., ::2] * gate_up[..., 1::2]

    b.experts.__class__ = Gated
    return b


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: tiny_qwen3().model.layers[0].mlp.experts, "children are"),
        (lambda: tiny_qwen3(mlp_only_layers=[0]).model.layers[0].mlp, "children are"),
        (lambda: tiny_mixtral().model.layers[0], "children are"),
        (lambda: nn.Linear(D, D), "children are"),
        (_biased_experts_block, r"experts\[2\] has biased projections"),
        (_mixed_activation_block, r"experts\[1\] uses a different activation"),
        (_custom_gating_block, "overrides _apply_gate"),
    ],
    ids=[
        "experts-alone",
        "dense-mlp",
        "decoder-layer",
        "linear",
        "biased-experts",
        "mixed-activation",
        "custom-gating",
    ],
)
def test_unsupported_modules_are_not_matched(make, reason):
    torch.manual_seed(0)
    module = make()
    assert find_adapter(module) is None, f"{type(module).__name__} matched {find_adapter(module)}"
    reasons = [HFFusedExpertsAdapter().why_not(module), HFModuleListAdapter().why_not(module)]
    assert any(r is not None and re.search(reason, r) for r in reasons), reasons


def test_methods_on_a_foreign_block_raise_named_errors():
    block = Mixtral4xBlock()
    with pytest.raises(
        ValueError, match=r"hf-fused-experts\.expert_spec: Mixtral4xBlock is not a fused"
    ):
        HFFusedExpertsAdapter().expert_spec(block)
    with pytest.raises(ValueError, match=r"hf-modulelist-experts\.num_experts: UserFusedBlock"):
        HFModuleListAdapter().num_experts(UserFusedBlock())


def test_route_result_is_the_contract_type():
    block, _ = make_block("qwen3-5x-nonorm")
    r = find_adapter(block).route(block, hidden().reshape(-1, D))
    assert isinstance(r, RouteResult)
    # without renormalisation the top-2 weights are raw softmax probabilities (sum < 1)
    assert torch.all(r.topk_weights_TK.sum(-1) < 1.0)


# ---------------------------------------------------------------------------------------------
# Grouped execution and side-effect-free routing, as the engine uses them.


@pytest.mark.parametrize("name", list(BLOCKS))
def test_grouped_forward_matches_per_expert_forward(name):
    """grouped_forward over slots (a replica, an empty group) equals spec.forward per slot."""
    block, _ = make_block(name)
    adapter = find_adapter(block)
    spec = adapter.expert_spec(block)
    params = adapter.get_expert_params(block)
    slots_S, rows_S = [2, 0, 2, 3], [3, 0, 5, 2]
    x_MD = torch.randn(sum(rows_S), D, generator=torch.Generator().manual_seed(12))
    stacked = tuple(
        torch.stack([params[e][i].detach() for e in slots_S]) for i in range(len(spec.names))
    )
    offs_S = torch.cumsum(torch.tensor(rows_S), 0).to(torch.int32)
    with torch.no_grad():
        got = adapter.grouped_forward(block, x_MD, offs_S, stacked)
        want, start = [], 0
        for e, n in zip(slots_S, rows_S, strict=True):
            want.append(spec.forward(x_MD[start : start + n], *params[e]))
            start += n
    torch.testing.assert_close(got, torch.cat(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_mixtral, tiny_qwen3], ids=["mixtral", "qwen3"])
def test_route_without_hooks_leaves_no_trace(make):
    """A look at the routing from a pre-hook (observe mode) must not add recorded logits."""
    ref, model = make(), make()
    seen = []

    def peek(block, args, kwargs):
        adapter = find_adapter(block)
        with torch.no_grad():
            r = adapter.route(block, adapter.flatten_input(block, args, kwargs), hooks=False)
        seen.append(r.topk_ids_TK)

    for m in model.modules():
        if find_adapter(m) is not None:
            m.register_forward_pre_hook(peek, with_kwargs=True)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(13))
    want = ref(input_ids=ids, output_router_logits=True)
    got = model(input_ids=ids, output_router_logits=True)
    assert len(seen) == 2
    assert len(got.router_logits) == len(want.router_logits) == 2
    for g, w in zip(got.router_logits, want.router_logits, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    x_TD = torch.randn(4, D)
    block = next(m for m in model.modules() if find_adapter(m) is not None)
    a = find_adapter(block)
    torch.testing.assert_close(
        a.route(block, x_TD, hooks=False).extra[0], a.route(block, x_TD).extra[0]
    )

    # The hazard hooks=False avoids: a hooked look records every layer's logits twice.
    loud = make()

    def hooked_peek(block, args, kwargs):
        find_adapter(block).route(block, args[0].reshape(-1, D))

    for m in loud.modules():
        if find_adapter(m) is not None:
            m.register_forward_pre_hook(hooked_peek, with_kwargs=True)
    assert len(loud(input_ids=ids, output_router_logits=True).router_logits) == 4
