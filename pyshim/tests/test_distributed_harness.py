"""The multi-rank harnesses leave no gloo worker thread alive past ``destroy_process_group``.

A gloo worker thread that outlives the process group can drop a finished collective's tensors
while the interpreter exits, which aborts the rank ("terminate called without an active
exception") after it did all its work. Each harness that initialises a process group
(``pyshim/tests/distributed.py``, ``scripts/bench_step.py``, ``examples/train_lm.py``) is loaded
here in a fresh interpreter, before a one-rank gloo group that runs a collective and builds an
optimizer (torch.optim's import of torch._dynamo is what used to pin the group); within 10 s
of ``destroy_process_group`` the process must be back to the threads it had before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import datetime, importlib.util, os, sys, tempfile, time
spec = importlib.util.spec_from_file_location("harness_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import torch
import torch.distributed as dist

def threads():
    return len(os.listdir("/proc/self/task"))

torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp:
    before = threads()
    dist.init_process_group(
        "gloo", store=dist.FileStore(os.path.join(tmp, "store"), 1), rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=30),
    )
    t = torch.ones(4)
    dist.all_reduce(t)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    during = threads()
    dist.destroy_process_group()
    # A worker thread can take a moment to exit once the group is gone (CI once counted one
    # still running on a loaded machine); a pinned one never does.
    deadline = time.monotonic() + 10
    while threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    print(before, during, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    "harness", ["pyshim/tests/distributed.py", "scripts/bench_step.py", "examples/train_lm.py"]
)
def test_destroy_process_group_joins_the_gloo_threads(harness):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / harness)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "pyshim"), *sys.path])},
    )
    assert proc.returncode == 0, proc.stderr
    before, during, after = map(int, proc.stdout.split())
    assert during > before, "the probe should see gloo's worker threads while the group lives"
    assert after == before, (
        f"{harness}: {after - before} thread(s) outlived destroy_process_group; import "
        "torch._dynamo before init_process_group"
    )
