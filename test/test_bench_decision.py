"""scripts/bench_decision.py: records a simulated workload's burst decisions and times them.
Timings are not checked (a benchmark, not a test); the report, the progress and the refusals
are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_decision.py"
sys.path.insert(0, str(REPO / "pyshim"))

from swiftmoe.engine import native  # noqa: E402


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(not native.available(), reason="needs the native library (make build)")
def test_times_the_decisions_of_a_simulated_run():
    r = _run("--iterations", "6", "--repeats", "2", "--cold", "--numpy", "--layer-call")
    assert r.returncode == 0, r.stderr
    assert "simulating 6 iterations of moving-hot E=32 top-2" in r.stderr
    assert re.search(r"timing \d+ decisions", r.stderr), r.stderr
    line = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(
        r"moving-hot E=32 top-2, 16 GPUs in nodes of 8, 4 slots, 50 GB/s: (\d+) decisions, "
        r"(\d+) bursts; warm median (\d+) us, p90 (\d+) us; cold median (\d+) us, p90 (\d+) us; "
        r"NumPy median (\d+) us, p90 (\d+) us; layer call median (\d+) us, p90 (\d+) us; "
        r"layer call again median (\d+) us, p90 (\d+) us; "
        r"split \(placement split before\) median (\d+) us, p90 (\d+) us; "
        r"in two calls with the step median (\d+) us, p90 (\d+) us; "
        r"in one call with the step median (\d+) us, p90 (\d+) us; "
        r"split \(new placement\) median (\d+) us, p90 (\d+) us; "
        r"in two calls with the step median (\d+) us, p90 (\d+) us; "
        r"in one call with the step median (\d+) us, p90 (\d+) us; "
        r"layer call cold median (\d+) us, p90 (\d+) us",
        line,
    )
    assert m, line
    n, bursts, *us = (int(v) for v in m.groups())
    # The moving hot set passes the threshold from its first move on, and bursts pay there.
    assert 1 <= n <= 6 and bursts >= n
    warm, warm90, cold, cold90, slow, slow90, call, call90, again, again90 = us[:10]
    *whole, ccold, ccold90 = us[10:]
    assert 0 < warm <= warm90 and 0 < cold <= cold90 and 0 < slow <= slow90
    assert 0 < call <= call90 and 0 < again <= again90 and 0 < ccold <= ccold90
    for median, p90 in zip(whole[::2], whole[1::2], strict=True):  # split, two calls, one call
        assert 0 < median <= p90


def test_a_workload_with_no_decision_says_so():
    if not native.available():
        pytest.skip("needs the native library (make build)")
    r = _run("--workload", "uniform", "--iterations", "3")
    assert r.returncode == 0, r.stderr
    assert "no layer call passed the burst threshold; nothing to time" in r.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (("--gpus", "0"), "--gpus is 0: pass 1 or more"),
        (("--repeats", "0"), "--repeats is 0: pass 1 or more"),
        (("--inter-bw", "0"), "--inter-bw is 0: pass GB/s > 0"),
        (("--workload", "zipf"), "invalid choice: 'zipf'"),
    ],
)
def test_bad_arguments_are_refused(args, words):
    r = _run(*args)
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_without_the_native_library_it_says_why():
    r = _run("--iterations", "2", env={"SWIFTMOE_NATIVE": "0"})
    assert r.returncode == 2
    assert "the native decision is not loaded: turned off ($SWIFTMOE_NATIVE=0)" in r.stderr


def test_help():
    r = _run("-h")
    assert r.returncode == 0 and "--workload" in r.stdout and "--layer-call" in r.stdout
