"""The report's inputs: routing traces, loss curves and simulator results, checked.

    routing trace    JSON Lines, ``{"iteration": i, "loads": [[...E], ...L]}`` (DESIGN.md), read by
                     the one trace reader of the tools (``swiftmoe.sim.trace.read_trace_loads``).
    loss directory   ``loss-NAME.jsonl`` files, one ``{"step", "loss", "dropped", "step_s"}`` per
                     line (``scripts/convergence.py`` writes them; NAME is ``dropless`` or
                     ``cfX`` such as ``cf1.0``).
    simulator JSON   ``swiftmoe sim --output FILE`` (``summary.systems[name].mean_step_ms`` and
                     its components, ``iterations[i].systems[name].step_ms`` and ``replicas``),
                     or ``{system: seconds_per_iteration}``, or
                     ``{"systems": [{"name": ..., "step_s": [per iteration] or "mean_step_s": x,
                     "tokens_dropped": n, "replicas": [[[...E] per layer] per iteration]}, ...]}``
                     (``"systems"`` may also map names to those objects). Step times in ms are read
                     from ``step_ms``/``mean_step_ms`` instead.

Every reader raises ValueError naming the file, the line or the system, and the fix.

Shape legend: I iterations, L MoE layers, E experts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftmoe._checks import is_number
from swiftmoe.sim.trace import json_lines
from swiftmoe.sim.trace import read_trace_loads as read_trace

__all__ = [
    "COMPONENTS",
    "LossCurve",
    "SimSystem",
    "read_loss_dir",
    "read_loss_file",
    "read_sim",
    "read_trace",
]

#: The step-time components the simulator reports (``mean_<component>_ms``).
COMPONENTS = ("compute", "a2a", "transfer", "migration")


@dataclass
class LossCurve:
    """One training run's per-step loss (and what it dropped, and its measured step time)."""

    name: str
    loss: list[float]
    dropped: list[int]
    step_s: list[float]

    @property
    def mean_step_s(self) -> float | None:
        ts = self.step_s[min(5, len(self.step_s) - 1) :] if self.step_s else []
        return sum(ts) / len(ts) if ts else None


def read_loss_file(path: str | Path, name: str | None = None) -> LossCurve:
    path = Path(path)
    loss, dropped, step_s, last = [], [], [], -1
    for n, obj in json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("loss"), (int, float)):
            raise ValueError(f'{where}: expected {{"step": i, "loss": x, ...}} with a numeric loss')
        step = obj.get("step", last + 1)
        if step != last + 1:
            raise ValueError(f"{where}: step {step!r} after {last}; steps must count up from 0")
        last = step
        loss.append(float(obj["loss"]))
        dropped.append(int(obj.get("dropped", 0)))
        if isinstance(obj.get("step_s"), (int, float)):
            step_s.append(float(obj["step_s"]))
    if step_s and len(step_s) != len(loss):
        raise ValueError(f"{path}: step_s is on some lines only; write it on every line or none")
    return LossCurve(name or path.stem.removeprefix("loss-"), loss, dropped, step_s)


def read_loss_dir(path: str | Path) -> dict[str, LossCurve]:
    """Every ``loss-NAME.jsonl`` in a directory, keyed by NAME."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"--loss {path} is not a directory; pass the directory of loss-*.jsonl")
    curves = {
        p.stem.removeprefix("loss-"): read_loss_file(p) for p in sorted(path.glob("loss-*.jsonl"))
    }
    if not curves:
        raise ValueError(
            f"--loss {path}: no loss-NAME.jsonl files; run scripts/convergence.py run first"
        )
    return curves


@dataclass
class SimSystem:
    """One system of a simulator result."""

    name: str
    mean_step_s: float
    step_s: list[float] | None = None
    tokens_dropped: float | None = None
    replicas_ILE: list[list[list[int]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    components_s: dict[str, float] = field(default_factory=dict)  # mean seconds per component


def _num(v: Any) -> bool:
    return is_number(v) and math.isfinite(v)


def read_sim(obj_or_path: Any) -> list[SimSystem]:
    """Simulator results (see the module docstring for the formats accepted)."""
    obj, src = obj_or_path, "simulator JSON"
    if isinstance(obj_or_path, (str, Path)):
        src = str(obj_or_path)
        try:
            obj = json.loads(Path(obj_or_path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--sim {src}: cannot read JSON ({e})") from None
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{src}: expected a JSON object of systems; see `swiftmoe report --help`")
    summary = obj.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("systems"), dict):
        return _read_swiftmoe_sim(obj, src)
    systems = obj.get("systems", obj)
    if isinstance(systems, dict):
        items = [(k, v if isinstance(v, dict) else {"mean_step_s": v}) for k, v in systems.items()]
    elif isinstance(systems, list):
        items = [(s.get("name") if isinstance(s, dict) else None, s) for s in systems]
    else:
        raise ValueError(f"{src}: 'systems' must be a list or an object")
    out = []
    for name, s in items:
        if not isinstance(name, str) or not name or not isinstance(s, dict):
            raise ValueError(f"{src}: every system needs a 'name' string and an object of figures")
        scale = 1.0
        step = s.get("step_s")
        mean = s.get("mean_step_s")
        if step is None and mean is None:
            step, mean, scale = s.get("step_ms"), s.get("mean_step_ms"), 1e-3
        if step is not None:
            if not isinstance(step, list) or not step or not all(_num(v) and v >= 0 for v in step):
                raise ValueError(f"{src}: system {name!r}: step_s must be a list of seconds >= 0")
            step = [float(v) * scale for v in step]
        if mean is None and step is not None:
            mean = sum(step) / len(step) / scale
        if not _num(mean) or not mean > 0:
            raise ValueError(
                f"{src}: system {name!r}: give mean_step_s (seconds per iteration > 0) or step_s"
            )
        reps = s.get("replicas")
        if reps is not None and not (
            isinstance(reps, list)
            and all(isinstance(layer, list) for it in reps for layer in it)
            and all(isinstance(v, int) for it in reps for layer in it for v in layer)
        ):
            raise ValueError(
                f"{src}: system {name!r}: replicas must be [iteration][layer][expert] integers"
            )
        dropped = s.get("tokens_dropped")
        out.append(
            SimSystem(
                name=name,
                mean_step_s=float(mean) * scale,
                step_s=step,
                tokens_dropped=float(dropped) if _num(dropped) else None,
                replicas_ILE=reps,
                extra={k: v for k, v in s.items() if _num(v)},
            )
        )
    return out


def _read_swiftmoe_sim(obj: dict, src: str) -> list[SimSystem]:
    """``swiftmoe sim --output`` JSON: ``summary.systems[name].mean_step_ms`` and the
    ``mean_<component>_ms`` split, per-iteration ``iterations[i].systems[name].step_ms`` (and
    ``replicas`` [L][E] when the simulator records them)."""
    summ = obj["summary"]["systems"]
    names = obj.get("systems") if isinstance(obj.get("systems"), list) else list(summ)
    iters = obj.get("iterations") if isinstance(obj.get("iterations"), list) else []
    out = []
    for name in names:
        d = summ.get(name)
        if not isinstance(d, dict) or not _num(d.get("mean_step_ms")) or not d["mean_step_ms"] > 0:
            raise ValueError(
                f"{src}: summary.systems[{name!r}].mean_step_ms must be a positive number; "
                "regenerate the file with `swiftmoe sim --output FILE`"
            )
        per = [it.get("systems", {}).get(name, {}) for it in iters if isinstance(it, dict)]
        step = [float(r["step_ms"]) * 1e-3 for r in per if _num(r.get("step_ms"))]
        reps = [r.get("replicas") for r in per]
        components = {
            c: float(d[f"mean_{c}_ms"]) * 1e-3 for c in COMPONENTS if _num(d.get(f"mean_{c}_ms"))
        }
        out.append(
            SimSystem(
                name=name,
                mean_step_s=float(d["mean_step_ms"]) * 1e-3,
                step_s=step if step and len(step) == len(per) else None,
                tokens_dropped=float(d["tokens_dropped"])
                if _num(d.get("tokens_dropped"))
                else None,
                replicas_ILE=reps if reps and all(isinstance(r, list) for r in reps) else None,
                extra={k: v for k, v in d.items() if _num(v)},
                components_s=components,
            )
        )
    return out
