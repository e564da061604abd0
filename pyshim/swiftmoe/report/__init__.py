"""``swiftmoe report``: PNG plots of a routing trace, simulator results and loss curves, and the
convergence arithmetic (steps and time to a target loss) behind them.

Split by concern:

* ``readers``: routing traces, loss curves and simulator results, checked;
* ``convergence``: the pure arithmetic (moving averages, target loss, steps and time to it);
* ``plots``: the figures;
* ``replay``: the replicas a strategy gives a trace, through the real sidecar;
* ``cli``: the command line (``swiftmoe report``, ``python3 -m swiftmoe.report``).

The names below are the report's public surface.
"""

from __future__ import annotations

from swiftmoe.report.cli import main
from swiftmoe.report.convergence import (
    choose_target,
    curve_for_system,
    moving_average,
    steps_to_target,
    table_text,
    time_to_target,
    time_to_target_table,
)
from swiftmoe.report.plots import (
    DPI,
    FIG_WIDTH_PX,
    plot_load_heatmap,
    plot_loss_vs_time,
    plot_replicas,
    plot_step_times,
)
from swiftmoe.report.readers import (
    LossCurve,
    SimSystem,
    read_loss_dir,
    read_loss_file,
    read_sim,
    read_trace,
)
from swiftmoe.report.replay import plans_from_sidecar

__all__ = [
    "DPI",
    "FIG_WIDTH_PX",
    "LossCurve",
    "SimSystem",
    "choose_target",
    "curve_for_system",
    "main",
    "moving_average",
    "plans_from_sidecar",
    "plot_load_heatmap",
    "plot_loss_vs_time",
    "plot_replicas",
    "plot_step_times",
    "read_loss_dir",
    "read_loss_file",
    "read_sim",
    "read_trace",
    "steps_to_target",
    "table_text",
    "time_to_target",
    "time_to_target_table",
]
