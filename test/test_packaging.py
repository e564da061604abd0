"""Packaging: `pip install .` and `pip install -e .` build the Go binaries into the package.

Each test builds from a copy of the working tree in a temporary folder (so build outputs never
land in the checkout), installs into a fresh virtual environment made with
--system-site-packages (torch, grpcio and protobuf are not downloaded again), then runs
`python -c "import swiftmoe"` and `swiftmoe doctor` from a folder outside any source tree, with
PYTHONPATH cleared. Builds use --no-build-isolation so no network is needed. These tests take a
minute or two (Go compiles the sidecar and plugins; the Go build cache makes reruns quick).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="the Go toolchain is needed to build the package"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "SWIFTMOE_SIDECAR", "SWIFTMOE_PLUGINS_DIR")
    }
    env.update(extra)
    return env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = BUILD_TIMEOUT_S
):
    r = subprocess.run(
        cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )
    return r


def pip_wheel(src: Path, wheels: Path, cwd: Path, env=None, verbose: bool = False):
    """`pip wheel` of the source tree src into wheels (no build isolation, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "wheel", *(["-v"] if verbose else [])]
    cmd += ["--no-build-isolation", "--no-deps", "-w", str(wheels), str(src)]
    return run(cmd, cwd=cwd, env=env)


def copy_tree(dest: Path) -> Path:
    """The working tree's files (tracked and untracked, not ignored) copied to dest."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    )
    for rel in filter(None, r.stdout.decode().split("\0")):
        src = REPO / rel
        if not src.is_file():
            continue  # deleted but still tracked
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return dest


def make_venv(path: Path) -> Path:
    # No pip of its own: ensurepip would also bring an old setuptools that shadows the system's.
    venv.EnvBuilder(system_site_packages=True, with_pip=False, clear=True).create(path)
    return path / "bin"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_missing_go_fails_with_what_to_install(tmp_path):
    src = copy_tree(tmp_path / "src")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = clean_env(PATH=str(empty))
    env.pop("GO", None)
    r = pip_wheel(src, tmp_path / "w", tmp_path, env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Go >= 1.26" in out and "go.dev/dl" in out, out[-3000:]


def test_without_a_c_compiler_the_wheel_builds_without_the_native_library(tmp_path):
    """No C compiler: pip says so and goes on; the engine then runs the NumPy decision."""
    src = copy_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    # A PATH with Go and no cc or gcc (Go then builds without cgo: no NVML discovery).
    only_go = tmp_path / "only-go"
    only_go.mkdir()
    (only_go / "go").symlink_to(shutil.which("go"))
    env = clean_env(PATH=str(only_go))
    env.pop("CC", None)
    r = pip_wheel(src, wheels, tmp_path, env, verbose=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "note: no C compiler found" in out and "NumPy decision" in out, out[-5000:]
    (whl,) = wheels.glob("swiftmoe-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    assert "swiftmoe/_bin/swiftmoe-sidecar" in names
    assert not any(n.endswith("libswiftmoe_native.so") for n in names), sorted(names)


def test_wheel_is_platform_tagged_with_checksummed_binaries(tmp_path):
    src = copy_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    r = pip_wheel(src, wheels, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    (whl,) = wheels.glob("swiftmoe-*.whl")
    assert re.fullmatch(r"swiftmoe-[\w.]+-py3-none-linux_\w+\.whl", whl.name), whl.name
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        bins = sorted(n for n in names if n.startswith("swiftmoe/_bin/swiftmoe-"))
        assert "swiftmoe/_bin/swiftmoe-sidecar" in bins
        assert any(n.startswith("swiftmoe/_bin/swiftmoe-strategy-") for n in bins), bins
        sums = dict(
            (name, digest)
            for digest, name in (
                line.split() for line in z.read("swiftmoe/_bin/SHA256SUMS").decode().splitlines()
            )
        )
        assert sorted(sums) == sorted(n.rsplit("/", 1)[1] for n in bins)
        # The native burst decision, built with the C compiler this machine has.
        assert "swiftmoe/_bin/libswiftmoe_native.so" in names, sorted(names)
        for n in bins:
            assert sha256(z.read(n)) == sums[n.rsplit("/", 1)[1]], n
            mode = (z.getinfo(n).external_attr >> 16) & 0o777
            assert mode & 0o111, f"{n} is not executable in the wheel (mode {oct(mode)})"
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")
        ]
        assert any("torch" in x and "<3" in x for x in requires), requires
        assert any("grpcio" in x and ">=1.85.1" in x for x in requires), requires
        assert any("protobuf" in x and ">=7.35.1" in x for x in requires), requires
        ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "swiftmoe = swiftmoe.cli:main" in z.read(ep).decode()
        assert not any(n.startswith("tests/") or "/tests/" in n for n in names)
        # The simulator's calibration tables, byte for byte (swiftmoe sim's default needs one).
        for table in sorted((REPO / "calibration").glob("*.json")):
            got = z.read(f"swiftmoe/_calibration/{table.name}")
            assert got == table.read_bytes(), table.name


def test_pip_install_into_fresh_venv_then_doctor(tmp_path):
    src = copy_tree(tmp_path / "src")
    bindir = make_venv(tmp_path / "venv")
    r = run(
        [str(bindir / "python"), "-m", "pip", "install", "--no-build-isolation", str(src)],
        cwd=tmp_path,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    shutil.rmtree(src)  # no source tree around from here on
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run(
        [
            str(bindir / "python"),
            "-c",
            "import swiftmoe, swiftmoe.planning.binaries as s; print(swiftmoe.__file__); print(s.find_sidecar_binary())",
        ],
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr
    pkg_file, sidecar = r.stdout.split()
    assert pkg_file.startswith(str(tmp_path / "venv")), pkg_file
    assert sidecar.startswith(str(tmp_path / "venv")) and sidecar.endswith(
        "swiftmoe/_bin/swiftmoe-sidecar"
    )

    r = run([str(bindir / "swiftmoe"), "doctor", "--json"], cwd=elsewhere, timeout=180)
    report = json.loads(r.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    failed = {n: c for n, c in checks.items() if c["status"] == "FAIL"}
    assert r.returncode == 0 and report["ok"], f"doctor failed: {failed}\n{r.stderr[-2000:]}"
    assert checks["checksums"]["status"] == "ok", checks["checksums"]
    assert checks["native"]["status"] == "ok", checks["native"]
    assert str(tmp_path / "venv") in checks["native"]["detail"], checks["native"]
    assert "gpus" in checks and "network" in checks, checks
    r = run([str(bindir / "swiftmoe"), "doctor"], cwd=elsewhere, timeout=180)
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr
    for argv in (["--help"], ["doctor", "--help"]):
        r = run([str(bindir / "swiftmoe"), *argv], cwd=elsewhere, timeout=60)
        assert r.returncode == 0 and "usage: swiftmoe" in r.stdout, r.stdout + r.stderr
    # The simulator with its default calibration table and the bundled sidecar and plugins,
    # with no source tree around.
    out = elsewhere / "sim.json"
    sim = [
        *("sim", "--synthetic-experts", "8", "--synthetic-layers", "1", "--iterations", "4"),
        *("--gpus", "4", "--gpus-per-node", "4", "--slots", "2", "--quiet", "--output", str(out)),
    ]
    r = run([str(bindir / "swiftmoe"), *sim], cwd=elsewhere, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    doc = json.loads(out.read_text())
    assert "h200-expert-ffn.json" in json.dumps(doc), str(doc)[:2000]


def test_editable_install_builds_into_the_source_tree(tmp_path):
    src = copy_tree(tmp_path / "src")
    bindir = make_venv(tmp_path / "venv")
    r = run(
        [str(bindir / "python"), "-m", "pip", "install", "--no-build-isolation", "-e", str(src)],
        cwd=tmp_path,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    bundled = src / "pyshim" / "swiftmoe" / "_bin"
    assert (bundled / "swiftmoe-sidecar").is_file() and (bundled / "SHA256SUMS").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run(
        [
            str(bindir / "python"),
            "-c",
            "import swiftmoe.planning.binaries as s; print(s.find_sidecar_binary())",
        ],
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == bundled / "swiftmoe-sidecar"
