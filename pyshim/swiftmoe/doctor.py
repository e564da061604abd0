"""``swiftmoe doctor``: what a training job needs, checked, with what to do about each problem.

torch and its distributed backends, the gRPC stubs, the bundled sidecar and strategy plugins
(sha256 against their SHA256SUMS), and GPU/NIC discovery through ``swiftmoe-sidecar discover
--json``. :func:`run` prints the checks (or JSON) and returns 1 when something is broken.
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
        want: dict[str, str] = {}
        for line in sums_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                want[parts[1].lstrip("*")] = parts[0]
        bad = []
        for p in bins:
            if p.name not in want:
                bad.append(f"{p.name} is not listed")
            elif _sha256(p) != want[p.name]:
                bad.append(f"{p.name} does not match its sha256")
        bad += [f"{n} is listed but missing" for n in want if not (folder / n).is_file()]
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
    user = os.environ.get(sc.ENV_PLUGINS)
    if user:
        try:
            d = sc.find_plugins_dir(None, sidecar)
            found = sorted(p.name for p in d.glob("swiftmoe-strategy-*"))
            out.append(
                Check("user plugins", OK, f"${sc.ENV_PLUGINS}={d}: {', '.join(found) or 'none'}")
            )
        except sc.SidecarNotFoundError as e:
            out.append(Check("user plugins", FAIL, str(e), f"fix or unset ${sc.ENV_PLUGINS}"))
    return out, sidecar


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


def doctor_checks(binary: str | None = None, timeout_s: float = 60.0) -> list[Check]:
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
    bins, sidecar = _check_binaries(binary)
    checks += bins
    if sidecar is not None:
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
    checks = doctor_checks(args.binary, args.timeout)
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
