"""The convergence arithmetic (pure): moving averages, the target loss, steps and time to it.

A system's loss curve: names with a capacity factor (``static-cf1.0``, ``static cf=2``,
``capacity 1.0``) use the ``cfX`` curve, every other system is dropless and uses ``dropless``:
dropless systems compute the same thing whatever their placement, so they share one curve.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from swiftmoe._checks import is_int

__all__ = [
    "choose_target",
    "curve_for_system",
    "moving_average",
    "steps_to_target",
    "table_text",
    "time_to_target",
    "time_to_target_table",
]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean: entry i is the mean of values[max(0, i-window+1) : i+1]."""
    if not is_int(window, 1):
        raise ValueError(f"moving_average window is {window!r}: pass an integer >= 1")
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += float(v)
        if i >= window:
            acc -= float(values[i - window])
        out.append(acc / min(i + 1, window))
    return out


def choose_target(losses: Sequence[float], fraction: float = 0.8, window: int = 25) -> float:
    """The smoothed loss a curve (the dropless one) reaches at ``fraction`` of its steps."""
    if not 0 < fraction <= 1:
        raise ValueError(f"target fraction is {fraction!r}: pass a number in (0, 1], e.g. 0.8")
    if not losses:
        raise ValueError("choose_target: the loss curve is empty; run some training steps first")
    smooth = moving_average(losses, window)
    return smooth[max(0, math.ceil(fraction * len(losses)) - 1)]


def steps_to_target(losses: Sequence[float], target: float, window: int = 25) -> int | None:
    """Steps until the smoothed loss first reaches ``target`` (1-based count), None if never."""
    for i, v in enumerate(moving_average(losses, window)):
        if v <= target:
            return i + 1
    return None


def time_to_target(steps: int | None, seconds_per_iteration: float) -> float | None:
    """``steps * seconds_per_iteration``; None when the target was never reached."""
    if not seconds_per_iteration > 0:
        raise ValueError(
            f"seconds_per_iteration is {seconds_per_iteration!r}: pass a positive time"
        )
    return None if steps is None else steps * float(seconds_per_iteration)


_CF_RE = re.compile(
    r"(?:\bcf|capacity(?:[ _-]?factor)?)\s*[=:_ -]?\s*([0-9]+(?:\.[0-9]*)?)", re.IGNORECASE
)


def curve_for_system(system: str) -> str:
    """The loss curve a system trains like: ``cfX`` (X with one decimal at least) or ``dropless``."""
    m = _CF_RE.search(system)
    if not m:
        return "dropless"
    return f"cf{float(m.group(1))}"


def time_to_target_table(
    curves: Mapping[str, Sequence[float]],
    seconds_per_iteration: Mapping[str, float],
    fraction: float = 0.8,
    window: int = 25,
) -> dict[str, Any]:
    """Steps and time to the dropless curve's target loss for every system.

    ``curves`` maps curve names (``dropless``, ``cf1.0``, ...) to per-step losses; it must hold
    ``dropless``. Returns ``{"target_loss", "fraction", "window", "rows": [{"system", "curve",
    "seconds_per_iteration", "steps", "time_s", "vs_best"}]}``; rows whose curve is missing have
    ``curve`` None, and ``vs_best`` is time_s over the fastest system's (None when unreached).
    """
    if "dropless" not in curves:
        raise ValueError(
            "time_to_target_table: no 'dropless' loss curve; the target is taken from it, so "
            "pass the loss directory with loss-dropless.jsonl"
        )
    target = choose_target(curves["dropless"], fraction, window)
    rows = []
    for system, spi in seconds_per_iteration.items():
        name = curve_for_system(system)
        losses = curves.get(name)
        steps = None if losses is None else steps_to_target(losses, target, window)
        rows.append(
            {
                "system": system,
                "curve": name if losses is not None else None,
                "seconds_per_iteration": float(spi),
                "steps": steps,
                "time_s": time_to_target(steps, spi),
            }
        )
    times = [r["time_s"] for r in rows if r["time_s"] is not None]
    best = min(times) if times else None
    for r in rows:
        r["vs_best"] = None if r["time_s"] is None or not best else r["time_s"] / best
    return {"target_loss": target, "fraction": fraction, "window": window, "rows": rows}


def table_text(table: Mapping[str, Any]) -> str:
    """``time_to_target_table``'s result as a Markdown table, with its target line first."""
    lines = [
        f"target loss {table['target_loss']:.4f} (dropless, smoothed over {table['window']} steps, "
        f"at {table['fraction']:.0%} of its steps); time: {table.get('time', '')}",
        "| system | curve | s/iteration | steps to target | time to target (s) | vs best |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in table["rows"]:
        steps = "not reached" if r["steps"] is None else str(r["steps"])
        t = "—" if r["time_s"] is None else f"{r['time_s']:.3f}"
        vs = "—" if r["vs_best"] is None else f"{r['vs_best']:.2f}×"
        lines.append(
            f"| {r['system']} | {r['curve'] or 'none'} | {r['seconds_per_iteration']:.4g} | "
            f"{steps} | {t} | {vs} |"
        )
    return "\n".join(lines)
