"""scripts/gpu_check.py (make gpu-check): its refusal without a GPU, and its code run on CPUs at
a tiny size (gloo, fp32): the JSON it prints, and that a wrong gradient fails it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_calibration import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"
TINY = ["--device", "cpu", "--layers", "2", "--dim", "16", "--hidden", "32", "--experts", "4",
        "--tokens", "64", "--iters", "2", "--warmup", "1", "--timeout", "60"]  # fmt: skip


@pytest.fixture(scope="module")
def gc():
    return load_script("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_a_gpu_it_fails_at_once_and_says_why():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device is visible" in proc.stderr
    assert "--device cpu" in proc.stderr
    assert proc.stdout == ""


def test_help_and_bad_arguments():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "Exit status" in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--top-k", "9", "--experts", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--top-k must be in 1..--experts" in proc.stderr


def test_rel_err(gc):
    b = torch.tensor([3.0, 4.0])
    assert gc.rel_err(b, b) == 0.0
    assert gc.rel_err(torch.tensor([3.0, 4.5]), b) == pytest.approx(0.1)
    assert gc.rel_err(torch.zeros(2), torch.zeros(2)) == 0.0
    assert gc.rel_err(torch.ones(2), torch.zeros(2)) == float("inf")


def test_cpu_run_prints_every_figure_as_json(gc, tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    assert gc.main([*TINY, "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    r = printed
    assert r["ok"] is True and all(r["checks"].values())
    assert (r["backend"], r["dtype"], r["world_size"]) == ("gloo", "float32", 1)
    assert r["tolerance_rel_err"] == 1e-5
    eq = r["equivalence"]
    assert eq["experts_checked"] == 2 * 4 and eq["dense_params_checked"] == 2 * 2 + 2
    assert eq["grouped_gemm"] is False  # grouped GEMMs need CUDA
    for k in ("output_rel_err", "input_grad_rel_err", "dense_grad_rel_err_max"):
        assert 0 <= eq[k] <= 1e-5, (k, eq[k])
    ov = r["overhead"]
    assert ov["unpatched_ms"] > 0 and ov["swiftmoe_ms"] > 0
    assert ov["first_loss"]["swiftmoe"] == pytest.approx(ov["first_loss"]["unpatched"], rel=1e-5)
    assert r["expert_fwd_bwd_tflops"] is None  # GPU only
    assert r["cost_model_default_tflops"] == 580.0
    assert r["config"]["tokens"] == 64 and r["wall_s"] > 0
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_a_wrong_expert_gradient_fails_the_check(gc, monkeypatch, capsys):
    from swiftmoe.engine.layer import ExpertLayer

    real = ExpertLayer.slot_grads
    monkeypatch.setattr(ExpertLayer, "slot_grads", lambda self, *a: real(self, *a) * 1.05)
    assert gc.main(TINY) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is False and r["checks"]["expert_grads"] is False
    assert r["checks"]["output"] is True
    assert r["equivalence"]["expert_grad_rel_err_max"] == pytest.approx(0.05, rel=1e-3)


def test_bf16_run_measures_both_systems_against_fp32(gc, capsys):
    assert gc.main([*TINY, "--dtype", "bfloat16"]) == 0
    r = json.loads(capsys.readouterr().out)
    acc = r["equivalence"]["accuracy"]
    assert r["checks"]["accuracy"] is True and r["tolerance_rel_err"] == 1.6e-2
    for what in ("output", "input_grad"):
        unpatched, swiftmoe = acc[f"unpatched_{what}_vs_fp32"], acc[f"swiftmoe_{what}_vs_fp32"]
        assert 0 < unpatched < 0.2 and swiftmoe <= gc.ACCURACY_FACTOR * unpatched
