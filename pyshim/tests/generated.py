"""Checks that a committed file is what its generator script writes (``--check``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def assert_current(script: str, timeout_s: float = 120) -> None:
    """Run ``scripts/<script> --check``; fail with its message when the file is stale."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stderr
