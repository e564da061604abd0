"""Packaging of swiftmoe: the Python package in pyshim/ plus the Go binaries it runs.

``pip install .`` (and ``pip install -e .``) build ``swiftmoe-sidecar`` and every
``plugins/cmd/swiftmoe-strategy-*`` with the Go toolchain into ``swiftmoe/_bin/``, with a
``SHA256SUMS`` file beside them, and copy the simulator's calibration tables
(``calibration/*.json``) into ``swiftmoe/_calibration/``, so that ``swiftmoe sim`` runs from an
installed package (an editable install reads them from the checkout). The wheel is
platform-tagged (``py3-none-<platform>``): the binaries are native code but do not depend on the
Python version.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Distribution, find_packages, setup

try:
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # setuptools < 70.1 with the wheel package
    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent
GO_MIN = (1, 26)
SIDECAR_PKG = "./sidecar/cmd/swiftmoe-sidecar"
PLUGINS_GLOB = "plugins/cmd/swiftmoe-strategy-*"


def _version() -> str:
    text = (ROOT / "pyshim" / "swiftmoe" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise RuntimeError('pyshim/swiftmoe/__init__.py has no __version__ = "..." line')
    return m.group(1)


def _go() -> str:
    """The go binary ($GO or PATH), checked to be >= GO_MIN; SystemExit with what to install."""
    want = f"Go >= {GO_MIN[0]}.{GO_MIN[1]}"
    fix = (
        f"install {want} (https://go.dev/dl or your distribution's golang package), make sure "
        "`go` is on PATH (or set GO=/path/to/go), then run pip again"
    )
    go = os.environ.get("GO") or shutil.which("go")
    if not go:
        sys.exit(f"error: building swiftmoe needs the Go toolchain, and `go` was not found: {fix}")
    try:
        out = subprocess.run(
            [go, "version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        sys.exit(f"error: `{go} version` failed ({e}): {fix}")
    m = re.search(r"go(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < GO_MIN:
        sys.exit(f"error: {out.strip() or go} is too old; swiftmoe needs {want}: {fix}")
    return go


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_go_binaries(dest: Path) -> list[Path]:
    """Builds the sidecar and every strategy plugin into dest; writes dest/SHA256SUMS."""
    go = _go()
    targets = [(SIDECAR_PKG, "swiftmoe-sidecar")]
    for d in sorted(ROOT.glob(PLUGINS_GLOB)):
        if d.is_dir():
            targets.append((f"./{d.relative_to(ROOT).as_posix()}", d.name))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    built = []
    for pkg, name in targets:
        out = dest / name
        cmd = [go, "build", "-trimpath", "-o", str(out), pkg]
        print(f"swiftmoe: {' '.join(cmd)}", flush=True)
        r = subprocess.run(cmd, cwd=ROOT, timeout=1800)
        if r.returncode != 0:
            sys.exit(f"error: `{' '.join(cmd)}` failed with status {r.returncode} (output above)")
        built.append(out)
    sums = "".join(f"{_sha256(p)}  {p.name}\n" for p in built)
    (dest / "SHA256SUMS").write_text(sums)
    return built


def build_native(dest: Path) -> None:
    """Builds the native burst decision (C, swiftmoe.engine.native) into dest. Without a C
    compiler it says so and goes on: the engine then runs the NumPy decision (slower)."""
    script = ROOT / "pyshim" / "swiftmoe" / "engine" / "native" / "build.py"
    cmd = [sys.executable, str(script), "--optional", str(dest)]
    print(f"swiftmoe: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, cwd=ROOT, timeout=600)
    if r.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed with status {r.returncode} (output above)")


def copy_calibration(dest: Path) -> list[Path]:
    """Copies calibration/*.json (the simulator's tables) into dest."""
    tables = sorted((ROOT / "calibration").glob("*.json"))
    if not tables:
        sys.exit(
            f"error: no calibration tables in {ROOT / 'calibration'}: the source is incomplete"
        )
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(t, dest / t.name)) for t in tables]


class build_py(_build_py):
    """Also builds the Go binaries into swiftmoe/_bin (in the source tree for -e installs) and,
    for a wheel, copies the calibration tables into swiftmoe/_calibration."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            dest = ROOT / "pyshim" / "swiftmoe" / "_bin"
        else:
            dest = Path(self.build_lib) / "swiftmoe" / "_bin"
            copy_calibration(Path(self.build_lib) / "swiftmoe" / "_calibration")
        build_go_binaries(dest)
        build_native(dest)


class BinaryDistribution(Distribution):
    """Native binaries inside: never a pure (any-platform) wheel."""

    def has_ext_modules(self) -> bool:
        return True


class bdist_wheel(_bdist_wheel):
    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    name="swiftmoe",
    version=_version(),
    description="Adaptive expert replication for Mixture-of-Experts training in PyTorch",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "pyshim"},
    packages=find_packages("pyshim", exclude=["tests", "tests.*"]),
    package_data={"swiftmoe": ["_proto/v1/*.pyi"]},
    # Tested with torch 2.15, grpcio 1.85.1, protobuf 7.36.2. The generated stubs need
    # grpcio >= 1.85.1 and protobuf >= 7.35.1 (their runtime version checks).
    install_requires=[
        "torch>=2.4,<3",
        "numpy>=1.26,<3",
        "grpcio>=1.85.1,<2",
        "protobuf>=7.35.1,<8",
    ],
    extras_require={"report": ["matplotlib>=3.8,<4"]},
    entry_points={"console_scripts": ["swiftmoe = swiftmoe.cli:main"]},
    cmdclass={"build_py": build_py, "bdist_wheel": bdist_wheel},
    distclass=BinaryDistribution,
    zip_safe=False,
    platforms=[sysconfig.get_platform()],
)
