"""``swiftmoe check MODEL_ID_OR_CONFIG``: a model's MoE blocks, and which adapter takes each or
why none does, without training and without weights.

The model is built from its transformers configuration on the ``meta`` device (no memory for
weights, nothing downloaded but the configuration). A local ``config.json`` or a folder holding
one works offline; a hub id needs the network. Each block is checked as ``replicate_`` checks it
(structure and a probe of the block's forward on meta tensors); the probe that compares values
needs real weights, so ``replicate_`` repeats the check with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["add_parser", "check_model", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check",
        help="list a model's MoE blocks and which adapter takes each (or why none does)",
        description="Builds the model from its transformers configuration on the meta device "
        "(no weights) and lists its MoE blocks: the adapter that takes each, or the piece "
        "SwiftMoE cannot drive and what to do. Exits 1 when a block is refused.",
    )
    p.add_argument("model", help="a config.json, a folder holding one (offline), or a hub model id")
    p.add_argument("--json", action="store_true", help="print the blocks as JSON")
    p.add_argument(
        "--experts-implementation",
        default=None,
        help="transformers experts implementation to check (default: the model's, grouped_mm)",
    )


def _load_config(spec: str):
    import transformers

    path = Path(spec)
    if path.is_file():
        return (
            transformers.AutoConfig.from_pretrained(str(path.parent))
            if path.name == ("config.json")
            else transformers.AutoConfig.from_dict(json.loads(path.read_text()))
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {spec} is a folder without config.json; point at one")
        return transformers.AutoConfig.from_pretrained(str(path))
    if os.sep in spec and not spec.count("/") == 1:
        raise ValueError(f"model: {spec} does not exist; give a config.json, a folder or a hub id")
    try:
        return transformers.AutoConfig.from_pretrained(spec)
    except OSError as e:
        raise ValueError(
            f"model: cannot load the configuration of {spec!r} ({e}); a hub id needs the "
            "network (offline, pass a local config.json or its folder)"
        ) from None


def check_model(spec: str, experts_implementation: str | None = None) -> list[dict]:
    """[{fqn, block, adapter, reason}] for every MoE block of the model ``spec`` names."""
    import torch
    import transformers

    from swiftmoe.adapters import find_adapter
    from swiftmoe.engine.blocks import _looks_like_moe, refusal_reason

    cfg = _load_config(spec)
    kwargs = {}
    if experts_implementation:
        kwargs["experts_implementation"] = experts_implementation
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, **kwargs)
        except ValueError:
            model = transformers.AutoModel.from_config(cfg, **kwargs)
    rows: list[dict] = []

    def walk(module, fqn: str) -> None:
        adapter = find_adapter(module)
        if adapter is not None:
            rows.append(
                {"fqn": fqn, "block": type(module).__name__, "adapter": adapter.name, "reason": ""}
            )
            return
        if _looks_like_moe(module):
            rows.append(
                {
                    "fqn": fqn,
                    "block": type(module).__name__,
                    "adapter": None,
                    "reason": refusal_reason(module),
                }
            )
            return
        for name, child in module.named_children():
            walk(child, f"{fqn}.{name}" if fqn else name)

    walk(model, "")
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        rows = check_model(args.model, args.experts_implementation)
    except ValueError as e:
        print(f"swiftmoe check: {e}", file=sys.stderr)
        return 2
    refused = [r for r in rows if r["adapter"] is None]
    if args.json:
        print(json.dumps({"ok": bool(rows) and not refused, "blocks": rows}, indent=2))
    else:
        for r in rows:
            took = r["adapter"] or f"REFUSED: {r['reason']}"
            print(f"{r['fqn']:<40} {r['block']:<28} {took}")
        if not rows:
            print("no MoE block found")
        elif refused:
            print(
                f"\n{len(refused)} of {len(rows)} blocks refused; fix: an adapter of your own "
                "(swiftmoe.adapters.register_adapter) or exclude them with filter_fn"
            )
        else:
            print(f"\nall {len(rows)} MoE blocks have an adapter")
    return 1 if refused or not rows else 0
