"""Writing or checking a shared test-vector file: the gen_*_vectors.py scripts' command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(
    doc: str,
    out: Path,
    script: str,
    build: Callable[[], list[dict]],
    render: Callable[[list[dict]], str],
    problems: Callable[[list[dict]], list[str]] | None = None,
    heading: str = "the cases disagree with the implementation",
) -> int:
    """Parse ``--check``; build the cases and write them to ``out`` (with --check, exit status
    1 and a line naming the fix when ``out`` is stale instead). ``problems`` (optional) lists
    what is wrong with the cases, printed under ``heading``; any refuses both. ``script``: the generator's file name."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when the committed file is stale")
    args = ap.parse_args()
    cases = build()
    found = problems(cases) if problems else []
    if found:
        print(f"{heading}:", file=sys.stderr)
        for p in found:
            print("  " + p, file=sys.stderr)
        return 1
    text = render(cases)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run python3 scripts/{script}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out} ({len(cases)} cases)")
    return 0
