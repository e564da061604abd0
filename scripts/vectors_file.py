"""Writing or checking a shared test-vector file (the gen_*_vectors.py scripts)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(out: Path, text: str, script: str, check: bool, what: str) -> int:
    """With check, exit status 1 (and a line naming the fix) when ``out`` is not ``text``;
    else write it and say so. ``script``: the generator's file name; ``what``: e.g. "8 cases"."""
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run python3 scripts/{script}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out} ({what})")
    return 0
