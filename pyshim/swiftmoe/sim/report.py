"""Summaries of a simulation: per-system figures, ratios, a table for people and JSON.

Per system: mean of every step-time component (ms), median and p95 step, tokens dropped (total
and as a fraction of routed tokens), mean and worst max_over_mean, the ratio of its mean step
to the bound's, and its per-iteration ratio to the bound (mean, p95, max). Against each
baseline: baseline mean step / SwiftMoE mean step (> 1: SwiftMoE is faster).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from swiftmoe.sim.run import FIELDS, SimResult

__all__ = ["format_table", "summarize", "to_json"]


def summarize(res: SimResult, routed_tokens: int) -> dict[str, Any]:
    names = [s.name for s in res.systems]
    bound = res.per_iteration.get("bound")
    out: dict[str, Any] = {}
    for n in names:
        r = res.per_iteration[n]
        step = r["step_ms"]
        d: dict[str, Any] = {f"mean_{f}": float(r[f].mean()) for f in FIELDS if f != "dropped"}
        d["median_step_ms"] = float(np.median(step))
        d["p95_step_ms"] = float(np.percentile(step, 95))
        d["worst_max_over_mean"] = float(r["max_over_mean"].max())
        d["tokens_dropped"] = int(r["dropped"].sum())
        d["dropped_fraction"] = float(r["dropped"].sum() / routed_tokens) if routed_tokens else 0.0
        if bound is not None:
            per_it = step / np.maximum(bound["step_ms"], 1e-12)
            d["over_bound"] = float(step.mean() / max(bound["step_ms"].mean(), 1e-12))
            d["per_iteration_over_bound"] = {
                "mean": float(per_it.mean()),
                "p95": float(np.percentile(per_it, 95)),
                "max": float(per_it.max()),
            }
        if n in res.jobs:
            d["job"] = res.jobs[n]
        out[n] = d
    vs: dict[str, float] = {}
    if "swiftmoe" in out:
        sw = out["swiftmoe"]["mean_step_ms"]
        for n in names:
            if n not in ("swiftmoe", "bound"):
                vs[n] = out[n]["mean_step_ms"] / sw if sw > 0 else float("nan")
    return {"systems": out, "baseline_over_swiftmoe": vs}


def _row(res: SimResult, name: str, i: int, replicas: bool) -> dict[str, Any]:
    r = res.per_iteration[name]
    out: dict[str, Any] = {
        f: int(r[f][i]) if f == "dropped" else round(float(r[f][i]), 6) for f in FIELDS
    }
    if replicas and name in res.replicas:
        out["replicas"] = res.replicas[name][i].tolist()
    return out


def to_json(
    res: SimResult,
    summary: dict[str, Any],
    meta: dict[str, Any],
    per_iteration: bool = True,
    replicas: bool = True,
) -> dict[str, Any]:
    """The whole result; per iteration every system's FIELDS and, for systems placed by a plan,
    ``replicas`` [L][E] in force (what ``swiftmoe report`` plots)."""
    doc: dict[str, Any] = dict(meta)
    doc["systems"] = [s.name for s in res.systems]
    doc["timing_s"] = {k: round(v, 4) for k, v in res.timing_s.items()}
    doc["summary"] = summary
    if per_iteration:
        doc["iterations"] = [
            {"iteration": i, "systems": {n: _row(res, n, i, replicas) for n in doc["systems"]}}
            for i in range(res.iterations)
        ]
    return doc


def format_table(res: SimResult, summary: dict[str, Any]) -> str:
    head = (
        f"{'system':<16}{'step ms':>9}{'compute':>9}{'all2all':>9}{'xfer':>8}{'migr':>8}"
        f"{'p95 step':>10}{'/bound':>8}{'worst it':>9}{'dropped':>11}{'drop %':>8}{'max/mean':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in res.systems:
        d = summary["systems"][s.name]
        pib = d.get("per_iteration_over_bound", {})
        lines.append(
            f"{s.name:<16}{d['mean_step_ms']:>9.3f}{d['mean_compute_ms']:>9.3f}"
            f"{d['mean_a2a_ms']:>9.3f}{d['mean_transfer_ms']:>8.3f}{d['mean_migration_ms']:>8.3f}"
            f"{d['p95_step_ms']:>10.3f}{d.get('over_bound', float('nan')):>8.3f}"
            f"{pib.get('max', float('nan')):>9.3f}{d['tokens_dropped']:>11d}"
            f"{100 * d['dropped_fraction']:>8.2f}{d['mean_max_over_mean']:>9.3f}"
        )
    vs = summary["baseline_over_swiftmoe"]
    if vs:
        lines.append("")
        lines.append(
            "baseline step / swiftmoe step: " + ", ".join(f"{n} {v:.3f}" for n, v in vs.items())
        )
    notes = []
    for s in res.systems:
        j = summary["systems"][s.name].get("job")
        if j and j["fallback_plans"]:
            notes.append(f"{s.name}: {j['fallback_plans']} fallback plan(s): {j['fallback_notes']}")
        if j and j["strategy"] == "flexmoe":
            notes.append(
                f"{s.name}: {j['placement_changes']} placement change(s), "
                f"{j['migrated_bytes'] / 1e9:.3f} GB migrated"
            )
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines)
