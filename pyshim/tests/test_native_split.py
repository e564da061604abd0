"""The C port of the split's pricing (swiftmoe/engine/native/split.c) against the NumPy code it
ports (swiftmoe.engine.split, swiftmoe.engine.costmodel): integer results equal and float ones
bit for bit, on random skewed cases (hot experts, idle experts without a slot, experts held on
9 or more ranks so that the amounts' reduceat takes NumPy's pairwise path)."""

from __future__ import annotations

import ctypes
import struct
import types

import numpy as np
import pytest
from native_cases import COST_KINDS, cost_params, skewed_case

from swiftmoe.engine import costmodel as cm
from swiftmoe.engine.native.build import build_library
from swiftmoe.engine.split import amounts, priced, tiers
from swiftmoe.engine.split import demand as demand_mod
from swiftmoe.engine.split.plan_index import prepare

I64 = ctypes.c_int64
I64P = ctypes.POINTER(I64)
F64P = ctypes.POINTER(ctypes.c_double)
ENOMEM, EBUG, EUNSUPPORTED = -1, -2, -3
METHODS = {"fast": 0, "auto": 1}

PLAN_ARRAYS = (
    "pair_K",
    "mult_P",
    "e_P",
    "r_P",
    "deg_E",
    "start_E",
    "idx_K",
    "mult_K",
    "d_k",
    "d_r",
    "d_e",
    "d_pair",
    "dpos_K",
    "d_first_P",
)


class Plan(ctypes.Structure):
    """smoe_plan (smoe.h)."""

    _fields_ = [(n, I64) for n in ("N", "S", "E", "K", "P")]
    _fields_ += [(n, I64P) for n in PLAN_ARRAYS] + [("all_held", ctypes.c_int)]


class Cost(ctypes.Structure):
    """smoe_cost (smoe.h), swiftmoe.engine.costmodel.CostParams."""

    _fields_ = [("ranks", I64), ("ranks_per_node", I64)] + [
        (n, ctypes.c_double)
        for n in (
            "token_bytes",
            "expert_bytes",
            "flops_per_token",
            "flops_per_s",
            "intra_bw",
            "inter_bw",
        )
    ]


def c_cost(p: cm.CostParams) -> Cost:
    return Cost(**p.as_dict())


PLANP, COSTP = ctypes.POINTER(Plan), ctypes.POINTER(Cost)
SIGNATURES = {
    "smoe_plan_init": (ctypes.c_int, [PLANP, I64P, I64, I64, I64]),
    "smoe_plan_free": (None, [PLANP]),
    "smoe_nodes": (I64, [COSTP]),
    "smoe_prices_compute": (ctypes.c_int, [COSTP]),
    "smoe_prices_network": (ctypes.c_int, [COSTP]),
    "smoe_compute_ms": (ctypes.c_double, [COSTP, ctypes.c_double]),
    "smoe_a2a_ms": (ctypes.c_double, [COSTP, I64P, I64P, I64P, I64P]),
    "smoe_pairwise_sum": (ctypes.c_double, [F64P, I64]),
    "smoe_amounts_fast": (ctypes.c_int, [I64P, PLANP, I64P, I64P]),
    "smoe_amounts_node_local": (ctypes.c_int, [I64P, PLANP, I64P, I64, I64P]),
    "smoe_amounts_node_balanced": (ctypes.c_int, [I64P, PLANP, I64P, I64, I64P]),
    "smoe_slot_demand": (None, [PLANP, I64P, I64P]),
    "smoe_row_sum": (I64, [I64P, I64, I64]),
    "smoe_tier_sums": (ctypes.c_int, [I64P, I64P, PLANP, I64P, I64, I64P]),
    "smoe_price": (ctypes.c_int, [COSTP, I64P, I64P, PLANP, I64P, I64, F64P, I64P]),
    "smoe_prices_split": (ctypes.c_int, [COSTP, PLANP, I64]),
    "smoe_priced_demand": (
        ctypes.c_int,
        [I64P, I64P, PLANP, I64P, I64, ctypes.c_int, COSTP, I64P, F64P, I64P],
    ),
}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    path = build_library(tmp_path_factory.mktemp("native_split"), sources=("split.c",))
    so = ctypes.CDLL(str(path))
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


def i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def ptr(a: np.ndarray):
    return a.ctypes.data_as(F64P if a.dtype == np.float64 else I64P)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


class CPlan:
    """A smoe_plan of slots_K, freed on exit."""

    def __init__(self, lib, slots_K, N, S, E):
        self.lib, self.plan = lib, Plan()
        self.slots = i64(slots_K)
        assert lib.smoe_plan_init(ctypes.byref(self.plan), ptr(self.slots), N, S, E) == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.smoe_plan_free(ctypes.byref(self.plan))

    def ref(self):
        return ctypes.byref(self.plan)


# --- cases ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(20240611)
    return [skewed_case(rng, hot=i % 3 == 0) for i in range(240)]


# --- tests ----------------------------------------------------------------------------------


def test_cases_cover_what_the_port_must_match(cases):
    """The case mix has what the assertions need: idle experts without a slot (held_H), all
    experts held with some held on 9 ranks or more, and node groupings of every kind."""
    held_all = pairwise = idle = nodes = 0
    for c, slots, S, rpn in cases:
        _, plan, _ = prepare(c, slots, S)
        held_all += plan.held_H is None
        pairwise += plan.held_H is None and int(plan.deg_E.max()) >= 9
        idle += plan.held_H is not None
        nodes += 0 < rpn < plan.N
    assert min(held_all, idle, nodes) >= 40 and pairwise >= 10, (held_all, pairwise, idle, nodes)


def test_plan_index(lib, cases):
    for c, slots, S, _ in cases:
        _, plan, _ = prepare(c, slots, S)
        with CPlan(lib, slots, plan.N, S, plan.E) as cp:
            got = cp.plan
            assert (got.N, got.S, got.E, got.K, got.P) == (
                plan.N,
                S,
                plan.E,
                plan.K,
                plan.e_P.size,
            )
            assert bool(got.all_held) == (plan.held_H is None)
            for name in PLAN_ARRAYS:
                want = getattr(plan, name)
                arr = np.ctypeslib.as_array(getattr(got, name), shape=(want.size,))
                np.testing.assert_array_equal(arr, want, err_msg=name)


def test_amounts_and_slot_demand(lib, cases):
    for c, slots, S, rpn in cases:
        c_QE, plan, L_E = prepare(c, slots, S)
        with CPlan(lib, slots, plan.N, S, plan.E) as cp:
            want = amounts.amounts_fast(c_QE, plan, L_E)
            x = np.empty(plan.e_P.size, dtype=np.int64)
            assert lib.smoe_amounts_fast(ptr(c_QE), cp.ref(), ptr(i64(L_E)), ptr(x)) == 0
            np.testing.assert_array_equal(x, want)
            d = np.empty(plan.K, dtype=np.int64)
            lib.smoe_slot_demand(cp.ref(), ptr(x), ptr(d))
            np.testing.assert_array_equal(d, demand_mod.slot_demand(plan, want))
            if 0 < rpn < plan.N:
                want = priced.amounts_node_local(c_QE, plan, L_E, rpn)
                rc = lib.smoe_amounts_node_local(ptr(c_QE), cp.ref(), ptr(i64(L_E)), rpn, ptr(x))
                assert rc == 0
                np.testing.assert_array_equal(x, want)
                lib.smoe_slot_demand(cp.ref(), ptr(x), ptr(d))
                np.testing.assert_array_equal(d, demand_mod.slot_demand(plan, want))
                want = priced.amounts_node_balanced(c_QE, plan, L_E, rpn)
                x[:] = -1
                rc = lib.smoe_amounts_node_balanced(ptr(c_QE), cp.ref(), ptr(i64(L_E)), rpn, ptr(x))
                assert rc == 0
                np.testing.assert_array_equal(x, want)
            else:
                for fn in (lib.smoe_amounts_node_local, lib.smoe_amounts_node_balanced):
                    assert fn(ptr(c_QE), cp.ref(), ptr(i64(L_E)), rpn, ptr(x)) == EUNSUPPORTED


def test_amounts_fast_where_rounding_needs_repair(lib, monkeypatch):
    """Every expert on two ranks with an odd handful of tokens: the largest remainders round
    several pairs of a rank up, and repair moves tokens off it (counted through a wrapper)."""
    active, repair = [], amounts.repair

    def counting_repair(plan, x_P, target, budget):
        active.append(int(np.bincount(plan.r_P, x_P, minlength=plan.N).max()) > target)
        return repair(plan, x_P, target, budget)

    monkeypatch.setattr(amounts, "repair", counting_repair)
    rng = np.random.default_rng(5)
    for _ in range(200):
        N, S = int(rng.integers(3, 25)), 2 * int(rng.integers(1, 4))
        E = N * S // 2
        slots = rng.permutation(np.concatenate([np.arange(E), np.arange(E)]))
        c = np.zeros((N, E), dtype=np.int64)
        np.add.at(c, (rng.integers(0, N, E), np.arange(E)), rng.choice([1, 1, 3, 5], E))
        c_QE, plan, L_E = prepare(c, slots, S)
        with CPlan(lib, slots, N, S, E) as cp:
            x = np.empty(plan.e_P.size, dtype=np.int64)
            assert lib.smoe_amounts_fast(ptr(c_QE), cp.ref(), ptr(i64(L_E)), ptr(x)) == 0
            np.testing.assert_array_equal(x, amounts.amounts_fast(c_QE, plan, L_E))
    assert sum(active) >= 5, sum(active)


def _uniform_case(seed):
    """Uniform counts, expert 0 on 9..N ranks (its own multiple of them), all experts held."""
    rng = np.random.default_rng(seed)
    N, S = int(rng.integers(9, 41)), int(rng.integers(1, 4))
    K, d = N * S, int(rng.integers(9, N + 1))
    E = int(rng.integers(1, K - d + 2))
    slots = np.full(K, -1, dtype=np.int64)
    for r in rng.choice(N, d, replace=False):
        slots[r * S + rng.integers(S)] = 0
    free = rng.permutation(np.flatnonzero(slots < 0))
    slots[free[: E - 1]] = np.arange(1, E)
    slots[free[E - 1 :]] = rng.integers(0, E, free.size - E + 1)
    c = np.full((N, E), int(rng.integers(1, 50)), dtype=np.int64)
    c[:, 0] *= int(rng.integers(1, 9))
    return c, slots, S


def _sequential_reduceat(a, idx):
    ends = [*idx[1:], a.size]
    out = np.empty(len(idx))
    for i, (s, t) in enumerate(zip(idx, ends, strict=True)):
        acc = a[s]
        for v in a[s + 1 : t]:
            acc += v
        out[i] = acc
    return out


class _SequentialNumpy:
    """numpy, but np.add.reduceat sums in order (what a port without pairwise sums gives)."""

    add = types.SimpleNamespace(reduceat=_sequential_reduceat)

    def __getattr__(self, name):
        return getattr(np, name)


# Seeds of _uniform_case whose amounts_fast changes when reduceat sums in order (found by a
# search over seeds 0..1499: these amounts depend on the pairwise order's last bit).
PAIRWISE_SENSITIVE_SEEDS = (96, 197, 198, 199, 218, 227)


def test_amounts_fast_sums_experts_pairwise(lib, monkeypatch):
    """Where an expert's pairs are summed in NumPy's pairwise order rather than in order, the
    integer amounts differ: the port must (and does) follow the pairwise order."""
    for seed in PAIRWISE_SENSITIVE_SEEDS:
        c, slots, S = _uniform_case(seed)
        c_QE, plan, L_E = prepare(c, slots, S)
        assert plan.held_H is None and int(plan.deg_E.max()) >= 9
        want = amounts.amounts_fast(c_QE, plan, L_E)
        with monkeypatch.context() as m:
            m.setattr(amounts, "np", _SequentialNumpy())
            assert not np.array_equal(amounts.amounts_fast(c_QE, plan, L_E), want), seed
        with CPlan(lib, slots, plan.N, S, plan.E) as cp:
            x = np.empty(plan.e_P.size, dtype=np.int64)
            assert lib.smoe_amounts_fast(ptr(c_QE), cp.ref(), ptr(i64(L_E)), ptr(x)) == 0
            np.testing.assert_array_equal(x, want, err_msg=str(seed))


def _demands(plan, c_QE, L_E, rpn):
    """Demands to price: the min-max split's, the node-local one's, the paper's even split."""
    out = [demand_mod.slot_demand(plan, amounts.amounts_fast(c_QE, plan, L_E))]
    if 0 < rpn < plan.N:
        x = priced.amounts_node_local(c_QE, plan, L_E, rpn)
        out.append(demand_mod.slot_demand(plan, x))
    out.append(demand_mod.even_demand(plan, L_E))
    return [i64(d) for d in out]


def test_tier_sums_and_price(lib, cases):
    rng = np.random.default_rng(3)
    for c, slots, S, rpn in cases:
        c_QE, plan, L_E = prepare(c, slots, S)
        N = plan.N
        rows = i64(c_QE.sum(1))
        assert [lib.smoe_row_sum(ptr(c_QE), q, plan.E) for q in range(N)] == rows.tolist()
        with CPlan(lib, slots, N, S, plan.E) as cp:
            for d in _demands(plan, c_QE, L_E, rpn):
                want = np.concatenate(tiers.tier_sums(c_QE, plan, d, rpn))
                sums = np.empty(4 * N, dtype=np.int64)
                for row_Q in (None, ptr(rows)):  # summed in the call, or given
                    sums[:] = -1
                    assert (
                        lib.smoe_tier_sums(ptr(c_QE), row_Q, cp.ref(), ptr(d), rpn, ptr(sums)) == 0
                    )
                    np.testing.assert_array_equal(sums, want)
                kind = COST_KINDS[int(rng.integers(len(COST_KINDS)))]
                p = cost_params(N, rpn, kind)
                want_p = priced.price(p, c_QE, plan, d, rpn)
                ms = ctypes.c_double(-1.0)
                sums[:] = -1
                rc = lib.smoe_price(
                    ctypes.byref(c_cost(p)), ptr(c_QE), ptr(rows), cp.ref(), ptr(d), rpn,
                    ctypes.byref(ms), ptr(sums),
                )  # fmt: skip
                assert rc == 0
                assert bits(ms.value) == bits(want_p.ms), (kind, ms.value, want_p.ms)
                np.testing.assert_array_equal(sums, np.concatenate(want_p.sums))


def test_largest_sizes(lib):
    """N = E = 256, S = 8, an expert on 130..256 ranks (the reduceat's pairwise sum recurses
    past 128 terms), on one node and on nodes of 8 and 16 ranks, priced by slow links."""
    rng = np.random.default_rng(256)
    for rpn, kind in ((8, "crawl"), (16, "slow"), (0, "fast")):
        N, E, S = 256, 256, 8
        d = int(rng.integers(130, N + 1))
        slots = np.full(N * S, -1, dtype=np.int64)
        for r in rng.choice(N, d, replace=False):
            slots[r * S + rng.integers(S)] = 0
        free = rng.permutation(np.flatnonzero(slots < 0))
        slots[free[: E - 1]] = np.arange(1, E)
        slots[free[E - 1 :]] = rng.integers(0, 16, free.size - E + 1)
        w = 1.0 / np.arange(1, E + 1) ** 1.2
        c = np.stack([rng.multinomial(8 * 4096, w / w.sum()) for _ in range(N)]).astype(np.int64)
        c_QE, plan, L_E = prepare(c, slots, S)
        assert plan.held_H is None and int(plan.deg_E.max()) > 129
        p = cost_params(N, rpn, kind)
        *_, d_want, _, pr = demand_mod.priced_demand(c, slots, S, rpn, "auto", p)
        with CPlan(lib, slots, N, S, E) as cp:
            x = np.empty(plan.e_P.size, dtype=np.int64)
            assert lib.smoe_amounts_fast(ptr(c_QE), cp.ref(), ptr(i64(L_E)), ptr(x)) == 0
            np.testing.assert_array_equal(x, amounts.amounts_fast(c_QE, plan, L_E))
            dem = np.empty(plan.K, dtype=np.int64)
            sums = np.empty(4 * N, dtype=np.int64)
            ms = ctypes.c_double(-3.0)
            rc = lib.smoe_priced_demand(
                ptr(c_QE), None, cp.ref(), ptr(i64(L_E)), rpn, METHODS["auto"],
                ctypes.byref(c_cost(p)), ptr(dem), ctypes.byref(ms), ptr(sums),
            )  # fmt: skip
            np.testing.assert_array_equal(dem, d_want)
            assert rc == (pr is not None)
            if pr is not None:
                assert bits(ms.value) == bits(pr.ms)
                np.testing.assert_array_equal(sums, np.concatenate(pr.sums))
            want = np.concatenate(tiers.tier_sums(c_QE, plan, d_want, rpn))
            assert lib.smoe_tier_sums(ptr(c_QE), None, cp.ref(), ptr(dem), rpn, ptr(sums)) == 0
            np.testing.assert_array_equal(sums, want)


def test_tier_sums_refuses_demand_that_does_not_add_up(lib):
    c = np.array([[5, 1], [2, 7]], dtype=np.int64)
    slots, S = [0, 1, 1, 0], 2
    c_QE, plan, L_E = prepare(c, slots, S)
    bad = i64([7, 8, 1, 0])  # expert 0 asks 7 of its 7, expert 1 9 of its 8
    with pytest.raises(RuntimeError, match="unrouted"):
        tiers.tier_sums(c_QE, plan, bad, 0)
    with CPlan(lib, slots, 2, S, 2) as cp:
        sums = np.empty(8, dtype=np.int64)
        for rpn in (0, 1):
            assert lib.smoe_tier_sums(ptr(c_QE), None, cp.ref(), ptr(bad), rpn, ptr(sums)) == EBUG


def test_cost_model(lib):
    rng = np.random.default_rng(9)
    for _ in range(200):
        N = int(rng.integers(1, 40))
        rpn = int(rng.choice([0, 1, 2, 3, 4, 8, N, N + 3]))
        p = cost_params(N, rpn, COST_KINDS[int(rng.integers(len(COST_KINDS)))])
        cp = ctypes.byref(c_cost(p))
        assert lib.smoe_nodes(cp) == p.nodes
        assert bool(lib.smoe_prices_compute(cp)) == p.prices_compute
        assert bool(lib.smoe_prices_network(cp)) == p.prices_network
        load = rng.integers(0, 10**6, N)
        want = cm.compute_ms(p, load)
        assert bits(lib.smoe_compute_ms(cp, float(load.max()))) == bits(want)
        s = [i64(rng.integers(0, 10**5, N)) for _ in range(4)]
        want = cm.a2a_ms(p, *s)
        assert bits(lib.smoe_a2a_ms(cp, *(ptr(a) for a in s))) == bits(want)


def test_prices_split_and_priced_demand(lib, cases):
    rng = np.random.default_rng(17)
    outcomes = {"node_balanced": 0, "min_max_cheaper": 0, "not_priced": 0}
    for c, slots, S, rpn in cases:
        c_QE, plan, L_E = prepare(c, slots, S)
        N = plan.N
        rows = i64(c_QE.sum(1))
        with CPlan(lib, slots, N, S, plan.E) as cp:
            assert lib.smoe_prices_split(None, cp.ref(), rpn) == 0
            kinds = [None, *rng.choice(COST_KINDS, 2, replace=False)]
            for method in ("fast", "auto"):
                for kind in kinds:
                    p = None if kind is None else cost_params(N, rpn, str(kind))
                    pc = None if p is None else ctypes.byref(c_cost(p))
                    if p is not None:
                        assert lib.smoe_prices_split(pc, cp.ref(), rpn) == int(
                            priced.prices_split(p, plan, rpn)
                        )
                    *_, d_want, _, pr = demand_mod.priced_demand(c, slots, S, rpn, method, p)
                    d = np.empty(plan.K, dtype=np.int64)
                    sums = np.full(4 * N, -7, dtype=np.int64)
                    ms = ctypes.c_double(-3.0)
                    row_Q = ptr(rows) if kind is not None and rng.integers(2) else None
                    rc = lib.smoe_priced_demand(
                        ptr(c_QE), row_Q, cp.ref(), ptr(i64(L_E)), rpn, METHODS[method], pc,
                        ptr(d), ctypes.byref(ms), ptr(sums),
                    )  # fmt: skip
                    np.testing.assert_array_equal(d, d_want)
                    assert rc == (pr is not None), (method, kind)
                    if pr is None:
                        assert ms.value == -3.0 and (sums == -7).all()  # left alone
                        outcomes["not_priced"] += 1
                        continue
                    assert bits(ms.value) == bits(pr.ms), (ms.value, pr.ms)
                    np.testing.assert_array_equal(sums, np.concatenate(pr.sums))
                    if pr.node_local:
                        outcomes["node_balanced"] += 1
                    else:
                        x = priced.amounts_node_balanced(c_QE, plan, L_E, rpn)
                        if not np.array_equal(demand_mod.slot_demand(plan, x), d_want):
                            outcomes["min_max_cheaper"] += 1
    # Both outcomes of cheaper_demand (a genuine choice) occur.
    assert min(outcomes.values()) >= 5, outcomes


def test_priced_demand_refuses_exact(lib):
    c_QE, plan, L_E = prepare(np.array([[3, 4]]), [0, 1], 2)
    with CPlan(lib, [0, 1], 1, 2, 2) as cp:
        d = np.empty(2, dtype=np.int64)
        ms = ctypes.c_double()
        sums = np.empty(4, dtype=np.int64)
        rc = lib.smoe_priced_demand(
            ptr(c_QE),
            None,
            cp.ref(),
            ptr(i64(L_E)),
            0,
            2,
            None,
            ptr(d),
            ctypes.byref(ms),
            ptr(sums),
        )
        assert rc == EUNSUPPORTED


def test_pairwise_sum_is_numpys(lib):
    """np.add.reduce of a is 0.0 + pairwise(a); np.add.reduceat over [x0, *a] is
    x0 + pairwise(a), which keeps a sum of -0.0 at -0.0."""
    rng = np.random.default_rng(1)
    for n in range(301):
        for scale in (1.0, 1e-8, 1e8):
            a = rng.standard_normal(n) * scale * 10.0 ** rng.integers(-6, 7, n)
            pw = lib.smoe_pairwise_sum(ptr(a), n)
            assert bits(0.0 + pw) == bits(float(np.add.reduce(a))), n
            x0 = float(rng.standard_normal())
            want = np.add.reduceat(np.concatenate(([x0], a)), [0])[0]
            assert bits(x0 + pw) == bits(float(want)), n
        z = np.full(n, -0.0)
        pw = lib.smoe_pairwise_sum(ptr(z), n)
        want = np.add.reduceat(np.concatenate(([-0.0], z)), [0])[0]
        assert bits(-0.0 + pw) == bits(float(want)), n
