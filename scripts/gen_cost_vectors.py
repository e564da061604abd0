#!/usr/bin/env python3
"""Write testdata/vectors/costmodel.json: step-time cost model cases both languages are tested
against.

The expected figures come from the Python implementation of the shared spec
(``swiftmoe.engine.costmodel``); plugins/swiftmoe/costmodel_test.go checks the Go one against the
file and pyshim/tests/test_cost_vectors.py checks that the file is what this script writes.

    python3 scripts/gen_cost_vectors.py          # rewrite the file
    python3 scripts/gen_cost_vectors.py --check  # exit 1 when the committed file is stale

Every case: name, params (ranks, ranks_per_node, token_bytes, expert_bytes, flops_per_token,
flops_per_s, intra_bw, inter_bw), per-rank vectors load, si, ri, se, re, the burst copies as
copy_src / copy_dst ranks, and the expected compute_ms, a2a_ms, copy_ms (of the copies, counted by
copy_traffic) and step_ms (with the copies).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "vectors" / "costmodel.json"
sys.path.insert(0, str(ROOT / "pyshim"))

import vectors_file  # noqa: E402

from swiftmoe.engine import costmodel as cm  # noqa: E402

H200 = dict(
    token_bytes=1536.0,  # d_model 768, bf16
    expert_bytes=9437184.0,  # 768 x 3072 x 2 matrices, bf16
    flops_per_token=28311552.0,  # 6 x 4718592
    flops_per_s=4.0e14,
    intra_bw=300e9,
    inter_bw=12.5e9,
)


def _rng_case(name, seed, ranks, ranks_per_node, params, copies=0, zeros=False):
    rng = np.random.default_rng(seed)
    v = {
        k: (rng.integers(0, 5000, ranks) * (0 if zeros else 1)).astype(float).tolist()
        for k in ("load", "si", "ri", "se", "re")
    }
    src = rng.integers(0, ranks, copies).tolist()
    dst = rng.integers(0, ranks, copies).tolist()
    return dict(
        name=name,
        ranks=ranks,
        ranks_per_node=ranks_per_node,
        params=params,
        **v,
        copy_src=src,
        copy_dst=dst,
    )


def build() -> list[dict]:
    cases = [
        dict(
            name="by hand: 2 nodes of 2",
            ranks=4,
            ranks_per_node=2,
            params=dict(
                token_bytes=1000.0,
                expert_bytes=1e6,
                flops_per_token=6e6,
                flops_per_s=1e12,
                intra_bw=1e9,
                inter_bw=1e8,
            ),
            load=[100.0, 500.0, 0.0, 20.0],
            si=[10.0, 0.0, 0.0, 0.0],
            ri=[0.0, 10.0, 0.0, 0.0],
            se=[0.0, 0.0, 3.0, 0.0],
            re=[3.0, 0.0, 0.0, 0.0],
            copy_src=[0, 1],
            copy_dst=[1, 3],
        ),
        _rng_case("16 H200s in 2 nodes, 12.5 GB/s", 1, 16, 8, H200, copies=3),
        _rng_case("32 H200s in 4 nodes, 50 GB/s", 2, 32, 8, {**H200, "inter_bw": 50e9}, copies=5),
        _rng_case("one node (ranks_per_node 0)", 3, 8, 0, H200, copies=2),
        _rng_case("ranks_per_node >= ranks is one node", 4, 8, 16, H200, copies=2),
        _rng_case("uneven last node", 5, 10, 4, H200, copies=4),
        _rng_case(
            "no bandwidths: compute only",
            6,
            8,
            4,
            {**H200, "intra_bw": 0.0, "inter_bw": 0.0},
            copies=2,
        ),
        _rng_case("no inter-node bandwidth", 7, 8, 4, {**H200, "inter_bw": 0.0}, copies=2),
        _rng_case("no flops: network only", 8, 8, 4, {**H200, "flops_per_s": 0.0}, copies=1),
        _rng_case("no flops per token", 9, 8, 4, {**H200, "flops_per_token": 0.0}),
        _rng_case("nothing moves", 10, 16, 8, H200, zeros=True),
        _rng_case("single rank", 11, 1, 0, H200, copies=1),
    ]
    for c in cases:
        p = cm.CostParams(ranks=c["ranks"], ranks_per_node=c["ranks_per_node"], **c["params"])
        copies = cm.copy_traffic(p, c["copy_src"], c["copy_dst"])
        c["compute_ms"] = cm.compute_ms(p, c["load"])
        c["a2a_ms"] = cm.a2a_ms(p, c["si"], c["ri"], c["se"], c["re"])
        c["copy_ms"] = cm.copy_ms(p, *copies)
        c["step_ms"] = cm.step_ms(p, c["load"], c["si"], c["ri"], c["se"], c["re"], copies)
    return cases


def render(cases: list[dict]) -> str:
    return json.dumps(cases, indent=1) + "\n"


if __name__ == "__main__":
    sys.exit(vectors_file.main(__doc__, OUT, Path(__file__).name, build, render))
