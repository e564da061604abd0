"""The systems a simulation compares, parsed from names.

| name | placement | tokens |
| --- | --- | --- |
| ``bound`` | the static placement, fed perfectly uniform routing | engine split |
| ``swiftmoe`` | sidecar strategy ``swiftmoe``, S slots, plan for t+1 from t's loads | engine split |
| ``swiftmoe-burst`` | ``swiftmoe``'s placement, plus the engine's burst replicas | engine split |
| ``flexmoe-N`` | sidecar strategy ``flexmoe`` with ``interval=N``, S slots | engine split |
| ``static-dropless`` | sidecar strategy ``static``, static slots | padded to the largest |
| ``static-cfX`` | sidecar strategy ``static``, static slots | capacity X, rest dropped |
| ``static-nopad`` | sidecar strategy ``static``, static slots | engine split, no padding |

``static-nopad`` is static expert parallelism, dropless, without padding, with grouped GEMMs:
what Megatron-Core and torchtitan run today, and the baseline that matters most (the engine runs
it: per-slot kernels or grouped GEMM, no padding; what ``scripts/bench_step.py`` times as
"static"). ``swiftmoe-burst`` is the swiftmoe strategy told of the engine's burst slots (its
own sidecar job, whose cost model carries them, so it may leave imbalance within a node to them)
plus, per layer and iteration, the burst replicas that the engine's own decision
(``swiftmoe.engine.burst.plan_bursts``) makes from the iteration's counts, with the copies' time
charged to the iteration: what the planned slots' compute does not hide of it, as the engine runs
them together (``swiftmoe.engine.costmodel.copy_exposed_ms``).

The ``bound`` is perfect balance: every rank computes the mean load (total/N tokens, for the
per-slot compute model spread evenly over its S slots); its all-to-all is the lower of an even
one (every source sends the same share of its tokens to every rank) and the static layout's under
perfectly uniform routing (which keeps every token in its node when each node holds every
expert); the weight and gradient transfers of S static slots. Its compute is a lower bound; its
communication is not one (a placement that keeps tokens in their node can move less).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["DEFAULT_SYSTEMS", "HEADLINE", "SystemSpec", "parse_systems"]

DEFAULT_SYSTEMS = (
    "bound,swiftmoe,swiftmoe-burst,static-nopad,static-dropless,static-cf1.0,static-cf2.0,"
    "flexmoe-10,flexmoe-50,flexmoe-100"
)
# The baseline of the headline comparison: what users run today.
HEADLINE = "static-nopad"

BOUND, ENGINE, PADDED, CAPACITY = "bound", "engine", "padded", "capacity"


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str  # BOUND, ENGINE (plan + engine split), PADDED, CAPACITY
    strategy: str = ""  # sidecar strategy that places it ("" for the bound)
    options: dict[str, str] = field(default_factory=dict)
    static: bool = False  # uses the static slot count
    capacity_factor: float = 0.0
    burst: bool = False  # adds the engine's burst replicas to its placement

    @property
    def job_key(self) -> tuple:
        """Systems with the same key share one sidecar job (one placement sequence). A system
        with bursts has its own: its job tells the strategy the engine's burst slots."""
        return (self.strategy, tuple(sorted(self.options.items())), self.static, self.burst)


def parse_systems(
    text: str,
    flexmoe_options: dict[str, str] | None = None,
    swiftmoe_options: dict[str, str] | None = None,
) -> list[SystemSpec]:
    """Comma-separated names (see the module doc); ValueError naming a bad one and the fix.
    ``swiftmoe_options`` are the strategy options of ``swiftmoe`` and ``swiftmoe-burst`` (one
    sidecar job), ``flexmoe_options`` those of every ``flexmoe-N``."""
    out: list[SystemSpec] = []
    extra = dict(flexmoe_options or {})
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "bound":
            spec = SystemSpec(name, BOUND, "static", static=True)
        elif name == "swiftmoe":
            spec = SystemSpec(name, ENGINE, "swiftmoe", dict(swiftmoe_options or {}))
        elif name == "swiftmoe-burst":
            spec = SystemSpec(name, ENGINE, "swiftmoe", dict(swiftmoe_options or {}), burst=True)
        elif m := re.fullmatch(r"flexmoe-(\d+)", name):
            if int(m.group(1)) < 1:
                raise ValueError(f"--systems: {name!r} needs an interval >= 1, e.g. flexmoe-10")
            spec = SystemSpec(name, ENGINE, "flexmoe", {"interval": str(int(m.group(1))), **extra})
        elif name == "static-dropless":
            spec = SystemSpec(name, PADDED, "static", static=True)
        elif name == "static-nopad":
            spec = SystemSpec(name, ENGINE, "static", static=True)
        elif m := re.fullmatch(r"static-cf(\d+(?:\.\d*)?)", name):
            cf = float(m.group(1))
            if not (cf > 0 and math.isfinite(cf)):
                raise ValueError(
                    f"--systems: {name!r} needs a capacity factor > 0, e.g. static-cf1.0"
                )
            spec = SystemSpec(name, CAPACITY, "static", static=True, capacity_factor=cf)
        else:
            raise ValueError(
                f"--systems: unknown system {name!r}; use bound, swiftmoe, swiftmoe-burst, "
                "flexmoe-N, static-nopad, static-dropless or static-cfX (comma-separated)"
            )
        if any(s.name == spec.name for s in out):
            raise ValueError(f"--systems: {name!r} is listed twice")
        out.append(spec)
    if not out:
        raise ValueError(f"--systems is {text!r}: name at least one system, e.g. {DEFAULT_SYSTEMS}")
    return out
