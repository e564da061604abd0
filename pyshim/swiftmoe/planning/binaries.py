"""Finding the sidecar binary and its strategy plugins.

:func:`find_sidecar_binary`: the ``binary`` argument, ``$SWIFTMOE_SIDECAR``, the copy bundled in
the package (``swiftmoe/_bin/``, filled by ``pip install``), then ``<repo>/bin/`` of a source
checkout (``make build``). :func:`find_plugins_dir`: the ``plugins_dir`` argument,
``$SWIFTMOE_PLUGINS_DIR``, else the binary's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from swiftmoe.planning.client import SidecarError

__all__ = [
    "BINARY_NAME",
    "ENV_BINARY",
    "ENV_PLUGINS",
    "SidecarNotFoundError",
    "find_plugins_dir",
    "find_sidecar_binary",
]

BINARY_NAME = "swiftmoe-sidecar"
ENV_BINARY = "SWIFTMOE_SIDECAR"
ENV_PLUGINS = "SWIFTMOE_PLUGINS_DIR"

_PKG_DIR = Path(__file__).resolve().parents[1]  # the swiftmoe package
_REPO_DIR = _PKG_DIR.parent.parent


class SidecarNotFoundError(SidecarError, FileNotFoundError):
    """No ``swiftmoe-sidecar`` binary was found; the message lists where it looked."""


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_sidecar_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """The sidecar binary: ``binary``, ``$SWIFTMOE_SIDECAR``, the bundled one, ``<repo>/bin``.

    Raises SidecarNotFoundError naming what was tried and how to get one.
    """
    if binary is not None:
        p = Path(binary)
        if not _executable(p):
            raise SidecarNotFoundError(
                f"sidecar binary {str(p)!r} (the binary argument) is not an executable file: "
                "pass the path of swiftmoe-sidecar, or leave it out to use the bundled one"
            )
        return p
    env = os.environ.get(ENV_BINARY, "")
    if env:
        p = Path(env)
        if not _executable(p):
            raise SidecarNotFoundError(
                f"${ENV_BINARY}={env!r} is not an executable file: point it at swiftmoe-sidecar "
                "or unset it"
            )
        return p
    tried = [_PKG_DIR / "_bin" / BINARY_NAME]
    if (_REPO_DIR / "go.mod").is_file():
        tried.append(_REPO_DIR / "bin" / BINARY_NAME)
    for p in tried:
        if _executable(p):
            return p
    raise SidecarNotFoundError(
        f"{BINARY_NAME} not found (tried ${ENV_BINARY}, "
        + ", ".join(str(p) for p in tried)
        + "): run `make build` in the source checkout, or `pip install .` to bundle it, "
        f"or set ${ENV_BINARY}"
    )


def find_plugins_dir(
    plugins_dir: str | os.PathLike[str] | None = None, binary: Path | None = None
) -> Path:
    """The strategy plugins folder: ``plugins_dir``, ``$SWIFTMOE_PLUGINS_DIR``, else the binary's."""
    for value, what in (
        (plugins_dir, "the plugins_dir argument"),
        (os.environ.get(ENV_PLUGINS), f"${ENV_PLUGINS}"),
    ):
        if value:
            p = Path(value)
            if not p.is_dir():
                raise SidecarNotFoundError(
                    f"plugins directory {str(p)!r} ({what}) is not a directory: pass the folder "
                    "holding swiftmoe-strategy-* binaries"
                )
            return p
    return (binary or find_sidecar_binary()).resolve().parent
