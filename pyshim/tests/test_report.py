"""swiftmoe.report: convergence arithmetic on hand-made curves, input parsing, PNGs of the right
size from small synthetic inputs, the replicas plot's sidecar path, and scripts/convergence.py's
summary.

Shape legend: I iterations, L layers, E experts.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from swiftmoe import report

REPO = Path(__file__).resolve().parents[2]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_drawn(path: Path, width: int, height: int) -> None:
    import matplotlib.image as mpimg

    got = png_size(path)
    assert got == (width, height), f"{path.name}: got {got}, want {(width, height)}"
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.05, f"{path.name} looks blank"


# ---- convergence arithmetic -----------------------------------------------------------------------


def test_moving_average_trailing_window():
    assert report.moving_average([4, 2, 6, 0], 2) == [4, 3, 4, 3]
    assert report.moving_average([4, 2, 6, 0], 1) == [4, 2, 6, 0]
    assert report.moving_average([3, 3, 6], 10) == [3, 3, 4]
    assert report.moving_average([], 3) == []
    with pytest.raises(ValueError, match="window"):
        report.moving_average([1.0], 0)


@pytest.mark.parametrize(
    "losses, target, window, want",
    [
        ([5, 4, 3, 2, 1], 2.5, 1, 4),  # raw loss 2 at step 4
        ([5, 4, 3, 2, 1], 2.5, 2, 4),  # smoothed 5, 4.5, 3.5, 2.5: reaches at step 4
        ([5, 4, 3, 2, 1], 2.0, 2, 5),  # smoothed 1.5 at step 5
        ([5, 1, 5, 5, 5], 2.0, 1, 2),  # a dip counts without smoothing
        ([5, 1, 5, 5, 5], 2.0, 2, None),  # ... but not once smoothed (3, 3, 5, 5)
        ([3, 3, 3], 1.0, 1, None),
    ],
)
def test_steps_to_target(losses, target, window, want):
    got = report.steps_to_target(losses, target, window)
    assert got == want, f"got {got}, want {want}"


def test_choose_target_is_the_smoothed_loss_at_the_fraction():
    losses = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert report.choose_target(losses, 0.8, 1) == 3  # step 8 of 10
    assert report.choose_target(losses, 0.8, 2) == 3.5  # mean of steps 7 and 8
    assert report.choose_target(losses, 1.0, 1) == 1
    # the dropless curve itself reaches its own target no later than the fraction
    assert report.steps_to_target(losses, report.choose_target(losses, 0.8, 3), 3) <= 8
    with pytest.raises(ValueError, match="fraction"):
        report.choose_target(losses, 0.0)
    with pytest.raises(ValueError, match="empty"):
        report.choose_target([], 0.8)


@pytest.mark.parametrize(
    "system, want",
    [
        ("swiftmoe", "dropless"),
        ("static-dropless", "dropless"),
        ("flexmoe-50", "dropless"),
        ("bound", "dropless"),
        ("static-cf1.0", "cf1.0"),
        ("static cf=2", "cf2.0"),
        ("static (capacity factor 1.25)", "cf1.25"),
        ("deepspeed capacity_2.0", "cf2.0"),
    ],
)
def test_curve_for_system(system, want):
    assert report.curve_for_system(system) == want


def test_time_to_target_table():
    dropless = [10, 8, 6, 5, 4, 3, 2.5, 2, 1.8, 1.6]  # target (0.8, window 1) = 2.0 at step 8
    cf1 = [10, 9, 8, 7, 6, 5, 4, 3, 2.5, 2.2]  # never reaches 2.0
    cf2 = [10, 8, 7, 6, 5, 4, 3, 2.5, 2.0, 1.9]  # step 9
    spi = {"swiftmoe": 1.0, "static-dropless": 2.0, "static-cf1.0": 0.5, "static-cf2.0": 0.9,
           "static-cf1.5": 0.7}  # fmt: skip
    t = report.time_to_target_table({"dropless": dropless, "cf1.0": cf1, "cf2.0": cf2}, spi, 0.8, 1)
    assert t["target_loss"] == 2.0
    rows = {r["system"]: r for r in t["rows"]}
    assert rows["swiftmoe"]["steps"] == 8 and rows["swiftmoe"]["time_s"] == 8.0
    assert rows["static-dropless"]["time_s"] == 16.0
    assert rows["static-cf1.0"]["steps"] is None and rows["static-cf1.0"]["time_s"] is None
    assert rows["static-cf2.0"]["steps"] == 9
    assert rows["static-cf2.0"]["time_s"] == pytest.approx(8.1)
    assert rows["static-cf1.5"]["curve"] is None and rows["static-cf1.5"]["steps"] is None
    assert rows["swiftmoe"]["vs_best"] == 1.0
    assert rows["static-cf2.0"]["vs_best"] == pytest.approx(8.1 / 8.0)
    assert rows["static-cf1.0"]["vs_best"] is None
    with pytest.raises(ValueError, match="dropless"):
        report.time_to_target_table({"cf1.0": cf1}, spi)
    with pytest.raises(ValueError, match="seconds_per_iteration"):
        report.time_to_target_table({"dropless": dropless}, {"x": 0.0})


# ---- inputs -------------------------------------------------------------------------------------


def write_trace(path: Path, loads_ILE) -> Path:
    path.write_text(
        "".join(json.dumps({"iteration": i, "loads": x}) + "\n" for i, x in enumerate(loads_ILE))
    )
    return path


def synthetic_trace(I: int = 40, L: int = 2, E: int = 4):  # noqa: E741
    # expert (i // 10) % E is hot for 10 iterations at a time; every layer differs by a shift
    return [
        [[400 if e == (i // 10 + layer) % E else 100 for e in range(E)] for layer in range(L)]
        for i in range(I)
    ]


def test_read_trace_orders_iterations_and_names_bad_lines(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(
        json.dumps({"iteration": 1, "loads": [[1, 2]]})
        + "\n\n"
        + json.dumps({"iteration": 0, "loads": [[3, 4]]})
        + "\n"
    )
    assert report.read_trace(p) == [[[3, 4]], [[1, 2]]]
    cases = {
        "not JSON": "{nope\n",
        "routing trace": json.dumps({"loads": [[1]]}) + "\n",
        "integer token counts": json.dumps({"iteration": 0, "loads": [[1, -2]]}) + "\n",
        "experts per layer": json.dumps({"iteration": 0, "loads": [[1, 2]]})
        + "\n"
        + json.dumps({"iteration": 1, "loads": [[1, 2, 3]]})
        + "\n",
        "iteration is": json.dumps({"iteration": "x", "loads": [[1]]}) + "\n",
    }
    for want, text in cases.items():
        p.write_text(text)
        with pytest.raises(ValueError, match=want):
            report.read_trace(p)
    p.write_text("")
    with pytest.raises(ValueError, match="no JSON lines"):
        report.read_trace(p)


def test_read_sim_formats():
    flat = report.read_sim({"swiftmoe": 0.5, "static-cf1.0": 0.75})
    assert [(s.name, s.mean_step_s) for s in flat] == [("swiftmoe", 0.5), ("static-cf1.0", 0.75)]
    full = report.read_sim(
        {
            "systems": [
                {"name": "a", "step_ms": [1.0, 3.0], "tokens_dropped": 7},
                {"name": "b", "mean_step_s": 0.25, "replicas": [[[1, 2]], [[2, 1]]]},
            ]
        }
    )
    assert full[0].mean_step_s == pytest.approx(2e-3)
    assert full[0].step_s == pytest.approx([1e-3, 3e-3])
    assert full[0].tokens_dropped == 7
    assert full[1].replicas_ILE == [[[1, 2]], [[2, 1]]]
    for bad, want in [
        ({}, "JSON object"),
        ({"x": 0}, "mean_step_s"),
        ({"systems": [{"name": "a", "step_s": []}]}, "step_s"),
        ({"systems": [{"step_s": [1]}]}, "name"),
        ({"systems": [{"name": "a", "mean_step_s": 1, "replicas": [[1]]}]}, "replicas"),
        ({"systems": 3}, "list or an object"),
    ]:
        with pytest.raises(ValueError, match=want):
            report.read_sim(bad)


def write_losses(d: Path, curves: dict[str, list[float]], step_s: float = 0.1) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, losses in curves.items():
        with (d / f"loss-{name}.jsonl").open("w") as f:
            for i, v in enumerate(losses):
                dropped = 0 if name == "dropless" else 10
                f.write(
                    json.dumps({"step": i, "loss": v, "dropped": dropped, "step_s": step_s}) + "\n"
                )
    return d


def test_read_loss_dir(tmp_path):
    d = write_losses(tmp_path / "l", {"dropless": [3, 2, 1], "cf1.0": [3, 2.5, 2]})
    curves = report.read_loss_dir(d)
    assert sorted(curves) == ["cf1.0", "dropless"]
    assert curves["cf1.0"].loss == [3, 2.5, 2] and curves["cf1.0"].dropped == [10, 10, 10]
    assert curves["dropless"].mean_step_s == pytest.approx(0.1)
    (d / "loss-bad.jsonl").write_text('{"step": 0, "loss": 1}\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match="steps must count up"):
        report.read_loss_dir(d)
    with pytest.raises(ValueError, match="no loss-NAME.jsonl"):
        report.read_loss_dir(tmp_path)


# ---- plots --------------------------------------------------------------------------------------


def test_plots_have_the_right_size_and_are_drawn(tmp_path):
    loads = synthetic_trace(I=40, L=3, E=6)
    h = round((0.7 + 2.1 * 3) * report.DPI)
    p = report.plot_load_heatmap(loads, tmp_path / "h.png")
    assert_drawn(p, report.FIG_WIDTH_PX, h)
    reps = [[[2 if x == max(layer) else 1 for x in layer] for layer in it] for it in loads]
    assert_drawn(report.plot_replicas(reps, tmp_path / "r.png"), report.FIG_WIDTH_PX, h)
    # more layers than --max-layers: the panels are capped
    many = synthetic_trace(I=10, L=9, E=4)
    p = report.plot_load_heatmap(many, tmp_path / "h9.png", max_layers=4)
    assert png_size(p) == (report.FIG_WIDTH_PX, round((0.7 + 2.1 * 4) * report.DPI))
    systems = report.read_sim(
        {
            "systems": [
                {"name": "swiftmoe", "step_s": [0.1, 0.12, 0.11]},
                {"name": "static-cf1.0", "step_s": [0.2, 0.21, 0.19]},
            ]
        }  # fmt: skip
    )
    assert_drawn(report.plot_step_times(systems, tmp_path / "s.png"), report.FIG_WIDTH_PX, 480)
    curves = {
        "dropless": [3.0 - 0.01 * i for i in range(100)],
        "cf1.0": [3.0 - 0.008 * i for i in range(100)],
    }
    p = report.plot_loss_vs_time(
        curves, {"swiftmoe": 0.1, "static-cf1.0": 0.2}, tmp_path / "l.png", window=5, target=2.2
    )
    assert_drawn(p, report.FIG_WIDTH_PX, 480)


def test_main_writes_every_figure_and_the_table(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.jsonl", synthetic_trace())
    sim = tmp_path / "sim.json"
    reps = [[[2, 1, 1, 1] if i % 2 else [1, 2, 1, 1] for _ in range(2)] for i in range(40)]
    sim.write_text(
        json.dumps(
            {
                "systems": [
                    {"name": "swiftmoe", "step_s": [0.1] * 40, "replicas": reps},
                    {"name": "static-cf1.0", "mean_step_s": 0.08},
                ]
            }
        )
    )
    loss = write_losses(
        tmp_path / "loss",
        {
            "dropless": [3.0 - 0.02 * i for i in range(50)],
            "cf1.0": [3.0 - 0.01 * i for i in range(50)],
        },
    )
    out = tmp_path / "out"
    rc = report.main(["--trace", str(trace), "--sim", str(sim), "--loss", str(loss),
                      "--out", str(out), "--smooth", "1"])  # fmt: skip
    assert rc == 0
    for name in ("load-heatmap.png", "replicas.png", "step-time.png", "loss-vs-time.png"):
        assert png_size(out / name)[0] == report.FIG_WIDTH_PX, name
    summary = json.loads((out / "report.json").read_text())
    rows = {r["system"]: r for r in summary["time_to_target"]["rows"]}
    # target = dropless loss at step 40 = 3 - 0.02*39 = 2.22; dropless reaches it at step 40,
    # cf1.0 (3 - 0.01*i) would need step 79: not within its 50 steps.
    assert summary["time_to_target"]["target_loss"] == pytest.approx(2.22)
    assert rows["swiftmoe"]["steps"] == 40 and rows["swiftmoe"]["time_s"] == pytest.approx(4.0)
    assert rows["static-cf1.0"]["steps"] is None
    assert "| swiftmoe | dropless |" in capsys.readouterr().out


def test_main_without_sim_uses_measured_step_times(tmp_path):
    loss = write_losses(
        tmp_path / "loss", {"dropless": [2, 1.5, 1, 0.9], "cf2.0": [2, 1.6, 1.2, 1.0]}
    )
    rc = report.main(["--loss", str(loss), "--out", str(tmp_path / "o"), "--smooth", "1"])
    assert rc == 0
    t = json.loads((tmp_path / "o" / "report.json").read_text())["time_to_target"]
    assert t["time"] == "measured wall time"
    assert {r["system"] for r in t["rows"]} == {"dropless", "cf2.0"}
    for name in ("step-time.png", "loss-vs-time.png"):
        assert_drawn(tmp_path / "o" / name, report.FIG_WIDTH_PX, 480)


def test_main_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"iteration": 0, "loads": [[1, "x"]]}\n')
    assert report.main(["--trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "t.jsonl:1" in err and "loads" in err
    with pytest.raises(SystemExit):
        report.main(["--out", str(tmp_path / "o")])  # no input at all
    with pytest.raises(SystemExit):
        report.main(["--trace", str(bad), "--plan-strategy", "swiftmoe", "--out", "o"])


# ---- replicas from the real strategy through the sidecar -----------------------------------------


def _sidecar_or_skip():
    from swiftmoe import planning as sc

    try:
        sc.find_sidecar_binary()
    except sc.SidecarNotFoundError as e:
        pytest.skip(f"needs the sidecar binary: {e}")


def test_plans_from_sidecar_follow_the_hot_expert():
    _sidecar_or_skip()
    E = 4
    hot = [[[1000 if e == (i // 5) % E else 50 for e in range(E)]] for i in range(12)]
    # 4 ranks of 2 slots: the hot expert (1000 of 1150 tokens) needs 4 slots to balance
    reps = report.plans_from_sidecar(hot, "swiftmoe", world_size=4, slots_per_rank=2, timeout_s=10)
    assert len(reps) == 12 and all(sum(r[0]) == 8 for r in reps)
    assert reps[0][0] == [2, 2, 2, 2]  # the initial static placement
    for i in range(1, 12):  # planned from iteration i-1's loads
        want_hot = ((i - 1) // 5) % E
        assert max(range(E), key=lambda e: reps[i][0][e]) == want_hot, (i, reps[i])
        assert reps[i][0][want_hot] > 2
    static = report.plans_from_sidecar(hot[:3], "static", world_size=2, slots_per_rank=2)
    assert static == [[[1, 1, 1, 1]]] * 3


# ---- scripts/convergence.py summarize -----------------------------------------------------------


def load_convergence():
    spec = importlib.util.spec_from_file_location(
        "convergence_under_test", REPO / "scripts" / "convergence.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_convergence_summarize(tmp_path, capsys):
    conv = load_convergence()
    loss = write_losses(
        tmp_path,
        {
            "dropless": [3.0 - 0.02 * i for i in range(50)],
            "cf1.0": [3.0 - 0.01 * i for i in range(50)],
            "cf2.0": [3.0 - 0.019 * i for i in range(50)],
        },  # fmt: skip
        step_s=0.2,
    )
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"swiftmoe": 0.1, "static-cf2.0": 0.09, "static-cf1.0": 0.08}))
    s = conv.summarize(loss, str(times), 0.8, 1, assignments_per_step=100)
    c = s["curves"]
    assert c["dropless"]["steps_to_target"] == 40
    assert c["cf2.0"]["steps_to_target"] == 43  # 3 - 0.019*i <= 2.22 first at i = 42
    assert c["cf1.0"]["steps_to_target"] is None
    assert c["cf1.0"]["dropped_fraction"] == pytest.approx(10 / 100)
    assert c["dropless"]["measured_time_to_target_s"] == pytest.approx(40 * 0.2)
    rows = {r["system"]: r for r in s["systems"]["rows"]}
    assert rows["static-cf2.0"]["time_s"] == pytest.approx(43 * 0.09)
    assert rows["swiftmoe"]["time_s"] == pytest.approx(4.0)
    assert rows["static-cf1.0"]["time_s"] is None
    rc = conv.main(["summarize", "--loss", str(loss), "--step-times", str(times), "--smooth", "1"])
    assert rc == 0
    assert "| cf1.0 | not in 50 |" in capsys.readouterr().out
    assert (
        json.loads((loss / "summary.json").read_text())["curves"]["cf2.0"]["steps_to_target"] == 43
    )


def swiftmoe_sim_doc(I: int = 5) -> dict:  # noqa: E741
    """A document in the layout `swiftmoe sim --output` writes (summary + iterations)."""
    systems = {"bound": 10.0, "swiftmoe": 10.5, "static-cf1.0": 10.0}
    comp = {"compute_ms": 4.0, "a2a_ms": 1.0, "transfer_ms": 5.0, "migration_ms": 0.0}
    return {
        "systems": list(systems),
        "summary": {
            "systems": {
                n: {
                    "mean_step_ms": ms,
                    **{f"mean_{k}": v for k, v in comp.items()},
                    "tokens_dropped": 7 if "cf" in n else 0,
                }
                for n, ms in systems.items()
            }
        },
        "iterations": [
            {
                "iteration": i,
                "systems": {n: {"step_ms": ms + i, **comp} for n, ms in systems.items()},
            }
            for i in range(I)
        ],
    }


def test_read_sim_reads_the_simulators_output(tmp_path):
    p = tmp_path / "sim.json"
    p.write_text(json.dumps(swiftmoe_sim_doc()))
    systems = {s.name: s for s in report.read_sim(p)}
    assert list(systems) == ["bound", "swiftmoe", "static-cf1.0"]
    sw = systems["swiftmoe"]
    assert sw.mean_step_s == pytest.approx(10.5e-3)
    assert sw.step_s == pytest.approx([(10.5 + i) * 1e-3 for i in range(5)])
    assert sw.components_s == pytest.approx(
        {"compute": 4e-3, "a2a": 1e-3, "transfer": 5e-3, "migration": 0.0}
    )
    assert systems["static-cf1.0"].tokens_dropped == 7
    assert sw.replicas_ILE is None
    doc = swiftmoe_sim_doc()
    doc["summary"]["systems"]["swiftmoe"]["mean_step_ms"] = "fast"
    with pytest.raises(ValueError, match=r"summary.systems\['swiftmoe'\].mean_step_ms"):
        report.read_sim(doc)
    out = report.plot_step_times(report.read_sim(p), tmp_path / "s.png")
    assert_drawn(out, report.FIG_WIDTH_PX, 480)


def test_convergence_run_tiny(tmp_path):
    """Two 4-step runs under torchrun (2 gloo ranks, the static strategy through the sidecar)."""
    _sidecar_or_skip()
    conv = load_convergence()
    out = tmp_path / "conv"
    small = ["--train-arg=--d-model=32", "--train-arg=--d-ff=32", "--train-arg=--layers=1",
             "--train-arg=--seq-len=32", "--train-arg=--batch-size=4",
             "--train-arg=--corpus-bytes=100000"]  # fmt: skip
    rc = conv.main(["run", "--steps", "4", "--runs", "dropless,cf1.0", "--timeout", "240",
                    "--smooth", "2", "--out", str(out), *small])  # fmt: skip
    assert rc == 0, (out / "log-cf1.0.txt").read_text()[-2000:] if out.exists() else "no output"
    curves = report.read_loss_dir(out)
    assert sorted(curves) == ["cf1.0", "dropless"]
    for c in curves.values():
        assert len(c.loss) == 4 and len(c.step_s) == 4
    assert sum(curves["dropless"].dropped) == 0
    assert sum(curves["cf1.0"].dropped) > 0  # the router is uneven at initialization
    s = json.loads((out / "summary.json").read_text())
    # 2 ranks x 4 sequences x 32 tokens x top-2 x 1 layer
    assert s["meta"]["assignments_per_step"] == 2 * 4 * 32 * 2 * 1
    assert s["curves"]["dropless"]["steps_to_target"] is not None
