"""Adapter for fused-experts MoE blocks, composed from pieces (``swiftmoe.adapters.pieces``).

Takes transformers 5.x Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE, DeepSeek-V2/V3, GLM-4.5 (GLM4-MoE),
GPT-OSS and Llama 4 blocks, and any block of the same structure whatever its class is called:

* a router child ``gate`` or ``router`` with a 2-D ``weight`` (E, D) and an int ``top_k``,
  whose forward takes the hidden states alone;
* an ``experts`` child holding ``gate_up_proj`` and ``down_proj`` (3-D, either orientation),
  optionally ``gate_up_proj_bias`` and ``down_proj_bias``, and nothing else;
* optionally shared experts (``shared_experts``, ``shared_expert`` or ``shared_mlp``) and a
  ``<name>_gate`` ``nn.Linear(D, 1)`` scaling them by its sigmoid;
* no other child, and no parameter or buffer of its own.

How the block uses them is read once per block (:func:`block_form`), before any collective:
the router is probed for its return structure, then the block's own forward runs on a
three-token probe with the experts replaced by a stand-in, which shows what the block hands the
router, the experts and the shared experts and which router outputs it returns. Where the
weights are real (not ``meta``), the block's output on a random probe is then compared with
the output the pieces compute, so a block that does something else is refused, with the
reason, instead of being accepted and trained wrong. The probes run without hooks and with the
RNG state restored.

Routing calls the block's own router module and reuses its outputs, so every routing detail
(sigmoid or softmax scores, a score-correction bias used for selection only, group-limited
top-k, ``norm_topk_prob``, a routed scaling factor, a router bias, a softmax over the selected
logits, fp32 islands) is exact, and hooks on the router (transformers records
``router_logits`` for the aux loss with one) see one call per block forward.

Shape legend: B batch, S sequence, T tokens, D model dim, I expert intermediate dim, E experts,
K top-k.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swiftmoe._checks import is_int, is_number

from . import _hf_common as hf
from . import pieces
from .base import ExpertSpec, RouteResult

__all__ = ["FusedForm", "HFFusedExpertsAdapter", "block_form", "fused_mismatch"]

_WEIGHTS = ("gate_up_proj", "down_proj")
_BIASED = ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")
#: Where a block keeps what the probes found (FusedForm); survives remove_expert_params.
FORM_ATTR = "_swiftmoe_fused_form"
#: Buffers the engine itself puts on a block.
_ENGINE_BUFFERS = ("swiftmoe_loads_E", "swiftmoe_dropped")


@dataclass(frozen=True)
class FusedForm:
    """What a fused-experts block is made of and how its forward uses the pieces.

    Attributes:
        router: the router's child name; ``dense``: it returns ``(scores_TE, logits_TE)`` and
            the top-k scores scale the expert input (else ``(logits, weights_TK, ids_TK)``).
        dim, num_experts, top_k: D, E, K.
        transposed, biased: the experts' weight orientation and biases.
        custom_gate: the experts' own ``_apply_gate`` gates (else ``act_fn(gate) * up``).
        decorated: transformers' experts (``_experts_implementation`` decides precision).
        shared, shared_gate: child names of the shared experts and their gate, or None.
        shared_flat: the block gives the shared experts the (T, D) view (else its input).
        out_flat: the block returns (T, D) hidden states (else the input's shape).
        out_router: indices of router outputs the block returns after the hidden states
            (None: it returns the hidden states alone).
        shapes: per-expert parameter shapes, in spec order.
    """

    router: str
    dense: bool
    dim: int
    num_experts: int
    top_k: int
    transposed: bool
    biased: bool
    custom_gate: bool
    decorated: bool
    shared: str | None
    shared_gate: str | None
    shared_flat: bool
    out_flat: bool
    out_router: tuple[int, ...] | None
    shapes: tuple[torch.Size, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return _BIASED if self.biased else _WEIGHTS


class _Refused(Exception):
    """A piece is missing: ``piece`` names it, ``reason`` says why."""

    def __init__(self, piece: str, reason: str) -> None:
        super().__init__(f"{piece}: {reason}")


# ---- static structure ----------------------------------------------------------------------


def _children(block: nn.Module) -> tuple[str, nn.Module, nn.Module, str | None, str | None]:
    kids = dict(block.named_children())
    routers = [n for n in pieces.ROUTER_NAMES if n in kids]
    if len(routers) != 1 or "experts" not in kids:
        raise _Refused(
            "block",
            f"children are {sorted(kids)}, want a router ('gate' or 'router'), 'experts' and "
            "optionally shared experts",
        )
    shared = next((n for n in pieces.SHARED_NAMES if n in kids), None)
    gate = f"{shared}_gate" if shared and f"{shared}_gate" in kids else None
    known = {routers[0], "experts", shared, gate} - {None}
    extra = sorted(set(kids) - known)
    if extra:
        raise _Refused(
            "block",
            f"children {extra} besides the router, 'experts' and shared experts: the block "
            "computes something SwiftMoE does not know",
        )
    own = [n for n, p in block._parameters.items() if p is not None]
    bufs = [n for n, b in block._buffers.items() if b is not None and n not in _ENGINE_BUFFERS]
    if own or bufs:
        raise _Refused("block", f"the block holds tensors of its own ({sorted(own + bufs)})")
    return routers[0], kids[routers[0]], kids["experts"], shared, gate


def _router_static(name: str, router: nn.Module) -> tuple[int, int, int]:
    if type(router).forward is nn.Linear.forward:
        raise _Refused(
            "router",
            f"{name} is a plain nn.Linear returning logits (the per-expert ModuleList form)",
        )
    w = getattr(router, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise _Refused("router", f"{name} has no 2-D weight of shape (experts, hidden)")
    num_e, dim = int(w.shape[0]), int(w.shape[1])
    k = getattr(router, "top_k", None)
    if not is_int(k, 1, num_e):
        raise _Refused("router", f"{name}.top_k is {k!r}, want an int in [1, {num_e}]")
    try:
        sig = inspect.signature(router.forward)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = [
            p
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        required = [p.name for p in params[1:] if p.default is p.empty]
        if not params or required:
            raise _Refused(
                "router",
                f"a router that takes arguments the adapter does not know ({name}.forward"
                f"{sig}); SwiftMoE calls it with the hidden states alone",
            )
    return num_e, dim, int(k)


def _experts_static(ex: nn.Module, num_e: int, dim: int) -> tuple[bool, bool, bool, bool]:
    """(transposed, biased, custom_gate, decorated) of an experts module, or _Refused."""
    if isinstance(ex, nn.ModuleList):
        raise _Refused("experts", "experts is an nn.ModuleList (the per-expert form)")
    decorated = hasattr(ex, "has_gate")
    names = {n for n, _ in ex.named_parameters()}
    rec_shapes = None
    if not names:  # removed by remove_expert_params: the record describes them
        rec = getattr(ex, "_swiftmoe_shapes", None)
        if rec is None:
            raise _Refused("experts", "experts holds no gate_up_proj and down_proj parameters")
        names, rec_shapes = set(rec), rec
    biased = names == set(_BIASED)
    if names != set(_WEIGHTS) and not biased:
        raise _Refused(
            "experts",
            f"experts holds parameters {sorted(names)}, want gate_up_proj and down_proj "
            "(and optionally gate_up_proj_bias and down_proj_bias)",
        )
    if decorated:
        for flag, want in (
            ("has_gate", True),
            ("has_post_expert_norm", False),
            ("_is_expert_parallel", False),
        ):
            if getattr(ex, flag, want) != want:
                raise _Refused(
                    "experts", f"experts.{flag} is {getattr(ex, flag)!r}; only {want!r} is known"
                )
        if bool(getattr(ex, "has_bias", False)) != biased:
            raise _Refused(
                "experts",
                f"experts.has_bias is {ex.has_bias!r} but biases are "
                + ("present" if biased else "absent"),
            )
        impl = _implementation(ex)
        if impl not in pieces.KNOWN_IMPLEMENTATIONS:
            raise _Refused(
                "experts",
                f"experts implementation {impl!r} is not reproduced; call "
                "model.set_experts_implementation('grouped_mm') (or 'eager')",
            )
    apply_gate = getattr(type(ex), "_apply_gate", None)
    custom_gate = apply_gate is not None and (
        getattr(apply_gate, "__name__", "") != "_default_apply_gate"
    )
    if custom_gate:
        original = getattr(type(ex).forward, "__wrapped__", None)
        if not decorated or original is None or "_apply_gate" not in original.__code__.co_names:
            raise _Refused(
                "experts",
                "experts overrides _apply_gate (a custom gating) and its forward does not "
                "call it in every implementation, so SwiftMoE cannot reproduce it",
            )
    elif decorated and not getattr(ex, "is_concatenated", True):
        raise _Refused(
            "experts",
            "experts interleaves gate and up (is_concatenated=False) with the default gate",
        )
    elif not callable(getattr(ex, "act_fn", None)):
        raise _Refused("experts", "experts has no callable act_fn")
    if rec_shapes is not None:
        gu, dn = rec_shapes["gate_up_proj"], rec_shapes["down_proj"]
        e_count = None
    else:
        gu_t, dn_t = ex.gate_up_proj, ex.down_proj
        if gu_t.dim() != 3 or dn_t.dim() != 3:
            raise _Refused("experts", "gate_up_proj and down_proj are not 3-D (E, ., .)")
        gu, dn = tuple(gu_t.shape[1:]), tuple(dn_t.shape[1:])
        e_count = (int(gu_t.shape[0]), int(dn_t.shape[0]))
    if e_count is not None and e_count != (num_e, num_e):
        raise _Refused("experts", f"experts hold {e_count[0]} experts, the router scores {num_e}")
    plain = gu[1] == dim and gu[0] % 2 == 0 and tuple(dn) == (dim, gu[0] // 2)
    trans = gu[0] == dim and gu[1] % 2 == 0 and tuple(dn) == (gu[1] // 2, dim)
    want_t = getattr(ex, "is_transposed", None)
    if want_t is not None:
        ok = trans if want_t else plain
        transposed = bool(want_t)
    else:
        ok, transposed = plain or trans, trans
    if not ok:
        raise _Refused(
            "experts",
            f"expert shapes gate_up {tuple(gu)}, down {tuple(dn)} do not fit hidden size {dim}",
        )
    return transposed, biased, custom_gate, decorated


def _implementation(ex: nn.Module) -> str | None:
    cfg = getattr(ex, "config", None)
    return getattr(cfg, "_experts_implementation", None) or "eager"


def _shared_gate_static(gate: nn.Module | None, name: str | None, dim: int) -> None:
    if gate is None:
        return
    if not isinstance(gate, nn.Linear) or (gate.in_features, gate.out_features) != (dim, 1):
        raise _Refused(
            "shared experts",
            f"{name} is not an nn.Linear({dim}, 1): a shared-expert gate SwiftMoE does not know",
        )


# ---- probes ---------------------------------------------------------------------------------


class _Spy(nn.Module):
    """Stands in for a child during a probe: records its calls; runs the child's forward
    without hooks (or ``stub``); attributes are the child's."""

    def __init__(self, inner: nn.Module, stub=None) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_stub", stub)
        object.__setattr__(self, "calls", [])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = (self._stub or self._inner.forward)(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_inner"), name)


def _probe_device(block: nn.Module, router: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a probe input: the experts' (the router may be kept in fp32)."""
    w = getattr(block.experts, "gate_up_proj", None)
    if not isinstance(w, torch.Tensor):
        w = router.weight
    return w.device, (w.dtype if w.dtype.is_floating_point else torch.float32)


def _run_unhooked(block: nn.Module, x: torch.Tensor, spies: dict[str, _Spy]) -> Any:
    """``type(block).forward(block, x)`` with ``spies`` in place of those children (they run
    the children without hooks), under no_grad with the RNG state restored afterwards."""
    saved = {n: block._modules[n] for n in spies}
    try:
        block._modules.update(spies)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return type(block).forward(block, x)
    finally:
        block._modules.update(saved)


def _classify_router(out: Any, T: int, E: int, K: int) -> bool:
    """True for a dense router, False for a top-k one; _Refused otherwise."""
    if isinstance(out, tuple) and len(out) == 3 and all(isinstance(t, torch.Tensor) for t in out):
        logits, w, ids = out
        if (
            not ids.dtype.is_floating_point
            and tuple(ids.shape) == (T, K)
            and tuple(w.shape) == (T, K)
        ):
            return False
    if isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        if tuple(out[0].shape) == tuple(out[1].shape) == (T, E):
            return True
    got = (
        "(" + ", ".join(f"{type(t).__name__}{tuple(getattr(t, 'shape', ()))}" for t in out) + ")"
        if isinstance(out, tuple)
        else type(out).__name__
    )
    raise _Refused(
        "router",
        f"the router returned {got}, want (logits_TE, weights_TK, ids_TK) or "
        "(scores_TE, logits_TE)",
    )


def _structure_probe(block, rname, router, shared, E, K, D) -> dict:
    """Run the block's own forward on 3 tokens with spies on its children; what it did."""
    device, dtype = _probe_device(block, router)
    x = torch.zeros(1, 3, D, device=device, dtype=dtype)
    if device.type != "meta":
        x = torch.randn(1, 3, D, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            direct = router.forward(x.reshape(-1, D))
    except Exception as e:
        raise _Refused(
            "router", f"calling the router on a probe raised {type(e).__name__}: {e}"
        ) from e
    dense = _classify_router(direct, 3, E, K)

    def stub(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        return torch.zeros_like(first)

    spies = {rname: _Spy(router), "experts": _Spy(block.experts, stub)}
    if shared is not None:
        spies[shared] = _Spy(getattr(block, shared))
    try:
        out = _run_unhooked(block, x, spies)
    except Exception as e:
        raise _Refused(
            "block",
            f"its forward, called with the hidden states alone, raised {type(e).__name__}: {e}",
        ) from e
    return {"x": x, "dense": dense, "out": out, **{n: s.calls for n, s in spies.items()}}


def _read_structure(probe: dict, rname: str, shared: str | None, E: int, D: int) -> dict:
    x, dense = probe["x"], probe["dense"]
    T = x.shape[0] * x.shape[1]
    for name in [rname, "experts"] + ([shared] if shared else []):
        if len(probe[name]) != 1:
            raise _Refused("block", f"its forward calls {name} {len(probe[name])} times, want once")
    r_args, r_kw, r_out = probe[rname][0]
    if r_kw or len(r_args) != 1:
        raise _Refused("router", "the block calls its router with more than the hidden states")
    e_args, e_kw, _ = probe["experts"][0]
    if dense:
        if e_kw or len(e_args) != 1 or tuple(e_args[0].shape) != (E * T, D):
            raise _Refused(
                "experts",
                "the router returns dense scores but the block does not run every expert on "
                "the scaled input",
            )
    else:
        given = list(e_args) + list(e_kw.values())
        if len(given) != 3 or given[1] is not r_out[2] or given[2] is not r_out[1]:
            raise _Refused(
                "experts",
                "the block does not hand the experts the router's ids and weights unchanged",
            )
    shared_flat = False
    if shared:
        s_args, s_kw, _ = probe[shared][0]
        s_in = s_args[0] if s_args else next(iter(s_kw.values()))
        if s_kw or len(s_args) != 1 or s_in.shape[-1] != D:
            raise _Refused(
                "shared experts", "the block calls them with more than the hidden states"
            )
        shared_flat = s_in.dim() == 2 and x.dim() != 2
    out = probe["out"]
    extra: tuple[int, ...] | None = None
    hidden = out
    if isinstance(out, tuple):
        hidden, rest = out[0], out[1:]
        idx = []
        for t in rest:
            hit = [i for i, r in enumerate(r_out) if r is t]
            if not hit:
                raise _Refused(
                    "output",
                    "the block returns something besides its hidden states and router outputs",
                )
            idx.append(hit[0])
        extra = tuple(idx)
    if not isinstance(hidden, torch.Tensor) or tuple(hidden.shape) not in (
        tuple(x.shape),
        (T, D),
    ):
        raise _Refused("output", "the block's output is not its hidden states (or a tuple of them)")
    return {
        "shared_flat": shared_flat,
        "out_flat": tuple(hidden.shape) == (T, D) and x.dim() != 2,
        "out_router": extra,
    }


def block_form(block: nn.Module) -> FusedForm:
    """The block's :class:`FusedForm` (cached on the block after the first success), or
    _Refused naming the missing piece."""
    rname, router, ex, shared, sgate = _children(block)
    E, D, K = _router_static(rname, router)
    transposed, biased, custom_gate, decorated = _experts_static(ex, E, D)
    _shared_gate_static(getattr(block, sgate) if sgate else None, sgate, D)
    j = getattr(block, "jitter_noise", 0.0)
    if not is_number(j):
        raise _Refused("block", f"jitter_noise is {j!r}, want a number")
    cached = block.__dict__.get(FORM_ATTR)
    if isinstance(cached, FusedForm) and (cached.router, cached.shared) == (rname, shared):
        return cached
    probe = _structure_probe(block, rname, router, shared, E, K, D)
    seen = _read_structure(probe, rname, shared, E, D)
    shapes = (torch.Size(ex.gate_up_proj.shape[1:]), torch.Size(ex.down_proj.shape[1:]))
    if biased:
        shapes = (shapes[0], ex.gate_up_proj_bias.shape[1:], shapes[1], ex.down_proj_bias.shape[1:])
    form = FusedForm(
        router=rname,
        dense=probe["dense"],
        dim=D,
        num_experts=E,
        top_k=K,
        transposed=transposed,
        biased=biased,
        custom_gate=custom_gate,
        decorated=decorated,
        shared=shared,
        shared_gate=sgate,
        shared_flat=seen["shared_flat"],
        out_flat=seen["out_flat"],
        out_router=seen["out_router"],
        shapes=tuple(torch.Size(s) for s in shapes),
    )
    block.__dict__[FORM_ATTR] = form  # the value probe drives the adapter, which reads it
    if probe["x"].device.type != "meta":
        try:
            _value_probe(block, form)
        except BaseException:
            del block.__dict__[FORM_ATTR]
            raise
    return form


def _value_probe(block: nn.Module, form: FusedForm) -> None:
    """The unpatched block against the pieces on a random probe; _Refused when they differ."""
    router = getattr(block, form.router)
    device, dtype = _probe_device(block, router)
    x = torch.randn(2, 3, form.dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    adapter = HFFusedExpertsAdapter()
    names = [form.router, "experts"] + [n for n in (form.shared, form.shared_gate) if n]
    want = _run_unhooked(block, x.clone(), {n: _Spy(block._modules[n]) for n in names})
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        got = reference_forward(adapter, block, form, x.clone())
    want_t = want if isinstance(want, tuple) else (want,)
    got_t = got if isinstance(got, tuple) else (got,)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for w, g in zip(want_t, got_t, strict=True):
        if w.shape != g.shape:
            raise _Refused(
                "output", f"the pieces give shape {tuple(g.shape)}, the block {tuple(w.shape)}"
            )
        scale = max(float(w.abs().max()), 1e-6)
        diff = float((w.float() - g.float()).abs().max())
        if diff > tol * scale:
            raise _Refused(
                "block",
                f"its output differs from what its router, experts and shared experts compute "
                f"(max difference {diff:.3g} of {scale:.3g} on a probe): its forward does more "
                "than SwiftMoE knows",
            )


def reference_forward(adapter, block: nn.Module, form: FusedForm, x: torch.Tensor) -> Any:
    """The block's output built from the pieces alone (per expert, in one process)."""
    x_TD = adapter.flatten_input(block, (x,), {})
    route = adapter.route(block, x_TD, hooks=False)
    spec = adapter.expert_spec(block)
    params = adapter.get_expert_params(block)
    T, K = route.topk_ids_TK.shape
    y_TKD = None
    x_A = x_TD.repeat_interleave(K, dim=0)
    if route.input_scale_TK is not None:
        x_A = x_A * route.input_scale_TK.reshape(-1, 1)
    ids_A = route.topk_ids_TK.reshape(-1)
    outs = [None] * (T * K)
    for e in range(form.num_experts):
        rows = (ids_A == e).nonzero().flatten()
        if rows.numel():
            y = spec.forward(x_A[rows], *params[e])
            for i, r in enumerate(rows.tolist()):
                outs[r] = y[i]
    y_TKD = torch.stack(outs).view(T, K, -1)
    y_TD = adapter.combine(block, y_TKD, route, x_TD)
    return adapter.block_output(block, y_TD, route, x)


def fused_mismatch(block: nn.Module) -> str | None:
    """Why ``block`` is not a fused-experts MoE block ("piece: reason"), or None when it is."""
    try:
        block_form(block)
    except _Refused as e:
        return str(e)
    return None


class HFFusedExpertsAdapter(hf.StructuralAdapter):
    """Fused-experts blocks: a router module, stacked ``experts`` weights, optional shared
    experts (see the module docstring)."""

    name = "hf-fused-experts"

    kind = "fused-experts MoE block"
    mismatch = staticmethod(fused_mismatch)

    def claims(self, module: nn.Module) -> bool:
        kids = dict(module.named_children())
        ex = kids.get("experts")
        return ex is not None and not isinstance(ex, nn.ModuleList)

    def _form(self, block: nn.Module, what: str) -> FusedForm:
        try:
            return block_form(block)
        except _Refused as e:
            raise ValueError(
                f"{self.name}.{what}: {hf.block_label(block)} is not a {self.kind}: {e}; use "
                "swiftmoe.adapters.find_adapter(block) to pick its adapter"
            ) from None

    def num_experts(self, block: nn.Module) -> int:
        return self._form(block, "num_experts").num_experts

    def top_k(self, block: nn.Module) -> int:
        return self._form(block, "top_k").top_k

    def _gate_fn(self, block: nn.Module, form: FusedForm):
        ex = block.experts
        if form.custom_gate:
            return ex._apply_gate
        act = ex.act_fn

        def gate(h: torch.Tensor) -> torch.Tensor:
            g, u = h.chunk(2, dim=-1)
            return act(g) * u

        return gate

    def expert_spec(self, block: nn.Module) -> ExpertSpec:
        form = self._form(block, "expert_spec")
        ex = block.experts
        decorated = form.decorated

        def weights_dtype_gemm() -> bool:
            return decorated and _implementation(ex) == "grouped_mm"

        fwd = pieces.fused_expert(
            ex, form.transposed, form.biased, self._gate_fn(block, form), weights_dtype_gemm
        )
        return ExpertSpec(names=form.names, shapes=form.shapes, forward=fwd)

    def grouped_forward(
        self,
        block: nn.Module,
        x_MD: torch.Tensor,
        offs_S: torch.Tensor,
        stacked: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """S experts over contiguous row groups in one ``torch._grouped_mm`` per weight.

        ``stacked`` holds the S slots' weights in ``expert_spec`` order, each (S, *shape);
        ``offs_S`` (int32) the cumulative end of each group. Same math as ``spec.forward``.
        """
        form = self._form(block, "grouped_forward")
        return pieces.grouped_fused_experts(
            x_MD, offs_S, stacked, form.transposed, form.biased, self._gate_fn(block, form)
        )

    def flatten_input(self, block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """``x_TD`` of a block call, with the block's training-time input jitter applied."""
        x = args[0] if args else kwargs.get("hidden_states")
        dim = self._form(block, "flatten_input").dim
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}.flatten_input({hf.block_label(block)}): hidden_states is {got}, "
                f"want a tensor of shape (batch, seq, {dim})"
            )
        return hf.jitter_input(block, x).reshape(-1, dim)

    def route(self, block: nn.Module, x_TD: torch.Tensor, *, hooks: bool = True) -> RouteResult:
        """Run the block's router on ``x_TD``; ``extra`` is the router's whole output.

        With ``hooks`` (the default) the router is called as a module, so its forward hooks
        run: transformers records the router logits for the aux loss that way, one entry per
        call, so call it once per block forward. ``hooks=False`` runs the router's forward
        alone, for a look at the routing that must leave no trace (observe mode).
        """
        form = self._form(block, "route")
        if x_TD.dim() != 2 or x_TD.shape[1] != form.dim:
            raise ValueError(
                f"{self.name}.route({hf.block_label(block)}): x_TD has shape {tuple(x_TD.shape)}, "
                f"want (tokens, {form.dim}); flatten with flatten_input first"
            )
        router = getattr(block, form.router)
        out = router(x_TD) if hooks else router.forward(x_TD)
        want = (
            "(scores_TE, logits_TE)"
            if form.dense
            else "(router_logits_TE, topk_weights_TK, topk_ids_TK)"
        )
        if not isinstance(out, tuple) or len(out) != (2 if form.dense else 3):
            raise ValueError(
                f"{self.name}.route({hf.block_label(block)}): block.{form.router} returned "
                f"{type(out).__name__}, want {want}; register an adapter for this block type "
                "(see swiftmoe.adapters)"
            )
        if form.dense:
            scores_TE, logits_TE = out
            ids_TK = torch.topk(logits_TE, form.top_k, dim=1).indices
            scale_TK = scores_TE.gather(1, ids_TK)
            return RouteResult(ids_TK, scale_TK, extra=out, input_scale_TK=scale_TK)
        _, weights_TK, ids_TK = out
        return RouteResult(topk_ids_TK=ids_TK.long(), topk_weights_TK=weights_TK, extra=out)

    def combine(
        self, block: nn.Module, y_TKD: torch.Tensor, route: RouteResult, x_TD: torch.Tensor
    ) -> torch.Tensor:
        """The block's own sum of each token's K expert outputs (its dtypes and order)."""
        form = self._form(block, "combine")
        if form.dense:
            return pieces.combine_plain(y_TKD)
        w_TK = route.topk_weights_TK
        if form.decorated and _implementation(block.experts) != "eager":
            return pieces.combine_grouped(y_TKD, w_TK, x_TD.dtype)
        return pieces.combine_eager(y_TKD, w_TK, route.topk_ids_TK, x_TD.dtype)

    def block_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x: torch.Tensor
    ) -> Any:
        """Routed output plus the shared experts' (run on the block's input as it runs them),
        in the block's output form."""
        form = self._form(block, "block_output")
        y = y_TD if form.shared_flat else y_TD.reshape(x.shape)
        if form.shared is not None:
            gate = getattr(block, form.shared_gate) if form.shared_gate else None
            s = pieces.shared_output(getattr(block, form.shared), gate, x, form.shared_flat)
            y = y + s
        y = y.reshape(-1, form.dim) if form.out_flat else y.reshape(x.shape)
        if form.out_router is None:
            return y
        return (y, *(route.extra[i] for i in form.out_router))

    def make_output(
        self, block: nn.Module, y_TD: torch.Tensor, route: RouteResult, x_shape: torch.Size
    ) -> Any:
        """Without the input tensor: only for blocks without shared experts."""
        form = self._form(block, "make_output")
        if form.shared is not None:
            raise ValueError(
                f"{self.name}.make_output({hf.block_label(block)}): the block has shared "
                "experts, which need its input: call block_output"
            )
        return self.block_output(block, y_TD, route, torch.empty(x_shape, device="meta"))

    def get_expert_params(self, block: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        form = self._form(block, "get_expert_params")
        ex = block.experts
        if ex.gate_up_proj is None:
            raise hf.removed_error(self.name, block)
        ts = [getattr(ex, n) for n in form.names]
        return [tuple(t[e] for t in ts) for e in range(form.num_experts)]

    def remove_expert_params(self, block: nn.Module) -> None:
        """Unregister the expert weights (and biases); shapes and dtype stay on the block."""
        ex = block.experts
        form = self._form(block, "remove_expert_params")
        rec = hf.record_removal(self.name, block, self.expert_spec(block), ex.gate_up_proj)
        ex.__dict__["_swiftmoe_shapes"] = {n: tuple(getattr(ex, n).shape[1:]) for n in form.names}
        for name in form.names:
            ex.register_parameter(name, None)
        setattr(block, hf.REMOVED_ATTR, rec)

    def set_expert_params(
        self, block: nn.Module, params: Sequence[tuple[torch.Tensor, ...]]
    ) -> None:
        """Stack per-expert weights back into the experts' parameters.

        Live parameters are overwritten in place (optimizer references stay valid); removed
        ones are registered again with their original dtype, device and requires_grad.
        """
        spec = self.expert_spec(block)
        hf.check_expert_params(self.name, block, spec, self.num_experts(block), params)
        ex = block.experts
        rec = hf.removed_record(block)
        with torch.no_grad():
            for i, name in enumerate(spec.names):
                stacked = torch.stack([p[i].detach() for p in params])
                cur = getattr(ex, name)
                if cur is not None:
                    cur.copy_(stacked)
                    continue
                ex.register_parameter(name, hf.restored_param(stacked, rec))
        ex.__dict__.pop("_swiftmoe_shapes", None)
        if rec is not None:
            delattr(block, hf.REMOVED_ATTR)
