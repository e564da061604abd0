"""The report's figures: PNGs of expert load, replicas, step time and loss against time.

Each function draws one figure with matplotlib (Agg) at :data:`FIG_WIDTH_PX` wide and writes it;
``pip install .[report]`` brings matplotlib.

Shape legend: I iterations, L MoE layers, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from swiftmoe.report.convergence import curve_for_system, moving_average
from swiftmoe.report.readers import COMPONENTS, SimSystem

__all__ = [
    "DPI",
    "FIG_WIDTH_PX",
    "plot_load_heatmap",
    "plot_loss_vs_time",
    "plot_replicas",
    "plot_step_times",
]

DPI = 100
FIG_WIDTH_PX = 1200
_PANEL_IN = 2.1  # height of one per-layer panel
_TITLE_IN = 0.7


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
    comps = [c for c in COMPONENTS if all(c in s.components_s for s in order)]
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
