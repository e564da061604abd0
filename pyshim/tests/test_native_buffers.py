"""The fresh buffers the native calls write their results into (native._fresh, carved from a
slab whose address is taken once): a buffer is never handed out again while any view of it is
alive, a slab is reused only when none is, and each thread carves from its own."""

from __future__ import annotations

import threading

import numpy as np

from swiftmoe.engine import native


def _span(buf: np.ndarray, at: int) -> tuple[int, int]:
    assert buf.ctypes.data == at  # the address given is the buffer's
    return at, at + 8 * buf.size


def test_live_buffers_never_share_memory_and_a_free_slab_is_reused() -> None:
    slab = native._Slab()
    rng = np.random.default_rng(0)
    live: list[tuple[np.ndarray, int, int]] = []  # (buffer, its mark, its address)
    for i in range(1200):
        n = int(rng.choice([1, 7, 300, 1500, native._Slab.SIZE, native._Slab.SIZE + 5]))
        buf, at = slab.take(n)
        lo, hi = _span(buf, at)
        for other, _, o_at in live:  # no overlap with anything still alive
            o_lo, o_hi = o_at, o_at + 8 * other.size
            assert hi <= o_lo or o_hi <= lo, i
        buf[:] = i
        live.append((buf, i, at))
        if rng.random() < 0.6:  # drop some, keep the rest alive for a while
            live.pop(int(rng.integers(0, len(live))))
        for other, mark, _ in live:
            assert (other == mark).all()  # nothing written over
    live.clear()
    size = native._Slab.SIZE
    first = slab.take(10)[0]
    kept = slab.take(size - slab.used)[0]  # the slab is full, buffers alive
    again = slab.take(10)[0]
    assert again.base is not kept.base  # so a new slab
    held = slab.addr  # (not the slab itself: a reference to it counts as a buffer alive)
    slab.take(size - slab.used)  # full again, `again` alive
    slab.take(10)
    assert slab.addr != held  # so a new slab
    held = slab.addr
    del first, kept, again
    slab.take(size - slab.used)
    at = slab.take(10)[1]  # full, and nothing carved from it alive: it starts again
    assert slab.addr == held == at


def test_each_thread_carves_from_its_own_slab() -> None:
    spans: dict[int, list] = {0: [], 1: []}
    bufs: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2, timeout=30)

    def work(t: int) -> None:
        start.wait()
        for _ in range(2000):
            buf, at = native._fresh(37)
            buf[:] = t
            bufs[t].append(buf)
            spans[t].append((at, at + 8 * 37))

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
        assert not th.is_alive()
    every = sorted(spans[0] + spans[1])
    for (_, hi), (lo, _) in zip(every, every[1:], strict=False):
        assert hi <= lo  # all 4000 live buffers are disjoint
    for t in (0, 1):
        assert all((b == t).all() for b in bufs[t])
