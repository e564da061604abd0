"""``swiftmoe doctor``: what a training job needs, checked, with what to do about each problem.

torch and its distributed backends, the gRPC stubs, the native burst decision
(``swiftmoe.engine.native``: loaded, or why not), the bundled sidecar and strategy plugins
(sha256 against their SHA256SUMS), the user's plugins directory (``$SWIFTMOE_PLUGINS_DIR`` or
``--plugins-dir``: each plugin hashed, against the SHA256SUMS there and against the bundled
build of the same name), the plugin digests that jobs trusted (``--checkpoint FILE``: the pin a
checkpoint's plan-source state holds, against the plugin a resumed job would load), and GPU/NIC
discovery through ``swiftmoe-sidecar discover --json``. :func:`run` prints the checks (or JSON)
and returns 1 when something is broken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Check", "doctor_checks", "run"]

OK, NOTE, FAIL = "ok", "note", "FAIL"


@dataclass
class Check:
    name: str
    status: str  # OK, NOTE (worth knowing, not broken) or FAIL
    detail: str
    fix: str = ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_torch() -> list[Check]:
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        return [Check("torch", FAIL, f"cannot import torch: {e}", "pip install 'torch>=2.4,<3'")]
    out = []
    if not dist.is_available():
        return [
            Check(
                "torch",
                FAIL,
                f"torch {torch.__version__} was built without torch.distributed",
                "install a torch build with distributed support (the pytorch.org wheels have it)",
            )
        ]
    gloo, nccl = dist.is_gloo_available(), dist.is_nccl_available()
    cuda = torch.cuda.is_available()
    ngpu = torch.cuda.device_count() if cuda else 0
    out.append(
        Check(
            "torch",
            OK,
            f"torch {torch.__version__}; distributed backends: gloo {'yes' if gloo else 'no'}, "
            f"nccl {'yes' if nccl else 'no'}; CUDA devices visible: {ngpu}",
        )
    )
    if not gloo:
        out.append(
            Check(
                "gloo",
                FAIL,
                "the gloo backend is missing (CPU training and the tests use it)",
                "install a torch build with gloo (the pytorch.org wheels have it)",
            )
        )
    if cuda and not nccl:
        out.append(
            Check(
                "nccl",
                FAIL,
                "CUDA is available but the nccl backend is not",
                "install a CUDA build of torch from pytorch.org, which bundles NCCL",
            )
        )
    if not cuda:
        out.append(Check("cuda", NOTE, "no CUDA device: training runs on CPU with gloo"))
    return out


def _check_stubs() -> list[Check]:
    try:
        import google.protobuf
        import grpc

        from swiftmoe._proto.v1 import swiftmoe_pb2_grpc  # noqa: F401
    except (ImportError, RuntimeError) as e:
        return [
            Check(
                "grpc",
                FAIL,
                f"the gRPC stubs do not load: {e}",
                "pip install 'grpcio>=1.85.1,<2' 'protobuf>=7.35.1,<8'",
            )
        ]
    return [Check("grpc", OK, f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")]


def _check_binaries(binary: str | None) -> tuple[list[Check], Path | None]:
    from swiftmoe.planning import binaries as sc

    try:
        sidecar = sc.find_sidecar_binary(binary)
    except sc.SidecarNotFoundError as e:
        return [Check("sidecar", FAIL, str(e), "run `make build` or `pip install .`")], None
    out = []
    folder = sidecar.parent
    sums_file = folder / "SHA256SUMS"
    bins = sorted(p for p in folder.glob("swiftmoe-*") if p.is_file())
    plugins = [p.name for p in bins if p.name.startswith("swiftmoe-strategy-")]
    out.append(
        Check(
            "sidecar",
            OK,
            f"{sidecar}; plugins beside it: {', '.join(plugins) or 'none'}",
        )
    )
    if not plugins:
        out.append(
            Check(
                "plugins",
                FAIL,
                f"no swiftmoe-strategy-* plugin in {folder}",
                "reinstall with `pip install .` (or `make build` in a checkout)",
            )
        )
    if sums_file.is_file():
        digests = {p.name: _sha256(p) for p in bins}
        bad = _sums_problems(digests, _read_sums(sums_file), missing_is_problem=True)
        if bad:
            out.append(
                Check(
                    "checksums",
                    FAIL,
                    f"{sums_file}: " + "; ".join(bad),
                    "the install was modified: reinstall with `pip install --force-reinstall .`",
                )
            )
        else:
            out.append(Check("checksums", OK, f"{len(bins)} binaries match {sums_file}"))
    else:
        out.append(
            Check(
                "checksums",
                NOTE,
                f"no SHA256SUMS beside {sidecar}: not verified (`pip install .` writes one)",
            )
        )
    return out, sidecar


def _read_sums(path: Path) -> dict[str, str]:
    """{file name: sha256 hex} of a sha256sum-format file."""
    want: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            want[parts[1].lstrip("*")] = parts[0].lower()
    return want


def _sums_problems(
    digests: dict[str, str], listed: dict[str, str], missing_is_problem: bool
) -> list[str]:
    """What differs between files' digests and a SHA256SUMS listing, one line per file."""
    bad = [
        f"{n} does not match its sha256 (has {h[:12]}..., listed {listed[n][:12]}...)"
        if n in listed
        else f"{n} is not listed"
        for n, h in digests.items()
        if listed.get(n) != h
    ]
    if missing_is_problem:
        bad += [f"{n} is listed but missing" for n in listed if n not in digests]
    return bad


def _plugins_in(folder: Path) -> dict[str, str]:
    """{file name: sha256 hex} of the swiftmoe-strategy-* regular files in folder."""
    return {
        p.name: _sha256(p)
        for p in sorted(folder.glob("swiftmoe-strategy-*"))
        if p.is_file() and not p.is_symlink()
    }


def _check_user_plugins(plugins_dir: str | None, sidecar: Path) -> list[Check]:
    """The user's plugins directory: each plugin hashed, against the SHA256SUMS there (the
    sidecar refuses a plugin that does not match it or is not listed) and against the bundled
    build of the same name."""
    from swiftmoe.planning import binaries as sc

    given = plugins_dir or os.environ.get(sc.ENV_PLUGINS)
    if not given:
        return []
    what = "--plugins-dir" if plugins_dir else f"${sc.ENV_PLUGINS}"
    try:
        d = sc.find_plugins_dir(plugins_dir, sidecar)
    except sc.SidecarNotFoundError as e:
        return [Check("user plugins", FAIL, str(e), f"fix or unset {what}")]
    found = _plugins_in(d)
    if not found:
        return [
            Check(
                "user plugins",
                FAIL,
                f"{what}={d} holds no swiftmoe-strategy-* plugin",
                "build your plugin into it and copy the built-in ones beside it (README)",
            )
        ]
    digests = ", ".join(f"{n} {h[:12]}" for n, h in found.items())
    out = []
    sums = d / "SHA256SUMS"
    if sums.is_file():
        bad = _sums_problems(found, _read_sums(sums), missing_is_problem=False)
        if bad:
            out.append(
                Check(
                    "user plugins",
                    FAIL,
                    f"{sums}: " + "; ".join(bad) + " (the sidecar refuses such plugins)",
                    f"reinstall the plugin, or if you rebuilt it on purpose: cd {d} && "
                    "sha256sum swiftmoe-strategy-* > SHA256SUMS",
                )
            )
        else:
            out.append(Check("user plugins", OK, f"{d}: {digests}; all match {sums}"))
    else:
        out.append(
            Check(
                "user plugins",
                NOTE,
                f"{d}: {digests}; no SHA256SUMS there: the sidecar pins each plugin's digest at "
                "first load, and a job keeps its first digest across sidecar restarts",
                f"to pin them for good: cd {d} && sha256sum swiftmoe-strategy-* > SHA256SUMS",
            )
        )
    bundled_sums = sidecar.parent / "SHA256SUMS"
    if bundled_sums.is_file() and d.resolve() != sidecar.parent.resolve():
        bundled = _read_sums(bundled_sums)
        differ = [n for n, h in found.items() if n in bundled and bundled[n] != h]
        if differ:
            out.append(
                Check(
                    "plugin copies",
                    NOTE,
                    f"{', '.join(differ)} in {d} differ from the build bundled in "
                    f"{sidecar.parent}: another build, or modified",
                    f"if you meant the bundled ones: cp {sidecar.parent}/swiftmoe-strategy-* {d}/",
                )
            )
    return out


def _pins_of(obj: Any, depth: int = 0) -> list[dict[str, Any]]:
    """The plan-source states in a loaded checkpoint (a handle.state_dict() anywhere inside)."""
    if depth > 4:
        return []
    if isinstance(obj, dict):
        ps = obj.get("plan_source")
        if str(obj.get("format", "")).startswith("swiftmoe-sharded-") and isinstance(ps, dict):
            return [ps]
        return [p for v in obj.values() for p in _pins_of(v, depth + 1)]
    if isinstance(obj, (list, tuple)):
        return [p for v in obj for p in _pins_of(v, depth + 1)]
    return []


def _check_pins(checkpoints: list[str], plugins_dir: str | None, sidecar: Path) -> list[Check]:
    """The plugin digest each checkpoint's job trusted, against the plugin a job resumed from
    it would load now."""
    from swiftmoe.planning import binaries as sc

    if not checkpoints:
        return []
    out = []
    try:
        d = sc.find_plugins_dir(plugins_dir, sidecar)
    except sc.SidecarNotFoundError as e:
        return [Check("pins", FAIL, str(e), "fix the plugins directory")]
    for f in checkpoints:
        try:
            import torch

            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # a file torch cannot read: report it, go on with the others
            out.append(Check("pins", FAIL, f"{f}: cannot read it ({type(e).__name__}: {e})", ""))
            continue
        pins = [p for p in _pins_of(obj) if p.get("strategy_sha256")]
        if not pins:
            out.append(
                Check(
                    "pins",
                    NOTE,
                    f"{f}: no plugin digest in it (rank 0's checkpoint of a job that planned "
                    "through the sidecar has one)",
                )
            )
            continue
        for pin in pins:
            name = f"swiftmoe-strategy-{pin.get('strategy')}"
            path = d / name
            want = str(pin["strategy_sha256"])
            if not path.is_file():
                out.append(
                    Check(
                        "pins",
                        FAIL,
                        f"{f}: its job ran {name} (sha256 {want[:12]}...), which {d} lacks",
                        f"put the plugin back in {d}",
                    )
                )
            elif (have := _sha256(path)) != want:
                out.append(
                    Check(
                        "pins",
                        FAIL,
                        f"{f}: its job trusted {name} with sha256 {want[:12]}..., {path} has "
                        f"{have[:12]}...: the plugin changed since",
                        "put back the build the job ran with, or accept the new one knowingly",
                    )
                )
            else:
                out.append(Check("pins", OK, f"{f}: {name} matches the digest its job trusted"))
    return out


def _check_discovery(sidecar: Path, timeout_s: float) -> tuple[list[Check], dict[str, Any] | None]:
    cmd = [str(sidecar), "discover", "--json"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [
            Check(
                "discovery",
                FAIL,
                f"`{' '.join(cmd)}` ran past {timeout_s:g}s",
                "rerun; if it hangs again, the NVIDIA driver may be stuck (check dmesg)",
            )
        ], None
    except OSError as e:
        return [Check("discovery", FAIL, f"cannot run {sidecar}: {e}", "reinstall swiftmoe")], None
    if r.returncode != 0:
        return [
            Check(
                "discovery",
                FAIL,
                f"`{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()[-500:]}",
                "reinstall swiftmoe (`pip install --force-reinstall .`)",
            )
        ], None
    try:
        rep = json.loads(r.stdout)
        gpus, nics = rep.get("gpus") or [], rep.get("nics") or []
        nvml = rep.get("nvml") or {}
        defaults = rep.get("defaults") or {}
    except (ValueError, AttributeError) as e:
        return [Check("discovery", FAIL, f"discover printed no JSON object: {e}", "")], None
    out = []
    if nvml.get("available"):
        names = ", ".join(f"{g.get('index')}: {g.get('name')}" for g in gpus)
        out.append(Check("gpus", OK, f"{len(gpus)} GPU(s) through NVML: {names or 'none'}"))
    else:
        out.append(Check("gpus", NOTE, f"no GPU through NVML ({nvml.get('reason', 'unknown')})"))
    up = [n.get("name") for n in nics if n.get("oper_state") == "up" and not n.get("is_loopback")]
    rdma = [d.get("name") for d in rep.get("rdma_devices") or []]
    out.append(
        Check(
            "network",
            OK if up else NOTE,
            f"{len(nics)} interface(s), up: {', '.join(up) or 'none besides loopback'}; "
            f"RDMA: {', '.join(rdma) or 'none'}",
        )
    )

    def bw(key: str) -> str:
        v = float(defaults.get(f"{key}_bandwidth") or 0)
        return f"{v / 1e9:.1f} GB/s" if v > 0 else "unknown"

    out.append(
        Check(
            "bandwidth",
            OK,
            f"intra-node {bw('intra_node')}, inter-node {bw('inter_node')} "
            "(strategies that weigh transfers use these)",
        )
    )
    return out, rep


def _check_native() -> list[Check]:
    """The C burst decision and split: loaded, or why not (NumPy runs them, the same, slower)."""
    from swiftmoe.engine import native

    try:
        ok = native.available()
    except native.NativeError as e:
        return [Check("native", FAIL, str(e), f"unset ${native.ENV_LIB} or fix the path")]
    if ok:
        return [Check("native", OK, f"C burst decision and split {native.why()}")]
    off = os.environ.get(native.ENV_SWITCH) is not None and "turned off" in native.why()
    return [
        Check(
            "native",
            NOTE,
            f"C burst decision and split {native.why()}; NumPy runs them (the same results, "
            "4 to 50 times slower: up to milliseconds a layer call)",
            f"unset ${native.ENV_SWITCH}"
            if off
            else "install a C compiler and reinstall swiftmoe (pip install .), or `make build` "
            "in a source checkout",
        )
    ]


def doctor_checks(
    binary: str | None = None,
    timeout_s: float = 60.0,
    plugins_dir: str | None = None,
    checkpoints: list[str] | None = None,
) -> list[Check]:
    """Every doctor check, in order."""
    checks = [Check("python", OK, f"Python {sys.version.split()[0]} at {sys.executable}")]
    import swiftmoe

    checks.append(
        Check(
            "swiftmoe", OK, f"swiftmoe {swiftmoe.__version__} at {Path(swiftmoe.__file__).parent}"
        )
    )
    checks += _check_torch()
    checks += _check_stubs()
    checks += _check_native()
    bins, sidecar = _check_binaries(binary)
    checks += bins
    if sidecar is not None:
        checks += _check_user_plugins(plugins_dir, sidecar)
        checks += _check_pins(checkpoints or [], plugins_dir, sidecar)
        disc, rep = _check_discovery(sidecar, timeout_s)
        checks += disc
        if rep is not None:
            try:
                import torch

                cuda = torch.cuda.is_available()
            except ImportError:
                cuda = False
            if cuda and not (rep.get("nvml") or {}).get("available"):
                checks.append(
                    Check(
                        "nvml",
                        FAIL,
                        "torch sees CUDA devices but the sidecar cannot load NVML",
                        "make libnvidia-ml.so.1 visible to the sidecar (install the NVIDIA "
                        "driver's utilities, or add its folder to LD_LIBRARY_PATH)",
                    )
                )
    return checks


def run(args: argparse.Namespace) -> int:
    """The ``doctor`` command: print the checks (``args.json``: as JSON); 1 when one failed."""
    checks = doctor_checks(
        args.binary,
        args.timeout,
        getattr(args, "plugins_dir", None),
        getattr(args, "checkpoint", []),
    )
    failed = [c for c in checks if c.status == FAIL]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status:>4}] {c.name:<12} {c.detail}")
            if c.fix:
                print(f"{'':>20}fix: {c.fix}")
        print(
            f"\n{len(failed)} problem(s): " + ", ".join(c.name for c in failed)
            if failed
            else "\nall checks passed"
        )
    return 1 if failed else 0
