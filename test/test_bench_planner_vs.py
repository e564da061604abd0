"""scripts/bench_planner_vs.sh: builds the planner's benchmarks at a commit and from the
working tree and prints both side by side. Timings are not checked (a benchmark, not a
test); the table and the refusals are."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_planner_vs.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not (REPO / ".git").exists(), reason="needs go and a git checkout"
)


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_compares_head_with_the_working_tree():
    r = _run("-r", "2", "-n", "2", "-b", "SwiftMoEPlanSequential$", "HEAD")
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("BenchmarkSwiftMoEPlanSequential ")]
    assert len(rows) == 1, r.stdout
    ref_min, ref_med, new_min, new_med, ratio = (float(v) for v in rows[0].split()[1:])
    assert 0 < ref_min <= ref_med and 0 < new_min <= new_med
    assert ratio == pytest.approx(new_med / ref_med, rel=2e-3)
    assert "round 2 of 2" in r.stdout  # progress on the way
    # The reference build's worktree is gone afterwards.
    wt = subprocess.run(
        ["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert len(wt.stdout.strip().splitlines()) == 1, wt.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no-such-ref-xyz"], r"'no-such-ref-xyz' is not a commit"),
        (["-r", "0", "HEAD"], r"-r and -n take a positive whole number, got '0'"),
        ([], r"give one REF"),
        (
            ["-b", "NoSuchBenchmark$", "-r", "1", "-n", "1", "HEAD"],
            r"no benchmark matched; check -b",
        ),
    ],
)
def test_refuses_bad_input_naming_it(args, says):
    r = _run(*args)
    assert r.returncode != 0
    assert re.search(says, r.stderr), r.stderr


def test_refuses_a_commit_without_the_planner():
    roots = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    root = roots[-1]
    has = subprocess.run(
        ["git", "cat-file", "-e", f"{root}:plugins/swiftmoe"], cwd=REPO, check=False
    )
    if has.returncode == 0:
        pytest.skip("the first commit already has the planner")
    r = _run(root, timeout=120)
    assert r.returncode == 2
    assert "has no plugins/swiftmoe to benchmark" in r.stderr, r.stderr


def test_help():
    r = _run("-h", timeout=30)
    assert r.returncode == 0
    assert "usage: scripts/bench_planner_vs.sh" in r.stdout and "-r ROUNDS" in r.stdout


def test_instructions_per_plan_or_a_clear_refusal():
    """-i adds each build's instructions per plan (cachegrind), or, without valgrind, refuses
    before building anything, naming what to install."""
    args = ["-i", "-r", "1", "-n", "2", "-b", "SwiftMoEPlanSequential$", "HEAD"]
    if shutil.which("valgrind") is None:
        r = _run(*args, timeout=60)
        assert r.returncode == 2
        assert "-i needs valgrind" in r.stderr, r.stderr
        return
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    assert "instructions per plan (cachegrind" in r.stdout, r.stdout
    rows = [
        ln.split()
        for ln in r.stdout.splitlines()
        if ln.strip().startswith("BenchmarkSwiftMoEPlanSequential ") and " ref " in ln
    ]
    assert len(rows) == 1, r.stdout
    _, ref_label, ref_m, ref_unit, new_label, new_m, new_unit = rows[0]
    assert (ref_label, ref_unit, new_label, new_unit) == ("ref", "M", "new", "M")
    # A plan of the target layout is tens of millions of instructions in either build.
    assert 5 < float(ref_m) < 500 and 5 < float(new_m) < 500, rows[0]
