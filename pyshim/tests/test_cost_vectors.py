"""testdata/vectors/costmodel.json is what scripts/gen_cost_vectors.py writes from the Python cost
model (plugins/swiftmoe/costmodel_test.go checks the Go one against the same file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generated import assert_current

from swiftmoe.engine import costmodel as cm

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "testdata" / "vectors" / "costmodel.json"


def test_vectors_file_is_current():
    assert_current("gen_cost_vectors.py")


def test_traffic_vectors_file_is_current():
    """testdata/vectors/traffic.json is the engine split's traffic as it routes today
    (plugins/swiftmoe/traffic_test.go holds the Go step model to it)."""
    assert_current("gen_traffic_vectors.py")


def test_vectors_cover_every_degraded_model():
    cases = json.loads(VECTORS.read_text())
    params = [cm.CostParams(c["ranks"], c["ranks_per_node"], **c["params"]) for c in cases]
    assert any(not p.prices_network for p in params)
    assert any(not p.prices_compute for p in params)
    assert any(p.nodes > 2 for p in params) and any(p.nodes == 1 for p in params)
    # Every priced term is nonzero in some case, so a Go term that ignores its input fails.
    for field in ("compute_ms", "a2a_ms", "copy_ms"):
        assert any(c[field] > 0 for c in cases), field


@pytest.mark.parametrize("case", json.loads(VECTORS.read_text()), ids=lambda c: c["name"])
def test_step_is_the_sum_of_its_terms(case):
    assert case["step_ms"] == pytest.approx(
        case["compute_ms"] + case["a2a_ms"] + case["copy_ms"], rel=1e-12
    )
