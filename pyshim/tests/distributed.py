"""Multi-rank test helper: run a function on N gloo ranks on CPU and collect what each returns.

    from distributed import run_ranks

    def worker(rank, world_size, arg):     # module level, so spawn can import it
        ...                                 # torch.distributed is initialised (gloo)
        return {"params": ...}              # anything torch.save can write

    results = run_ranks(worker, 2, arg, timeout_s=60)   # list, index = rank

Each rank is a fresh process (``torch.multiprocessing`` spawn: no fork, so gRPC and threads are
safe), one torch thread, gloo over a FileStore in a private temporary directory (no port to
race for), and a process-group timeout bounding every collective. ``run_ranks`` waits at most
``timeout_s`` for the ranks, kills them on expiry, and raises with the failing rank's traceback
when one fails.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

# Imported before init_process_group: importing it afterwards (torch.optim does, at the first
# optimizer) keeps references to the default group, so destroy_process_group cannot join gloo's
# worker threads, and one that drops a finished collective's tensors during interpreter exit
# aborts the process ("terminate called without an active exception").
import torch._dynamo  # noqa: F401
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_ranks", "RankError"]


class RankError(RuntimeError):
    """A rank raised, died or ran past the deadline."""


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    args: tuple,
    tmp: str,
    collective_timeout_s: float,
) -> None:
    torch.set_num_threads(1)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["RANK"] = str(rank)
    try:
        store = dist.FileStore(os.path.join(tmp, "store"), world_size)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=collective_timeout_s),
        )
        out = fn(rank, world_size, *args)
        torch.save(out, os.path.join(tmp, f"result_{rank}.pt"))
    except BaseException:
        with open(os.path.join(tmp, f"error_{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 60.0,
    collective_timeout_s: float = 30.0,
    may_vanish: tuple[int, ...] = (),
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; their results by rank.

    A rank in ``may_vanish`` may end without returning (``os._exit(0)``, a rank dying in the
    middle of training); its result is None."""
    with tempfile.TemporaryDirectory(prefix="swiftmoe-ranks-") as tmp:
        ctx = mp.start_processes(
            _entry,
            args=(fn, world_size, args, tmp, collective_timeout_s),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RankError(f"ranks still running after {timeout_s:.0f} s; killed them")
                try:
                    if ctx.join(timeout=min(left, 1.0)):
                        break
                except mp.ProcessRaisedException as e:
                    raise RankError(_errors(tmp) or str(e)) from None
                except mp.ProcessExitedException as e:
                    raise RankError(_errors(tmp) or str(e)) from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
        out = []
        for r in range(world_size):
            path = os.path.join(tmp, f"result_{r}.pt")
            if r in may_vanish and not os.path.exists(path):
                out.append(None)
                continue
            out.append(torch.load(path, weights_only=False))
        return out


def _errors(tmp: str) -> str:
    msgs = []
    for name in sorted(os.listdir(tmp)):
        if name.startswith("error_"):
            with open(os.path.join(tmp, name)) as f:
                msgs.append(f"{name}:\n{f.read()}")
    return "\n".join(msgs)
