"""Building the native burst decision: the C sources beside this file into one shared library.

``make build`` and ``pip install`` (setup.py) call :func:`build_library`; the loader
(``swiftmoe.engine.native``) looks for what they made. It needs a C compiler (``$CC``, else
``cc``); without one the engine runs the NumPy decision, which is the same function, slower.

    python3 pyshim/swiftmoe/engine/native/build.py [--optional] DEST_DIR

It imports nothing but the standard library, so setup.py and the Makefile run it as a script.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["LIBRARY_NAME", "SOURCES", "build_library"]

LIBRARY_NAME = "libswiftmoe_native.so"
_HERE = Path(__file__).resolve().parent
SOURCES = ("split.c", "burst.c", "route.c")
# -ffp-contract=off: no fused multiply-adds, so every float is rounded as NumPy rounds it.
_FLAGS = ("-O2", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall")


def build_library(
    dest: Path, cc: str | None = None, timeout: float = 300.0, sources=SOURCES
) -> Path:
    """Compiles ``sources`` (SOURCES, in this folder) into dest/LIBRARY_NAME; returns its path.

    Raises:
        FileNotFoundError: no C compiler ($CC or cc on PATH); the message says what to install.
        RuntimeError: the compiler failed; the message holds its command and output.
    """
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FileNotFoundError(
            "no C compiler found ($CC, cc, gcc): install one (e.g. `apt install gcc`) to build "
            "the native burst decision, or go on without it (the NumPy decision is used)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / LIBRARY_NAME
    tmp = dest / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
    cmd = [*shlex.split(cc), *_FLAGS, "-o", str(tmp), *(str(_HERE / s) for s in sources), "-lm"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"`{shlex.join(cmd)}` ran past {timeout:.0f} s") from e
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the C compiler {cmd[0]!r} ($CC or cc) was not found: install one (e.g. `apt "
            "install gcc`) or point $CC at it, or go on without it (the NumPy decision is used)"
        ) from e
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"`{shlex.join(cmd)}` failed ({r.returncode}):\n{r.stderr}")
    os.replace(tmp, out)  # atomic: a process loading the library never sees half of it
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="build.py",
        description="Build the native burst decision (a shared library) into DEST.",
    )
    ap.add_argument("dest", type=Path, help="folder to write " + LIBRARY_NAME + " into")
    ap.add_argument(
        "--optional",
        action="store_true",
        help="without a C compiler, say so and exit 0 (the NumPy decision will run)",
    )
    args = ap.parse_args(argv)
    try:
        path = build_library(args.dest)
    except FileNotFoundError as e:
        print(f"{'note' if args.optional else 'error'}: {e}", file=sys.stderr)
        return 0 if args.optional else 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"swiftmoe: built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
