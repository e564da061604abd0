"""What the simulator's tests share: a linear calibration table, a small cluster, a sidecar for
the module (a fixture) and a one-call simulation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from swiftmoe.sim import model
from swiftmoe.sim.calibration import ExpertTime
from swiftmoe.sim.run import SimConfig, simulate
from swiftmoe.sim.systems import parse_systems

REPO = Path(__file__).resolve().parents[2]
SIDECAR = REPO / "bin" / "swiftmoe-sidecar"
needs_sidecar = pytest.mark.skipif(
    not SIDECAR.is_file(), reason="bin/swiftmoe-sidecar is absent: run `make build`"
)

LINEAR = {
    "device": "test (linear)",
    "shapes": {
        "lin (d64 f128 gelu)": [
            {"tokens": 1, "fwd_bwd_ms": 0.001},
            {"tokens": 1_000_000, "fwd_bwd_ms": 1000.0},
        ]
    },
}


def linear_time() -> ExpertTime:
    return ExpertTime("mem", "test", "lin", np.array([1.0, 1e6]), np.array([0.001, 1000.0]))


def cluster(gpus=4, per_node=2, compute_model="per-slot", intra=1e9, inter=0.5e9):
    return model.Cluster(
        gpus=gpus,
        gpus_per_node=per_node,
        d_model=64,
        d_ff=128,
        gated=False,
        bytes_per_param=2,
        optimizer_bytes=12,
        intra_bw=intra,
        inter_bw=inter,
        pcie_bw=1e9,
        offload=False,
        compute_model=compute_model,
    )


@contextmanager
def module_sidecar() -> Iterator[str]:
    """A sidecar for a module's tests (skips them when bin/ is not built): its address."""
    if not SIDECAR.is_file():
        pytest.skip("bin/swiftmoe-sidecar is absent: run `make build`")
    from swiftmoe.planning.process import ManagedSidecar

    sc = ManagedSidecar(
        binary=SIDECAR, extra_args=("--plugin-timeout", "30s"), start_timeout_s=30.0
    )
    try:
        yield sc.address
    finally:
        sc.close()


def run_sim(address, loads_ILE, systems, slots, static_slots, **kw):
    cfg = SimConfig(
        cluster=kw.pop("cluster", cluster()),
        slots=slots,
        static_slots=static_slots,
        flops_per_s=kw.pop("flops_per_s", 0.0),
        split_method=kw.pop("split_method", "auto"),
        decision_ms=kw.pop("decision_ms", 0.0),
        decision_measured=kw.pop("decision_measured", False),
        decision_gate=kw.pop("decision_gate", True),
        split_ms=kw.pop("split_ms", 0.0),
        split_new_ms=kw.pop("split_new_ms", None),
        decision_new_ms=kw.pop("decision_new_ms", None),
    )
    return simulate(
        np.asarray(loads_ILE),
        cfg,
        kw.pop("et", linear_time()),
        parse_systems(systems, kw.pop("flex", None), kw.pop("swift", None)),
        address=address,
    )
