"""SwiftMoE in a torchtitan (0.3.0) job, enabled from the job's configuration.

In the job's config function (the one ``--module``/``--config`` selects), wrap the model spec::

    from swiftmoe import SwiftMoEConfig
    from swiftmoe.integrations.torchtitan import SwiftMoEConverter, enable

    def deepseek_v3_swiftmoe() -> Trainer.Config:
        config = deepseek_v3_16b()                       # any config function of yours
        config.model_spec = enable(
            model_registry("16B", converters=[SwiftMoEConverter.Config()]),
            SwiftMoEConfig(slots_per_rank=4, strategy="swiftmoe",
                           optimizer="AdamW", optimizer_kwargs={"lr": 2.2e-4}),
        )
        return config

torchtitan 0.3.0 has no converter hook after the optimizer is built (a converter only rewrites
the model config before the build), so the integration uses the seams the Trainer has:

* :class:`SwiftMoEConverter` (optional, in ``converters=[...]``): checks every ``MoE`` config
  before anything is built and refuses, with the fix, what SwiftMoE cannot drive (expert
  parallelism, Float8/MXFP8 grouped experts);
* :func:`enable` wraps the spec's ``parallelize_fn``: before torchtitan parallelizes the model
  (on ``meta``), the routed experts' weights become buffers of their module, initialised by
  ``init_weights`` exactly as before (same functions, same order, same RNG stream), so FSDP2 or
  DDP, the optimizer container and ``clip_grad_norm_`` see only the dense parameters;
* and its ``post_optimizer_build_fn``: after torchtitan's own (the load-balancing hook, which
  keeps working: the adapter keeps ``tokens_per_expert_E`` as ``MoE.forward`` does), it runs
  ``swiftmoe.replicate_`` on every model part and registers an optimizer step post-hook that
  runs SwiftMoE's expert step and remap after the dense step.

Limits: data parallelism only (tensor, context, pipeline and expert parallel degrees 1: SwiftMoE
replaces expert parallelism); the expert gradients are not in torchtitan's gradient-norm
clipping; torchtitan's checkpointer saves the dense model and optimizer, and SwiftMoE's sharded
state is saved with ``handles(model_spec)[i].state_dict()``. This module imports nothing from
torchtitan until it is used.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

from torch import nn

from swiftmoe.adapters.torchtitan import TorchtitanMoEAdapter
from swiftmoe.api import replicate_
from swiftmoe.engine.config import SwiftMoEConfig
from swiftmoe.engine.handle import SwiftMoEHandle

__all__ = ["SwiftMoEConverter", "enable", "handles", "hold_experts_out_of_parameters"]

_EXPERT_NAMES = ("w1_EFD", "w2_EDF", "w3_EFD")
_HANDLES_ATTR = "_swiftmoe_handles"
_ADAPTER = TorchtitanMoEAdapter()


def hold_experts_out_of_parameters(model: nn.Module) -> list[str]:
    """Make the routed experts' weights of every torchtitan MoE block buffers (works on
    ``meta``), initialised by ``init_weights`` as the parameters were; returns their names.

    Parallelizing and the optimizer then leave them to ``replicate_``, which takes them over.
    """
    moved = []
    for fqn, block in model.named_modules():
        if not _ADAPTER.claims(block):
            continue
        reason = _ADAPTER.why_not(block)
        if reason is not None:
            raise ValueError(
                f"swiftmoe torchtitan: block {fqn!r}: {reason}; or exclude it from SwiftMoE"
            )
        inner = block.routed_experts.inner_experts
        for n in _EXPERT_NAMES:
            if n in inner._parameters:
                t = inner._parameters.pop(n)
                inner.register_buffer(n, t.detach(), persistent=True)
                moved.append(f"{fqn}.routed_experts.inner_experts.{n}")
        original = inner._init_self_parameters

        def init(self, original=original):
            original()  # the module's other parameters, as before (none in 0.3.0)
            for n in _EXPERT_NAMES:  # then the experts, in their registration order
                t = getattr(self, n)
                if self._param_init is not None:
                    self._init_param(n, t)

        inner._init_self_parameters = types.MethodType(init, inner)
    return moved


def _check_parallel_dims(parallel_dims: Any) -> None:
    for attr in ("tp", "cp", "pp", "ep"):
        degree = getattr(parallel_dims, attr, 1)
        if degree not in (1, None):
            raise ValueError(
                f"swiftmoe torchtitan: parallelism.{attr} degree is {degree}; SwiftMoE runs with "
                "data parallelism only (it replaces expert parallelism): set the other degrees "
                "to 1"
            )


def enable(
    model_spec: Any,
    config: SwiftMoEConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> Any:
    """``model_spec`` with SwiftMoE in its ``parallelize_fn`` and ``post_optimizer_build_fn``
    (a copy; the spec given is not changed). See the module docstring."""
    if not isinstance(config, SwiftMoEConfig):
        raise ValueError(f"config: expected swiftmoe.SwiftMoEConfig, got {type(config).__name__}")
    for field in ("parallelize_fn", "post_optimizer_build_fn"):
        if not hasattr(model_spec, field):
            raise ValueError(
                f"model_spec: {type(model_spec).__name__} has no {field}; pass the ModelSpec "
                "that torchtitan's model_registry(...) returns"
            )
    parallelize, post = model_spec.parallelize_fn, model_spec.post_optimizer_build_fn
    made: list[SwiftMoEHandle] = []

    def parallelize_fn(model: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        hold_experts_out_of_parameters(model)
        return parallelize(model, *args, **kwargs)

    def post_optimizer_build_fn(optimizers: Any, model_parts: list, parallel_dims: Any) -> None:
        _check_parallel_dims(parallel_dims)
        if post is not None:
            post(optimizers, model_parts, parallel_dims)
        for part in model_parts:
            made.append(replicate_(part, config, filter_fn))

        def step_experts(*_args: Any, **_kwargs: Any) -> None:
            for h in made:
                h.step()

        optimizers.register_step_post_hook(step_experts)

    spec = dataclasses.replace(
        model_spec, parallelize_fn=parallelize_fn, post_optimizer_build_fn=post_optimizer_build_fn
    )
    object.__setattr__(spec, _HANDLES_ATTR, made)
    return spec


def handles(model_spec: Any) -> list[SwiftMoEHandle]:
    """The SwiftMoE handles (one per model part) of a spec :func:`enable` returned, once the
    Trainer has built the optimizer: stats, checkpoints, ``export_to``."""
    return list(getattr(model_spec, _HANDLES_ATTR, []))


class SwiftMoEConverter:
    """A torchtitan model converter that checks every ``MoE`` config for what SwiftMoE needs
    and returns the config unchanged (the work is done by :func:`enable`)."""

    @dataclasses.dataclass(kw_only=True)
    class Config:
        def build(self, **_kwargs: Any) -> SwiftMoEConverter:
            return SwiftMoEConverter(self)

    def __init__(self, config: SwiftMoEConverter.Config | None = None) -> None:
        self.config = config

    def convert(self, model_config: Any) -> Any:
        from torchtitan.models.common.moe import GroupedExperts, MoE
        from torchtitan.models.common.token_dispatcher import (
            AllToAllTokenDispatcher,
            LocalTokenDispatcher,
        )

        known = (LocalTokenDispatcher.Config, AllToAllTokenDispatcher.Config)  # EP=1: local

        for fqn, cfg, *_ in model_config.traverse(MoE.Config):
            routed = cfg.routed_experts
            if type(routed.token_dispatcher) not in known:
                raise ValueError(
                    f"swiftmoe torchtitan: {fqn}.routed_experts.token_dispatcher is "
                    f"{type(routed.token_dispatcher).__qualname__}; SwiftMoE replaces expert "
                    "parallelism: use moe_comm_backend='standard' (and expert parallel degree 1)"
                )
            if type(routed.inner_experts) is not GroupedExperts.Config:
                raise ValueError(
                    f"swiftmoe torchtitan: {fqn}.routed_experts.inner_experts is "
                    f"{type(routed.inner_experts).__qualname__}, not GroupedExperts; drop the "
                    "converter that replaces the grouped experts (Float8/MXFP8) or exclude "
                    "these blocks from SwiftMoE"
                )
        return model_config
