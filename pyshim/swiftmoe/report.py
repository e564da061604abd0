"""``swiftmoe report``: PNG plots of a routing trace, simulator results and loss curves, and the
convergence arithmetic (steps and time to a target loss) behind them.

    swiftmoe report --trace trace.jsonl [--sim sim.json] [--loss DIR] --out DIR
    swiftmoe report --trace trace.jsonl --plan-strategy swiftmoe --world-size 4 --slots 4 --out DIR

Figures (each written only when its inputs are given):
    load-heatmap.png      expert load / mean load over iterations, one panel per MoE layer (--trace)
    replicas.png          replicas per expert over iterations (--sim with per-iteration replicas,
                          or --plan-strategy: the real strategy plugin, driven through the sidecar
                          exactly as a training job drives it, one ReportLoads per iteration)
    step-time.png         seconds per iteration per system (--sim)
    loss-vs-time.png      loss against wall time per system: each system's loss curve (dropless
                          or its capacity factor, from --loss) times its seconds per iteration
                          (--sim; without it, the step times measured in the loss files)

Inputs:
    routing trace    JSON Lines, ``{"iteration": i, "loads": [[...E], ...L]}`` (DESIGN.md).
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

A system's loss curve: names with a capacity factor (``static-cf1.0``, ``static cf=2``,
``capacity 1.0``) use the ``cfX`` curve, every other system is dropless and uses ``dropless``:
dropless systems compute the same thing whatever their placement, so they share one curve.

Shape legend: I iterations, L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LossCurve",
    "SimSystem",
    "main",
    "moving_average",
    "choose_target",
    "steps_to_target",
    "time_to_target",
    "curve_for_system",
    "time_to_target_table",
    "read_trace",
    "read_loss_dir",
    "read_sim",
    "plans_from_sidecar",
    "plot_load_heatmap",
    "plot_replicas",
    "plot_step_times",
    "plot_loss_vs_time",
    "FIG_WIDTH_PX",
    "DPI",
]

DPI = 100
FIG_WIDTH_PX = 1200
_PANEL_IN = 2.1  # height of one per-layer panel
_TITLE_IN = 0.7


# ---- convergence arithmetic (pure) --------------------------------------------------------------


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean: entry i is the mean of values[max(0, i-window+1) : i+1]."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
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


# ---- inputs -------------------------------------------------------------------------------------


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); write one object per line") from None
    if not out:
        raise ValueError(f"{path}: no JSON lines; pass a file with one object per line")
    return out


def read_trace(path: str | Path) -> list[list[list[int]]]:
    """A routing trace as loads_ILE (ordered by iteration); ValueError naming line and field."""
    path = Path(path)
    rows, shape = [], None
    for n, obj in _json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict) or "loads" not in obj or "iteration" not in obj:
            raise ValueError(
                f'{where}: expected {{"iteration": i, "loads": [[...], ...]}} (a routing trace)'
            )
        it, loads = obj["iteration"], obj["loads"]
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise ValueError(f"{where}: iteration is {it!r}; pass an integer >= 0")
        if (
            not isinstance(loads, list)
            or not loads
            or not all(isinstance(r, list) and r for r in loads)
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for r in loads for v in r
            )
        ):
            raise ValueError(
                f"{where}: loads must be a non-empty list per layer of integer token counts >= 0"
            )
        s = [len(r) for r in loads]
        if shape is None:
            shape = s
        elif s != shape:
            raise ValueError(
                f"{where}: loads has {s} experts per layer, earlier lines {shape}; "
                "one trace holds one model"
            )
        rows.append((it, loads))
    rows.sort(key=lambda r: r[0])
    return [loads for _, loads in rows]


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
    for n, obj in _json_lines(path):
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
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


_COMPONENTS = ("compute", "a2a", "transfer", "migration")


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
            c: float(d[f"mean_{c}_ms"]) * 1e-3 for c in _COMPONENTS if _num(d.get(f"mean_{c}_ms"))
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


def plans_from_sidecar(
    loads_ILE: Sequence[Sequence[Sequence[int]]],
    strategy: str,
    world_size: int,
    slots_per_rank: int,
    *,
    options: Mapping[str, str] | None = None,
    ranks_per_node: int = 0,
    expert_param_numel: int = 2 * 768 * 3072,
    binary: str | None = None,
    plugins_dir: str | None = None,
    timeout_s: float = 10.0,
) -> list[list[list[int]]]:
    """Replicas per expert in force at every iteration, replicas_ILE, as a training job gets them.

    Starts the sidecar, registers a job with the strategy, and reports each iteration's loads in
    order (ReportLoads); the plan it answers is in force at the next iteration, the initial plan
    at iteration 0 (last-iteration prediction, the same loop a training job runs).
    """
    from swiftmoe import planning as sc

    if not loads_ILE:
        raise ValueError("plans_from_sidecar: the trace is empty")
    E_L = [len(layer) for layer in loads_ILE[0]]
    spec = sc.JobSpec(
        world_size=world_size,
        slots_per_rank=slots_per_rank,
        experts_per_layer=E_L,
        expert_param_numel=[expert_param_numel],
        strategy=strategy,
        strategy_options=dict(options or {}),
        ranks_per_node=ranks_per_node,
    )

    def replicas(slots_LK: list[list[int]]) -> list[list[int]]:
        out = []
        for E, slots_K in zip(E_L, slots_LK, strict=True):
            r_E = [0] * E
            for e in slots_K:
                r_E[e] += 1
            out.append(r_E)
        return out

    with sc.ManagedSidecar(binary=binary, plugins_dir=plugins_dir) as sidecar:
        with sc.SidecarClient(sidecar.address, timeout_s) as client:
            reg = client.register_job(spec)
            in_force = reg.initial_plan.slots_LK
            out = []
            for it, loads_LE in enumerate(loads_ILE):
                out.append(replicas(in_force))
                if it + 1 < len(loads_ILE):
                    in_force = client.report_loads(reg.job_id, it, loads_LE).slots_LK
    return out


# ---- plots --------------------------------------------------------------------------------------


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            "swiftmoe report needs matplotlib: pip install 'matplotlib==3.10.*'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layers_shown(L: int, max_layers: int) -> list[int]:
    if L <= max_layers:
        return list(range(L))
    return sorted({round(i * (L - 1) / (max_layers - 1)) for i in range(max_layers)})


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _layer_grid(plt, n: int, title: str):
    fig, axes = plt.subplots(
        n,
        1,
        figsize=(FIG_WIDTH_PX / DPI, _TITLE_IN + _PANEL_IN * n),
        layout="constrained",
        squeeze=False,
    )
    fig.suptitle(title)
    return fig, [a[0] for a in axes]


def plot_load_heatmap(
    loads_ILE: Sequence[Sequence[Sequence[int]]],
    path: str | Path,
    max_layers: int = 6,
    title: str = "Expert load over iterations",
) -> Path:
    """Per layer: an E x I image of each expert's load divided by the layer's mean expert load."""
    import numpy as np

    plt = _plt()
    a_ILE = np.asarray(loads_ILE, dtype=np.float64)
    shown = _layers_shown(a_ILE.shape[1], max_layers)
    fig, axes = _layer_grid(plt, len(shown), title)
    mean_IL1 = a_ILE.mean(axis=2, keepdims=True)
    rel_ILE = np.divide(a_ILE, mean_IL1, out=np.zeros_like(a_ILE), where=mean_IL1 > 0)
    vmax = max(2.0, float(np.percentile(rel_ILE, 99.5)))
    for ax, layer in zip(axes, shown, strict=True):
        im = ax.imshow(
            rel_ILE[:, layer, :].T,
            aspect="auto",
            interpolation="nearest",
            cmap="magma",
            vmin=0.0,
            vmax=vmax,
            origin="lower",
        )
        ax.set_ylabel(f"layer {layer}\nexpert")
        _expert_ticks(ax, a_ILE.shape[2])
        fig.colorbar(im, ax=ax, label="load ÷ mean", pad=0.01)
    axes[-1].set_xlabel("iteration")
    return _save(fig, Path(path))


def _expert_ticks(ax, E: int) -> None:
    step = max(1, math.ceil(E / 8))
    ax.set_yticks(range(0, E, step))


def plot_replicas(
    replicas_ILE: Sequence[Sequence[Sequence[int]]],
    path: str | Path,
    max_layers: int = 6,
    title: str = "Replicas per expert over iterations",
) -> Path:
    """Per layer: an E x I image of each expert's replica count."""
    import numpy as np

    plt = _plt()
    r_ILE = np.asarray(replicas_ILE, dtype=np.int64)
    if r_ILE.ndim != 3:
        raise ValueError("replicas must be [iteration][layer][expert] with equal lengths")
    shown = _layers_shown(r_ILE.shape[1], max_layers)
    fig, axes = _layer_grid(plt, len(shown), title)
    top = int(r_ILE.max())
    cmap = plt.get_cmap("viridis", top + 1)
    for ax, layer in zip(axes, shown, strict=True):
        im = ax.imshow(
            r_ILE[:, layer, :].T,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            vmin=-0.5,
            vmax=top + 0.5,
            origin="lower",
        )
        ax.set_ylabel(f"layer {layer}\nexpert")
        _expert_ticks(ax, r_ILE.shape[2])
        cb = fig.colorbar(im, ax=ax, label="replicas", pad=0.01)
        cb.set_ticks(range(0, top + 1, max(1, math.ceil((top + 1) / 8))))
    axes[-1].set_xlabel("iteration")
    return _save(fig, Path(path))


def plot_step_times(systems: Sequence[SimSystem], path: str | Path, title: str = "") -> Path:
    """Left: seconds per iteration over iterations (systems with per-iteration times); right: the
    mean per system, in ms, best first."""
    plt = _plt()
    per_iter = [s for s in systems if s.step_s]
    ncols = 2 if per_iter else 1
    fig, axes = plt.subplots(
        1, ncols, figsize=(FIG_WIDTH_PX / DPI, 4.8), layout="constrained", squeeze=False
    )
    axes = axes[0]
    fig.suptitle(title or "Time per iteration per system")
    if per_iter:
        ax = axes[0]
        for s in per_iter:
            ax.plot(range(len(s.step_s)), [v * 1e3 for v in s.step_s], label=s.name, lw=1.0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("ms per iteration")
        ax.legend(fontsize="small", ncols=2)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    order = sorted(systems, key=lambda s: s.mean_step_s)
    ys = range(len(order))
    comps = [c for c in _COMPONENTS if all(c in s.components_s for s in order)]
    if comps:
        left = [0.0] * len(order)
        for c in comps:
            w = [s.components_s[c] * 1e3 for s in order]
            ax.barh(list(ys), w, left=left, label=c)
            left = [a + b for a, b in zip(left, w, strict=True)]
        rest = [s.mean_step_s * 1e3 - x for s, x in zip(order, left, strict=True)]
        if any(r > 1e-9 for r in rest):
            ax.barh(list(ys), rest, left=left, label="other", color="lightgrey")
        ax.legend(fontsize="small", loc="upper right")
    else:
        ax.barh(list(ys), [s.mean_step_s * 1e3 for s in order], color="tab:blue")
    ax.set_yticks(list(ys), [s.name for s in order], fontsize="small")
    ax.invert_yaxis()
    best = order[0].mean_step_s
    for y, s in zip(ys, order, strict=True):
        ax.text(
            s.mean_step_s * 1e3,
            y,
            f" {s.mean_step_s * 1e3:.3g} ms ({s.mean_step_s / best:.2f}×)",
            va="center",
            fontsize="small",
        )
    ax.set_xlabel("mean ms per iteration")
    ax.set_xlim(0, order[-1].mean_step_s * 1e3 * 1.35)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))


def plot_loss_vs_time(
    curves: Mapping[str, Sequence[float]],
    seconds_per_iteration: Mapping[str, float],
    path: str | Path,
    *,
    window: int = 25,
    target: float | None = None,
    time_label: str = "simulated wall time",
    title: str = "",
) -> Path:
    """Left: smoothed loss against steps per curve; right: smoothed loss against wall time per
    system (its curve's step x its seconds per iteration; systems that drop tokens dashed), with
    the target loss as a grey dashed line."""
    plt = _plt()
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(FIG_WIDTH_PX / DPI, 4.8), layout="constrained")
    fig.suptitle(title or f"Loss (moving average of {window} steps)")
    cf_colors = iter(["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"])
    colors = {n: "black" if n == "dropless" else next(cf_colors, None) for n in sorted(curves)}
    for name, losses in sorted(curves.items()):
        ax_s.plot(
            range(1, len(losses) + 1),
            moving_average(losses, window),
            label=name,
            lw=1.2,
            color=colors[name],
        )
    ax_s.set_xlabel("step")
    ax_s.set_ylabel("training loss")
    for system, spi in seconds_per_iteration.items():
        losses = curves.get(curve_for_system(system))
        if losses is None:
            continue
        xs = [(i + 1) * spi for i in range(len(losses))]
        dropping = curve_for_system(system) != "dropless"
        ax_t.plot(
            xs,
            moving_average(losses, window),
            label=f"{system} ({curve_for_system(system)} curve)" if dropping else system,
            lw=1.2,
            ls="--" if dropping else "-",
        )
    ax_t.set_xlabel(f"{time_label} (s)")
    ax_t.set_ylabel("training loss")
    for ax in (ax_s, ax_t):
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=0.8, label="target")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        lo = min(min(moving_average(v, window)) for v in curves.values() if v)
        ax.set_ylim(lo - 0.1, lo + 1.2)
    return _save(fig, Path(path))


# ---- command ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swiftmoe report",
        description="Turn a routing trace, simulator results and loss curves into PNG plots "
        "(load heatmap, replicas per expert, step time per system, loss against wall time) and a "
        "time-to-target-loss table.",
        epilog="Simulator JSON: `swiftmoe sim --output FILE`, {system: seconds_per_iteration} "
        'or {"systems": [{"name", '
        '"step_s" or "mean_step_s", "tokens_dropped", "replicas"}]}. Loss directory: '
        "loss-NAME.jsonl files from scripts/convergence.py (NAME dropless or cfX).",
    )
    p.add_argument("--trace", help="routing trace (JSON Lines) for the load heatmap")
    p.add_argument("--sim", help="simulator results JSON (step time per system, replicas)")
    p.add_argument("--loss", help="directory of loss-NAME.jsonl curves")
    p.add_argument("--out", required=True, help="directory the PNGs and report.json go to")
    p.add_argument(
        "--plan-strategy",
        help="replicas plot from this strategy plugin, driven through the sidecar per iteration",
    )
    p.add_argument(
        "--replicas-system",
        default="swiftmoe",
        help="the --sim system whose replicas are plotted (default swiftmoe, else the first "
        "system with replicas)",
    )
    p.add_argument("--world-size", type=int, help="ranks for --plan-strategy")
    p.add_argument("--slots", type=int, help="slots per rank for --plan-strategy")
    p.add_argument(
        "--ranks-per-node", type=int, default=0, help="for --plan-strategy (0: one node)"
    )
    p.add_argument(
        "--strategy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option for --plan-strategy, repeatable",
    )
    p.add_argument(
        "--target-fraction",
        type=float,
        default=0.8,
        help="target loss: the smoothed dropless loss at this fraction of its steps",
    )
    p.add_argument("--smooth", type=int, default=25, help="moving-average window in steps")
    p.add_argument("--max-layers", type=int, default=6, help="layers shown in per-layer plots")
    p.add_argument("--title", default="", help="prefix for the plot titles")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if not (args.trace or args.sim or args.loss):
        p.error("give at least one of --trace, --sim, --loss")
    if args.plan_strategy and not (args.trace and args.world_size and args.slots):
        p.error("--plan-strategy needs --trace, --world-size and --slots")
    if args.smooth < 1 or args.max_layers < 1:
        p.error("--smooth and --max-layers must be >= 1")
    options = {}
    for kv in args.strategy_option:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            p.error(f"--strategy-option: expected KEY=VALUE, got {kv!r}")
        options[k] = v
    prefix = f"{args.title}: " if args.title else ""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {out}: cannot create the directory ({e})")
    written: list[Path] = []
    summary: dict[str, Any] = {}
    try:
        loads_ILE = read_trace(args.trace) if args.trace else None
        systems = read_sim(args.sim) if args.sim else []
        curves = read_loss_dir(args.loss) if args.loss else {}
        if loads_ILE is not None:
            written.append(
                plot_load_heatmap(
                    loads_ILE,
                    out / "load-heatmap.png",
                    args.max_layers,
                    f"{prefix}expert load ÷ mean load, {args.trace}",
                )
            )
        with_reps = [s for s in systems if s.replicas_ILE]
        replicas = next(
            (s for s in with_reps if s.name == args.replicas_system),
            with_reps[0] if with_reps else None,
        )
        if args.plan_strategy:
            from swiftmoe.planning.client import SidecarError

            try:
                reps = plans_from_sidecar(
                    loads_ILE,
                    args.plan_strategy,
                    args.world_size,
                    args.slots,
                    options=options,
                    ranks_per_node=args.ranks_per_node,
                )
            except SidecarError as e:
                raise ValueError(f"--plan-strategy {args.plan_strategy}: {e}") from None
            written.append(
                plot_replicas(
                    reps,
                    out / "replicas.png",
                    args.max_layers,
                    f"{prefix}replicas per expert, strategy {args.plan_strategy}, "
                    f"N={args.world_size} S={args.slots} (plan from the previous iteration)",
                )
            )
        elif replicas is not None:
            written.append(
                plot_replicas(
                    replicas.replicas_ILE,
                    out / "replicas.png",
                    args.max_layers,
                    f"{prefix}replicas per expert, {replicas.name}",
                )
            )
        measured = not systems
        if measured:  # no simulator: the step times measured in the loss files, if any
            systems = [
                SimSystem(name=k, mean_step_s=c.mean_step_s, step_s=c.step_s)
                for k, c in curves.items()
                if c.mean_step_s
            ]
        if systems:
            what = "measured time per step per run" if measured else "time per iteration per system"
            written.append(plot_step_times(systems, out / "step-time.png", f"{prefix}{what}"))
        if curves:
            losses = {k: c.loss for k, c in curves.items()}
            spi = {s.name: s.mean_step_s for s in systems}
            label = "measured wall time" if measured else "simulated wall time"
            target = None
            if "dropless" in losses and spi:
                table = time_to_target_table(losses, spi, args.target_fraction, args.smooth)
                table["time"] = label
                summary["time_to_target"] = table
                target = table["target_loss"]
                print(_table_text(table))
            written.append(
                plot_loss_vs_time(
                    losses,
                    spi,
                    out / "loss-vs-time.png",
                    window=args.smooth,
                    target=target,
                    time_label=label,
                    title=f"{prefix}training loss (moving average of {args.smooth} steps)",
                )
            )
    except ValueError as e:
        print(f"swiftmoe report: error: {e}", file=sys.stderr)
        return 2
    summary["figures"] = [str(w) for w in written]
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    for w in written:
        print(f"wrote {w}")
    return 0


def _table_text(table: Mapping[str, Any]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
