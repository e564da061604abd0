"""scripts/calibrate_gpu.py and scripts/overhead_gpu.py: the GPU code paths run on CPU at a tiny
size (bf16 as on a GPU, and fp32), the calibration table's format round trip, the committed tables,
and the world-size-1 overhead run.

Shape legend: T tokens, D model dim, F expert hidden dim.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"{name}_under_test", REPO / "scripts" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cal():
    return load_script("calibrate_gpu")


TINY = {"tiny (d16 f32 swiglu)": (16, 32, "swiglu"), "tiny (d16 f24 gelu)": (16, 24, "gelu")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_calibrate_tiny_on_cpu_round_trips(cal, tmp_path, dtype):
    torch.set_num_threads(1)
    table = cal.calibrate(torch.device("cpu"), dtype, TINY, [16, 64], warmup=1, reps=3)
    cal.validate_table(table)
    assert table["device"].startswith("CPU (") and table["threads"] == 1
    assert table["dtype"] == str(dtype).removeprefix("torch.")
    assert table["torch"] == torch.__version__
    assert list(table["shapes"]) == list(TINY)
    for name, (d, f, act) in TINY.items():
        rows = table["shapes"][name]
        assert [r["tokens"] for r in rows] == [16, 64]
        for r in rows:
            assert 0 < r["fwd_ms"] and 0 < r["fwd_bwd_ms"]
            want = cal.flops_fwd_bwd(r["tokens"], d, f, act) / (r["fwd_bwd_ms"] * 1e-3) / 1e12
            assert r["fwd_bwd_tflops"] == pytest.approx(want, rel=1e-2, abs=1e-4)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(table, indent=1))
    back = json.loads(p.read_text())
    assert back == table
    cal.validate_table(back)


def test_flops_formula_matches_the_committed_h200_table(cal):
    table = json.loads((REPO / "calibration" / "h200-expert-ffn.json").read_text())
    cal.validate_table(table)
    for name, rows in table["shapes"].items():
        m = cal._SHAPE_RE.search(name)
        d, f, act = int(m.group(1)), int(m.group(2)), m.group(3)
        for r in rows:
            got = cal.flops_fwd_bwd(r["tokens"], d, f, act) / (r["fwd_bwd_ms"] * 1e-3) / 1e12
            assert got == pytest.approx(r["fwd_bwd_tflops"], rel=0.02, abs=0.1), (name, r)


def test_committed_cpu_table_is_labelled_and_valid(cal):
    p = REPO / "calibration" / "cpu-expert-ffn.json"
    table = json.loads(p.read_text())
    cal.validate_table(table)
    assert table["device"].startswith("CPU (") and table["threads"] == 1
    assert table["dtype"] == "float32"
    assert set(cal.CPU_SHAPES) <= set(table["shapes"])


def test_validate_table_names_the_field(cal):
    good = {
        "device": "X",
        "torch": "2",
        "shapes": {
            "a (d8 f16 gelu)": [
                {"tokens": 16, "fwd_ms": 1, "fwd_bwd_ms": 2, "fwd_bwd_tflops": 0.1},
                {"tokens": 32, "fwd_ms": 1, "fwd_bwd_ms": 2, "fwd_bwd_tflops": 0.2},
            ]
        },
    }
    cal.validate_table(good)

    def bad(mutate, want):
        t = copy.deepcopy(good)
        mutate(t)
        with pytest.raises(ValueError, match=want):
            cal.validate_table(t)

    bad(lambda t: t.pop("device"), "'device'")
    bad(lambda t: t.update(shapes={}), "'shapes'")
    bad(lambda t: t["shapes"].update({"no shape": [{"tokens": 1}]}), "must end in")
    bad(lambda t: t["shapes"]["a (d8 f16 gelu)"][1].update(tokens=16), "increase")
    bad(lambda t: t["shapes"]["a (d8 f16 gelu)"][0].pop("fwd_bwd_ms"), r"\[0\]\.fwd_bwd_ms")
    bad(lambda t: t["shapes"]["a (d8 f16 gelu)"][0].update(fwd_ms=-1), "fwd_ms")


@pytest.mark.parametrize(
    "device, want",
    [
        ("NVIDIA H100 80GB HBM3", "h100-expert-ffn.json"),
        ("NVIDIA H200", "h200-expert-ffn.json"),
        ("NVIDIA A100-SXM4-80GB", "a100-expert-ffn.json"),
        ("CPU (Some CPU, 1 torch thread)", "cpu-expert-ffn.json"),
    ],
)
def test_default_out(cal, device, want):
    assert cal.default_out({"device": device}).name == want


def test_main_cpu_writes_a_valid_table(cal, tmp_path):
    out = tmp_path / "c.json"
    rc = cal.main(["--device", "cpu", "--tokens", "16,32", "--shapes", "train-lm (d96 f192 swiglu)",
                   "--warmup", "0", "--reps", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    table = json.loads(out.read_text())
    cal.validate_table(table)
    assert [r["tokens"] for r in table["shapes"]["train-lm (d96 f192 swiglu)"]] == [16, 32]
    with pytest.raises(SystemExit):
        cal.main(["--device", "cpu", "--shapes", "nope", "--out", str(out)])
    with pytest.raises(SystemExit):
        cal.main(["--device", "cpu", "--tokens", "1,x", "--out", str(out)])


def test_swiglu_expert_is_the_engines(cal):
    from swiftmoe.nn import swiglu_expert

    weights, fwd = cal.make_expert(8, 12, "swiglu", torch.device("cpu"), torch.float32)
    x_TD = torch.randn(5, 8)
    torch.testing.assert_close(fwd(x_TD), swiglu_expert(x_TD, *weights))
    with pytest.raises(ValueError, match="activation"):
        cal.make_expert(8, 12, "relu", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_overhead_runs_at_world_size_one_on_cpu(tmp_path, dtype):
    ov = load_script("overhead_gpu")
    out = tmp_path / "o.json"
    rc = ov.main(["--device", "cpu", "--dtype", dtype, "--layers", "2", "--dim", "16",
                  "--hidden", "32", "--experts", "4", "--tokens", "64", "--iters", "3",
                  "--warmup", "1", "--timeout", "60", "--json", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["backend"] == "gloo" and r["world_size"] == 1 and r["dtype"] == dtype
    # the same weights on the same input: the engine computes the same loss
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert r["first_loss"]["swiftmoe"] == pytest.approx(r["first_loss"]["unpatched"], rel=tol)
    # and so does the static grouped-GEMM baseline
    assert r["first_loss"]["static_grouped"] == pytest.approx(r["first_loss"]["unpatched"], rel=tol)
    assert r["unpatched_ms"] > 0 and r["swiftmoe_ms"] > 0 and r["static_grouped_ms"] > 0
    assert r["swiftmoe_over_static"] == pytest.approx(
        r["swiftmoe_ms"] / r["static_grouped_ms"], rel=1e-3
    )
    assert r["first_loss"]["static_fp32_master"] == pytest.approx(
        r["first_loss"]["unpatched"], rel=tol
    )
    assert r["swiftmoe_over_static_fp32_master"] == pytest.approx(
        r["swiftmoe_ms"] / r["static_fp32_master_ms"], rel=1e-3
    )
    assert r["overhead_ms"] == pytest.approx(r["swiftmoe_ms"] - r["unpatched_ms"], abs=1e-3)
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_static_grouped_baseline_computes_the_unpatched_models_gradients():
    """The baseline is the same model run the other way: equal outputs and gradients (fp32)."""
    ov = load_script("overhead_gpu")
    torch.manual_seed(0)
    net = ov.Net(2, 16, 32, 4, 2)
    static = ov.static_grouped(net)
    x = torch.randn(40, 16)
    outs = []
    for m in (net, static):
        y = m(x)
        y.pow(2).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(net.named_parameters(), static.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_overhead_profile_writes_a_table_per_system(tmp_path):
    ov = load_script("overhead_gpu")
    out = tmp_path / "prof" / "p.txt"
    rc = ov.main(["--device", "cpu", "--layers", "1", "--dim", "16", "--hidden", "32",
                  "--experts", "4", "--tokens", "32", "--iters", "1", "--warmup", "0",
                  "--timeout", "60", "--profile", str(out)])  # fmt: skip
    assert rc == 0
    text = out.read_text()
    for name in ("unpatched", "static_grouped", "swiftmoe"):
        assert f"== {name}: 3 steps, by self_cpu_time_total" in text
    assert "aten::" in text


def test_master_step_on_fp32_weights_is_the_plain_optimizer_step():
    """With fp32 working weights the masters are exact copies, so the steps agree bit for bit;
    with bf16 ones the working weights are the masters rounded."""
    ov = load_script("overhead_gpu")
    torch.manual_seed(0)
    plain = ov.Net(1, 16, 32, 4, 2)
    mixed = copy.deepcopy(plain)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    step = ov.MasterStep(mixed, torch.optim.AdamW, lr=1e-2)
    xs = [torch.randn(24, 16) for _ in range(3)]
    for x in xs:
        plain(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step(x)
    for a, b in zip(plain.parameters(), mixed.parameters(), strict=True):
        assert torch.equal(a, b)
    half = ov.MasterStep(copy.deepcopy(plain).to(torch.bfloat16), torch.optim.AdamW, lr=1e-2)
    half(xs[0].to(torch.bfloat16))
    for p, m in zip(half.params, half.masters, strict=True):
        assert m.dtype == torch.float32 and p.grad is None
        assert torch.equal(p, m.detach().to(torch.bfloat16))
