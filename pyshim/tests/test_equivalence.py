"""Equivalence, the central invariant: training under any placement sequence is the same
computation as dropless single-process training on the global batch.

Each case trains TinyNet (dense layers around two swiftmoe.nn.MoE blocks) on 1, 2 and 4 gloo
ranks while the plan source changes the placement every step (experts moving to ranks that never
held them, one expert filling most slots, random valid plans), and compares every dense and
expert parameter with the reference within 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from distributed import run_ranks
from engine_harness import SLOTS_FOR, reference_run, train_ranks

STEPS = 5


def _train_both(rank: int, world_size: int) -> dict:
    return {opt: train_ranks(rank, world_size, opt, STEPS) for opt in ("AdamW", "SGD")}


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_training_matches_single_process_under_changing_placements(world_size: int) -> None:
    results = run_ranks(_train_both, world_size, timeout_s=90)
    for opt in ("AdamW", "SGD"):
        ref = reference_run(opt, STEPS, world_size)
        for rank, res in enumerate(results):
            out = res[opt]
            assert out["events"] == {"accepted": STEPS}, f"rank {rank}: {out['events']}"
            placements = out["placements"]
            changed = sum(a != b for a, b in zip(placements, placements[1:], strict=False))
            assert changed == STEPS - 1, f"placement changed {changed} times, want {STEPS - 1}"
            assert set(ref) == set(out["state"])
            for name, want in ref.items():
                torch.testing.assert_close(
                    out["state"][name],
                    want,
                    rtol=0,
                    atol=1e-5,
                    msg=lambda m, o=opt, n=name, r=rank: f"{o} rank {r} {n}: {m}",
                )
        # every rank agreed on every placement
        assert all(r[opt]["placements"] == results[0][opt]["placements"] for r in results)


def test_adversarial_sequence_moves_experts_to_new_ranks_and_fills_slots() -> None:
    """The placements the test forces really are adversarial (guards the test itself)."""
    from engine_harness import E, adversarial_plan

    N, S = 2, SLOTS_FOR[2]
    static = [k % E for k in range(N * S)]
    held = [set(static[r * S : (r + 1) * S]) for r in range(N)]
    moved = adversarial_plan(0, N, S, 0)
    assert any(e not in held[r] for r in range(N) for e in moved[r * S : (r + 1) * S])
    hot = adversarial_plan(1, N, S, 0)
    assert max(hot.count(e) for e in range(E)) == N * S - (E - 1)
