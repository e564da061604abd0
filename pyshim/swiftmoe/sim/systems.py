"""The systems a simulation compares, parsed from names.

| name | placement | tokens |
| --- | --- | --- |
| ``bound`` | the static placement, fed perfectly uniform routing | engine split |
| ``swiftmoe`` | sidecar strategy ``swiftmoe``, S slots, plan for t+1 from t's loads | engine split |
| ``flexmoe-N`` | sidecar strategy ``flexmoe`` with ``interval=N``, S slots | engine split |
| ``static-dropless`` | sidecar strategy ``static``, static slots | padded to the largest |
| ``static-cfX`` | sidecar strategy ``static``, static slots | capacity X, rest dropped |
| ``static-nopad`` | sidecar strategy ``static``, static slots | engine split, no padding |

``static-nopad`` is static expert parallelism run by the SwiftMoE engine (per-slot kernels or
grouped GEMM, no padding): what ``scripts/bench_step.py`` times as "static". The ``bound`` is
what the static placement would take if routing were perfectly uniform with the same token count
(every expert total/E tokens, so every rank gets the mean load: no padding, no drops, the static
layout's communication), as ``scripts/bench_step.py`` measures it; its compute is the
perfect-balance compute, its communication is not a lower bound for skewed routing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["DEFAULT_SYSTEMS", "SystemSpec", "parse_systems"]

DEFAULT_SYSTEMS = (
    "bound,swiftmoe,flexmoe-10,flexmoe-50,flexmoe-100,static-dropless,static-cf1.0,static-cf2.0"
)

BOUND, ENGINE, PADDED, CAPACITY = "bound", "engine", "padded", "capacity"


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str  # BOUND, ENGINE (plan + engine split), PADDED, CAPACITY
    strategy: str = ""  # sidecar strategy that places it ("" for the bound)
    options: dict[str, str] = field(default_factory=dict)
    static: bool = False  # uses the static slot count
    capacity_factor: float = 0.0

    @property
    def job_key(self) -> tuple:
        """Systems with the same key share one sidecar job (one placement sequence)."""
        return (self.strategy, tuple(sorted(self.options.items())), self.static)


def parse_systems(text: str, flexmoe_options: dict[str, str] | None = None) -> list[SystemSpec]:
    """Comma-separated names (see the module doc); ValueError naming a bad one and the fix."""
    out: list[SystemSpec] = []
    extra = dict(flexmoe_options or {})
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "bound":
            spec = SystemSpec(name, BOUND, "static", static=True)
        elif name == "swiftmoe":
            spec = SystemSpec(name, ENGINE, "swiftmoe")
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
                f"--systems: unknown system {name!r}; use bound, swiftmoe, flexmoe-N, "
                "static-dropless, static-cfX or static-nopad (comma-separated)"
            )
        if any(s.name == spec.name for s in out):
            raise ValueError(f"--systems: {name!r} is listed twice")
        out.append(spec)
    if not out:
        raise ValueError(f"--systems is {text!r}: name at least one system, e.g. {DEFAULT_SYSTEMS}")
    return out
