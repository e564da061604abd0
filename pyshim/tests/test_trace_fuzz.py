"""A fuzz target for the routing-trace reader the simulator and the report share
(``swiftmoe.sim.trace.read_trace_loads``, and ``read_trace`` over it), run as a test.

A seeded random-mutation loop (no extra dependency): valid traces are mutated byte by byte and
token by token (flips, cuts, duplicated spans, and insertions from a dictionary of what breaks
readers: counts past int64, floats, NaN, deep nesting, keys, brackets, invalid UTF-8) and
each result is read. The reader must either return a well-formed trace (every line's counts
integers in [0, int64], one shape for every line, ordered by iteration, the total within int64,
and ``read_trace`` the same as an int64 array) or raise ValueError naming the file; any other
exception, or a result breaking those rules, fails the test and prints the input.

It runs for SWIFTMOE_FUZZ_S seconds (2 by default; ``make test`` keeps the default) from seed
SWIFTMOE_FUZZ_SEED (0), so a failure reproduces with the same seed and time.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np

from swiftmoe.sim.trace import INT64_MAX, read_trace, read_trace_loads

FUZZ_S = float(os.environ.get("SWIFTMOE_FUZZ_S", "2"))
SEED = int(os.environ.get("SWIFTMOE_FUZZ_SEED", "0"))

SEEDS = [
    b'{"iteration": 0, "loads": [[3, 5], [4, 4]]}\n{"iteration": 1, "loads": [[1, 7], [0, 8]]}\n',
    b'{"iteration": 3, "loads": [[1, 2, 3]]}\n\n{"iteration": 1, "loads": [[0, 0, 9]]}\n',
    b'{"loads": [[9223372036854775807]], "iteration": 0}\n',
    b'{"iteration": 0, "loads": [[1], [2, 3]]}\n',
]
TOKENS = [
    b"-1",
    b"0",
    b"1.5",
    b"1e309",
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b'"x"',
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"9" * 40,
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b'"loads"',
    b'"iteration"',
    b"[" * 3000,
    b"\n",
    b"\xff",
    b"\xc3",
    b"\x00",
    b" ",
    b"[[]]",
    b"[[0]]",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            j = rng.randrange(len(b))
            b[j] = rng.randrange(256)
        elif op == 1:  # insert a token
            b[i:i] = rng.choice(TOKENS)
        elif op == 2 and b:  # cut a span
            b[i : i + rng.randint(1, 8)] = b""
        elif op == 3 and b:  # duplicate a span
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 40)]
        else:  # replace a number with a token
            digits = [k for k, c in enumerate(b) if chr(c).isdigit()]
            if digits:
                k = rng.choice(digits)
                b[k : k + 1] = rng.choice(TOKENS)
    return bytes(b)


def check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        rows = read_trace_loads(path)
    except ValueError as e:
        assert str(path) in str(e) or "trace" in str(e), f"error names no file: {e}"
        return
    shape = [len(r) for r in rows[0]]
    total = 0
    for loads in rows:
        assert [len(r) for r in loads] == shape
        for r in loads:
            for v in r:
                assert type(v) is int and 0 <= v <= INT64_MAX, v
            total += sum(r)
    assert total <= INT64_MAX
    if len(set(shape)) == 1:
        arr = read_trace(path)
        assert arr.dtype == np.int64 and arr.tolist() == rows
        assert int(arr.sum()) == total  # no wrap-around anywhere


def test_trace_reader_fuzz(tmp_path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "fuzz.jsonl"
    corpus = list(SEEDS)
    end = time.monotonic() + FUZZ_S
    n = 0
    while time.monotonic() < end or n < 200:
        data = mutate(rng, rng.choice(corpus))
        try:
            check(path, data)
        except Exception as e:  # report the input that broke the reader
            raise AssertionError(
                f"input {n} (SWIFTMOE_FUZZ_SEED={SEED}) broke the reader: "
                f"{type(e).__name__}: {e}\n{data[:2000]!r}"
            ) from e
        if len(corpus) < 64 and rng.random() < 0.05:
            corpus.append(data[:4096])
        n += 1
    print(f"trace reader fuzz: {n} inputs in {FUZZ_S:g}s from seed {SEED}")
