"""The real sidecar and the Python engine agree on who owns what and on what a remap moves.

* Shard layout: RegisterJob (``SidecarClient.register_job``) returns, per MoE layer, the range of
  every expert's flattened parameters that each rank owns. It must be the engine's layout
  (``swiftmoe.optim``: rank r owns [r*P//N, (r+1)*P//N), the width of its fp32 master shards).
* Remap bytes: a plan's RemapSummary says how many bytes each rank sends and receives to fill
  the slots of that plan. The engine's remap (``ShardedExpertOptimizer.remap``) is run here on
  every rank with a Comm that records the ``all_to_all_single`` it issues, and the bytes it
  would put on the wire (to other ranks; a rank's own shard stays local) must equal the
  sidecar's figures, for fp32 and bf16 slots.

Cases cover uneven shards (P not a multiple of N), empty shards (P < N), one rank, several layers
of different sizes and one numel given for all layers.

Shape legend: L MoE layers, E experts, N ranks, S slots per rank, K = N*S slots, P elements of
one expert.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch

from swiftmoe._proto.v1 import swiftmoe_pb2 as pb
from swiftmoe._proto.v1 import swiftmoe_pb2_grpc as pb_grpc
from swiftmoe.engine.dist import Comm
from swiftmoe.engine.optim import ExchangeLayout, ShardedExpertOptimizer, shard_bounds
from swiftmoe.engine.plan import static_slots
from swiftmoe.planning.client import JobSpec, SidecarClient
from swiftmoe.planning.process import ManagedSidecar

REPO = Path(__file__).resolve().parents[1]
SIDECAR = REPO / "bin" / "swiftmoe-sidecar"
RPC_TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(
    not os.access(SIDECAR, os.X_OK), reason=f"{SIDECAR} is missing: run `make build`"
)

# (N, S, experts_per_layer, expert_param_numel as sent, strategy)
CASES = [
    (1, 4, [4], [384], "swiftmoe"),
    (2, 3, [4, 4], [384, 384], "swiftmoe"),  # TinyNet of the engine tests
    (3, 2, [5, 3], [10, 7], "swiftmoe"),  # uneven shards
    (4, 2, [8], [3], "swiftmoe"),  # P < N: one rank owns nothing
    (5, 3, [7, 2], [1], "static"),  # one numel for every layer; P = 1
    (8, 2, [16, 4], [100_003, 17], "swiftmoe"),
]
DTYPES = {4: torch.float32, 2: torch.bfloat16}


@dataclass(frozen=True)
class RecordingComm(Comm):
    """A Comm that records each all_to_all (send tensor, out_splits, in_splits) and answers with
    zeros of the right size instead of talking to peers."""

    calls: list = field(default_factory=list, compare=False)

    def all_to_all(self, x_MD, out_splits, in_splits):
        self.calls.append((x_MD.numel(), x_MD.element_size(), list(out_splits), list(in_splits)))
        return x_MD.new_zeros((sum(out_splits), *x_MD.shape[1:]))


def skewed_loads(E: int, iteration: int) -> list[int]:
    """One hot expert (moving with the iteration) and a tail, so plans replicate and move."""
    hot = iteration % E
    return [1000 if e == hot else 10 * (e + 1) for e in range(E)]


@pytest.fixture(scope="module")
def sidecar():
    tmp = tempfile.mkdtemp(prefix="smoe-lay-")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tmp
    try:
        sc = ManagedSidecar(start_timeout_s=30)
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
    try:
        yield sc
    finally:
        sc.close()
        assert not sc.alive()
        left = os.listdir(tmp)
        os.rmdir(tmp)
        assert left == [], f"sidecar left {left} in its TMPDIR"


@pytest.fixture(scope="module")
def stub(sidecar):
    channel = grpc.insecure_channel(sidecar.address)
    try:
        yield pb_grpc.PlannerStub(channel)
    finally:
        channel.close()


def engine_remap_bytes(
    numels_L: list[int], E_L: list[int], N: int, S: int, slots_LK: list[list[int]], dtype
) -> tuple[list[int], list[int], list[list[int]]]:
    """(send_N, recv_N, shard widths per rank per layer) of the engine's remap to slots_LK.

    Every rank's ShardedExpertOptimizer is built and its remap run with a RecordingComm; the
    bytes to and from other ranks are summed from the splits of the all_to_all it issued.
    """
    full_L = [torch.zeros(E, P) for E, P in zip(E_L, numels_L, strict=True)]
    slots_t = [torch.tensor(s, dtype=torch.long) for s in slots_LK]
    send, recv, widths = [], [], []
    for r in range(N):
        comm = RecordingComm(rank=r, world_size=N)
        opt = ShardedExpertOptimizer(full_L, S, comm, torch.optim.SGD, {"lr": 0.1}, 1.0)
        widths.append([m.shape[1] for m in opt.masters])
        out = opt.remap(slots_t, dtype)
        assert [tuple(t.shape) for t in out] == [(S, P) for P in numels_L]
        if N == 1:  # one rank's remap is local: no collective, nothing to or from another rank
            assert comm.calls == [], "a one-rank remap issued an all_to_all"
            send.append(0)
            recv.append(0)
            continue
        assert len(comm.calls) == 1, f"remap issued {len(comm.calls)} all_to_alls, want 1"
        numel, elem, out_splits, in_splits = comm.calls[0]
        assert elem == torch.tensor([], dtype=dtype).element_size()
        assert numel == sum(in_splits) and len(out_splits) == len(in_splits) == N
        send.append(sum(n for c, n in enumerate(in_splits) if c != r) * elem)
        recv.append(sum(n for c, n in enumerate(out_splits) if c != r) * elem)
    return send, recv, widths


def changed(prev: list[list[int]], new: list[list[int]]) -> int:
    return sum(a != b for p, n in zip(prev, new, strict=True) for a, b in zip(p, n, strict=True))


@pytest.mark.parametrize("N, S, E_L, numel_sent, strategy", CASES)
def test_register_job_layout_is_the_engines(sidecar, N, S, E_L, numel_sent, strategy) -> None:
    client = SidecarClient(sidecar.address, RPC_TIMEOUT_S)
    try:
        spec = JobSpec(
            world_size=N,
            slots_per_rank=S,
            experts_per_layer=E_L,
            expert_param_numel=numel_sent,
            strategy=strategy,
        )
        reg = client.register_job(spec)
    finally:
        client.close()
    numels_L = numel_sent * len(E_L) if len(numel_sent) == 1 else numel_sent
    assert len(reg.shard_layout) == len(E_L)
    engine = ExchangeLayout(numels_L, S, Comm(rank=0, world_size=N))
    for li, (ranges, P) in enumerate(zip(reg.shard_layout, numels_L, strict=True)):
        want = [(r, r * P // N, (r + 1) * P // N - r * P // N) for r in range(N)]
        assert ranges == want, f"layer {li} (P={P}, N={N}): got {ranges}, want {want}"
        b = engine.bounds_L[li]
        assert b == shard_bounds(P, N)
        assert [(r, b[r], b[r + 1] - b[r]) for r in range(N)] == ranges
        assert sum(n for _, _, n in ranges) == P
    # Each rank's master shards are exactly as wide as the range the sidecar gave it.
    _, _, widths = engine_remap_bytes(numels_L, E_L, N, S, reg.initial_plan.slots_LK, torch.float32)
    for r in range(N):
        assert widths[r] == [layer[r][2] for layer in reg.shard_layout], f"rank {r}"


@pytest.mark.parametrize("bytes_per_param", sorted(DTYPES))
@pytest.mark.parametrize("N, S, E_L, numel_sent, strategy", CASES)
def test_remap_summary_bytes_are_what_the_engine_sends(
    stub, N, S, E_L, numel_sent, strategy, bytes_per_param
) -> None:
    numels_L = numel_sent * len(E_L) if len(numel_sent) == 1 else numel_sent
    spec = JobSpec(
        world_size=N,
        slots_per_rank=S,
        experts_per_layer=E_L,
        expert_param_numel=numel_sent,
        strategy=strategy,
        bytes_per_param=bytes_per_param,
    )
    reg = stub.RegisterJob(spec.to_proto(), timeout=RPC_TIMEOUT_S)
    plans = [reg.initial_plan]
    for it in range(3):
        req = pb.ReportLoadsRequest(
            job_id=reg.job_id,
            iteration=it,
            layers=[pb.LayerLoads(tokens=skewed_loads(E, it)) for E in E_L],
        )
        plans.append(stub.ReportLoads(req, timeout=RPC_TIMEOUT_S).plan)
    dtype = DTYPES[bytes_per_param]
    prev = [static_slots(E, N, S) for E in E_L]  # a job starts on the static placement
    for i, plan in enumerate(plans):
        slots_LK = [list(layer.slots) for layer in plan.layers]
        send, recv, _ = engine_remap_bytes(numels_L, E_L, N, S, slots_LK, dtype)
        rs = plan.remap
        what = f"plan {i} (N={N}, S={S}, P={numels_L}, {bytes_per_param} B/param)"
        assert list(rs.send_bytes) == send, (
            f"{what}: send_bytes {list(rs.send_bytes)}, engine {send}"
        )
        assert list(rs.recv_bytes) == recv, (
            f"{what}: recv_bytes {list(rs.recv_bytes)}, engine {recv}"
        )
        assert rs.total_bytes == sum(send) == sum(recv), what
        assert rs.changed_slots == changed(prev, slots_LK), what
        assert rs.migrated_bytes == 0, f"{what}: SwiftMoE never migrates optimizer state"
        prev = slots_LK
    # Under skew the plans really move replicas (the transfer does not depend on the plan).
    if strategy != "static" and N * S > max(E_L):
        first = [list(lay.slots) for lay in plans[0].layers]
        assert any([list(lay.slots) for lay in p.layers] != first for p in plans[1:]), (
            f"the {strategy} strategy never moved a replica under skewed loads"
        )
