"""The native burst decision: the C port of ``swiftmoe.engine.burst.plan_bursts``, loaded with
ctypes.

The burst decision runs between a layer's counts and its dispatch, on every rank. In NumPy it
takes milliseconds (thousands of small array calls); the C port (``burst.c`` and ``split.c``
beside this file) makes the same decision, bit for bit, in a small fraction of that.
``plan_bursts`` uses it whenever it is found and the split's method is "fast" or "auto".
:func:`split_for_rank` is the C port of one rank's split (``split_tokens_for_rank``, ``route.c``).
The engine's two host steps of a layer call are one C call each, of a few arguments (what
stays the same goes in a struct): :func:`layer_split`, the split of the planned placement
with its checks, which the engine's ``RankSplitter`` runs; :func:`burst_step`, the whole burst
step (the decision, the rank's split over the enlarged placement with its checks, the send
order), which ``burst_run.decide`` runs where the layer splits with the engine's own splitter.
Their results are views of fresh buffers carved from a slab (:func:`_fresh`).

Where the library is looked for, first found wins:

* ``$SWIFTMOE_NATIVE_LIB``, a path to the library (an error when it does not load);
* ``swiftmoe/_bin/libswiftmoe_native.so``, built by ``pip install``;
* ``<repo>/bin/libswiftmoe_native.so`` of a source checkout, built by ``make build``; ignored,
  with a log line, when a C source is newer than it (run ``make build``).

``SWIFTMOE_NATIVE=0`` turns it off: the NumPy decision runs (the same function, slower).
Without a C compiler at install time there is no library and the NumPy decision runs.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from swiftmoe.engine.native.build import LIBRARY_NAME, SOURCES

__all__ = [
    "ENV_LIB",
    "ENV_SWITCH",
    "NativeError",
    "SplitRefused",
    "address",
    "available",
    "burst_step",
    "check_rank_split",
    "layer_split",
    "library",
    "plan_bursts",
    "split_for_rank",
    "use",
    "why",
]

log = logging.getLogger(__name__)

ENV_LIB = "SWIFTMOE_NATIVE_LIB"
ENV_SWITCH = "SWIFTMOE_NATIVE"
_HERE = Path(__file__).resolve().parent
_PKG_DIR = _HERE.parents[1]  # the swiftmoe package
_REPO_DIR = _PKG_DIR.parent.parent

_ABI = 10  # smoe.h's SMOE_ABI: the library must be of the same interface
_METHODS = {"fast": 0, "auto": 1}
_ERRORS = {
    -1: "out of memory",
    -2: "an internal check failed (a bug in swiftmoe's native decision; report it with the "
    "counts and the placement, and set SWIFTMOE_NATIVE=0 to go on with the NumPy decision)",
    -3: "an unsupported split method",
    -4: "a split failed its conservation checks",
    -5: "a negative token count",
    -6: "tokens for an expert without a slot",
}


class NativeError(RuntimeError):
    """The native decision failed; the message says why and how to go on without it."""


class _Cost(ctypes.Structure):
    _fields_ = [
        ("ranks", ctypes.c_int64),
        ("ranks_per_node", ctypes.c_int64),
        ("token_bytes", ctypes.c_double),
        ("expert_bytes", ctypes.c_double),
        ("flops_per_token", ctypes.c_double),
        ("flops_per_s", ctypes.c_double),
        ("intra_bw", ctypes.c_double),
        ("inter_bw", ctypes.c_double),
    ]


class _Planned(ctypes.Structure):
    """smoe_planned: the split on the planned placement (rank.Planned)."""

    _fields_ = [
        ("demand_K", ctypes.c_void_p),
        ("sums", ctypes.c_void_p),
        ("ms", ctypes.c_double),
        ("priced", ctypes.c_int),
    ]


_state: dict = {}


def _candidates() -> list[tuple[Path, bool]]:
    """(path, from a source checkout) in the order they are tried."""
    out = [(_PKG_DIR / "_bin" / LIBRARY_NAME, False)]
    if (_REPO_DIR / "go.mod").is_file():
        out.append((_REPO_DIR / "bin" / LIBRARY_NAME, True))
    return out


def _stale(lib: Path) -> bool:
    t = lib.stat().st_mtime
    return any((_HERE / s).stat().st_mtime > t for s in (*SOURCES, "smoe.h", "smoe_util.h"))


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.smoe_abi.restype = ctypes.c_int64
    lib.smoe_abi.argtypes = []
    abi = int(lib.smoe_abi())
    if abi != _ABI:
        raise OSError(f"interface version {abi}, this swiftmoe needs {_ABI}: rebuild it")
    f = lib.smoe_plan_bursts
    f.restype = ctypes.c_int64
    # Arrays go as raw addresses (c_void_p): plan_bursts below makes every one a C-contiguous
    # int64 or float64 array of the size smoe.h says, and ndpointer's checks cost more than
    # the C decision itself on small layers.
    v, i64 = ctypes.c_void_p, ctypes.c_int64
    f.argtypes = [
        v,  # c_QE [N, E]
        v,  # slots_K [N*S]
        i64,  # N
        i64,  # E
        i64,  # S
        i64,  # B
        ctypes.POINTER(_Cost),
        ctypes.c_double,  # threshold
        ctypes.c_double,  # gate_lo
        ctypes.c_double,  # gate_hi
        ctypes.c_int,  # method
        v,  # load_R [N] or NULL
        ctypes.POINTER(_Planned),  # planned or NULL
        v,  # out_slots [N*(S+B)]
        ctypes.POINTER(ctypes.c_int64),  # out_S
        v,  # out_e [N*B]
        v,  # out_q
        v,  # out_s
        v,  # out_d
        v,  # out_j
        v,  # out_ms [3]
    ]
    f = lib.smoe_split_for_rank
    f.restype = ctypes.c_int
    f.argtypes = [
        v,  # c_QE [N, E]
        v,  # slots_K [N*S]
        i64,  # N
        i64,  # E
        i64,  # S
        i64,  # rank
        i64,  # rpn
        ctypes.c_int,  # method
        ctypes.POINTER(_Cost),  # cost or NULL
        v,  # send_K [N*S]
        v,  # recv_QS [N*S]
        v,  # load_R [N]
        ctypes.POINTER(ctypes.c_int),  # node_local
        ctypes.POINTER(_Planned),  # planned or NULL
    ]
    f = lib.smoe_layer_burst
    f.restype = ctypes.c_int64
    # smoe_burst_args *, c_QE [N, E], load_R [N] or NULL, planned or NULL, its ms, priced, out
    f.argtypes = [v, v, v, v, ctypes.c_double, ctypes.c_int, v]
    f = lib.smoe_layer_step
    f.restype = ctypes.c_int64
    f.argtypes = [v, v, v]  # smoe_burst_args *, c_QE [N, E], out [SMOE_BURST_OUT(N, S, B) + 1]
    f = lib.smoe_layer_split
    f.restype = ctypes.c_int
    f.argtypes = [v, v, v]  # smoe_layer_args *, c_QE [N, E], out [SMOE_LAYER_OUT(K, N)]
    f = lib.smoe_check_rank_split
    f.restype = ctypes.c_int
    f.argtypes = [v, v, i64, i64, i64, i64, v, v, v]  # c_QE, slots_K, N, E, S, r, send, recv, load
    return lib


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"turned off (${ENV_SWITCH}=0)"
    env = os.environ.get(ENV_LIB, "")
    if env:
        try:
            return _bind(Path(env)), f"loaded from ${ENV_LIB}={env}"
        except (OSError, AttributeError) as e:
            raise NativeError(
                f"${ENV_LIB}={env!r} does not load as swiftmoe's native library ({e}): point it "
                f"at {LIBRARY_NAME} (python3 -m swiftmoe.engine.native.build DIR) or unset it"
            ) from e
    tried = []
    for path, checkout in _candidates():
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        if checkout and _stale(path):
            tried.append(f"{path} (older than its C sources: run `make build`)")
            continue
        try:
            return _bind(path), f"loaded from {path}"
        except (OSError, AttributeError) as e:
            tried.append(f"{path} ({e})")
    return None, "not found: " + "; ".join(tried)


def library() -> ctypes.CDLL | None:
    """The loaded library, or None (``why`` says why); loaded once per process."""
    if "lib" not in _state:
        lib, reason = _load()
        _state["lib"], _state["why"] = lib, reason
        if lib is None:
            log.info("swiftmoe: native burst decision %s; the NumPy decision runs", reason)
    return _state["lib"]


def available() -> bool:
    """Whether the native decision runs."""
    return library() is not None


def why() -> str:
    """Where the library was loaded from, or why it was not."""
    library()
    return _state["why"]


def use(native: bool | None, method: str, what: str) -> bool:
    """Whether a caller's ``native`` argument runs the C for ``method``: None when the library
    is loaded and the method ported, False never, True always (a RuntimeError naming ``what``
    and why when it cannot)."""
    if native is False:
        return False
    if method in _METHODS and available():
        return True
    if native:
        raise RuntimeError(
            f"swiftmoe: the native {what} cannot run: {why()}"
            + ("" if method in _METHODS else f"; method {method!r} is not ported")
        )
    return False


def reset() -> None:
    """Forget the loaded library (tests change the environment and load again)."""
    _state.clear()


def _arrays(c_QE, slots, S, method):
    """(library, counts [N, E], placement [N*S]) for a call, the arrays C-contiguous int64 (the
    placement may be a PlanIndex); None when the library is not loaded or the method is not
    ported."""
    lib = library()
    if lib is None or method not in _METHODS:
        return None
    N = c_QE.shape[0]
    c = np.ascontiguousarray(c_QE, dtype=np.int64)
    sl = np.ascontiguousarray(getattr(slots, "slots_K", slots), dtype=np.int64)
    if sl.size != N * S:
        raise ValueError(f"slots {sl.shape} and counts {c.shape} do not match S={S}")
    return lib, c, sl


def plan_bursts(c_QE, slots, S, B, params, threshold, method, load_R, planned=None, gate=None):
    """The native decision on checked inputs (``burst._check``'s; ``planned`` None or the split
    on the planned placement, ``split.rank.Planned``): (Sx, slots_x, e_C, q_C, s_C, d_C, j_C,
    before_ms, after_ms, copy_ms), ``BurstPlan``'s fields after num_experts, or None when it
    does not apply (no library, or the method "exact"). ``gate``: ``burst.plan_bursts``'.

    Raises:
        NativeError: the C code failed (memory, or an internal check).
    """
    got = _arrays(c_QE, slots, S, method)
    if got is None:
        return None
    lib, c, sl = got
    call = _DecisionCall(c, sl, S, B, load_R, planned, 0)
    n = lib.smoe_plan_bursts(*call.args(params, threshold, gate, method))
    if n < 0:
        raise NativeError(f"swiftmoe: the native burst decision failed: {_ERRORS.get(n, n)}")
    return call.plan(n)


class SplitRefused(Exception):
    """:func:`layer_split`'s checks refused: ``what`` is "negative" (``where`` the flat index
    q*E + e of the first negative count), "orphan" (``where`` the first expert with tokens and
    no slot) or "conserve" (the split failed its conservation checks, a bug); the caller words
    the error as its Python checks do."""

    def __init__(self, what: str, where: int) -> None:
        super().__init__(what, where)
        self.what, self.where = what, where


class _Slab:
    """Fresh int64 buffers carved one after another from an array whose address is taken once:
    a buffer's address otherwise costs more than its allocation (``ndarray.ctypes``). Memory
    is never handed out twice while any of it is in use: a full slab starts again from its
    beginning only when no buffer carved from it is alive (every view of it references it),
    and is replaced by a new one otherwise; a replaced slab lives on only as long as its
    buffers do. Small (32 KiB), so that a reused slab is still in the CPU's caches."""

    SIZE = 1 << 12  # int64s of a slab

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.int64)
        self.addr = self.used = 0

    def take(self, n: int) -> tuple[np.ndarray, int]:
        at = self.used
        if at + n > self.buf.size:
            # 2: self.buf and getrefcount's argument; a buffer carved from it adds one
            if n > self.buf.size or sys.getrefcount(self.buf) > 2:
                self.buf = np.empty(max(self.SIZE, n), dtype=np.int64)
                self.addr = self.buf.ctypes.data
            at = 0
        self.used = at + n
        return self.buf[at : at + n], self.addr + 8 * at


_slabs = threading.local()  # one slab per thread: take() is not atomic


def _fresh(n: int) -> tuple[np.ndarray, int]:
    """A fresh int64 buffer of n entries (uninitialised) and its address."""
    try:
        return _slabs.slab.take(n)
    except AttributeError:
        _slabs.slab = _Slab()
        return _slabs.slab.take(n)


class _LayerArgs(ctypes.Structure):
    """smoe_layer_args: smoe_layer_split's arguments but the counts and the outputs."""

    _fields_ = [
        ("slots_K", ctypes.c_void_p),
        ("N", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("S", ctypes.c_int64),
        ("rank", ctypes.c_int64),
        ("rpn", ctypes.c_int64),
        ("cost", ctypes.c_void_p),
        ("method", ctypes.c_int),
    ]


def _counts_at(method, counts_NE) -> tuple:
    """(library, the address of the counts) where a layer call's C split can run: the library
    loaded, the method ported, the counts int64 C-contiguous on the CPU [N, E]; else (library
    or None, None)."""
    lib = library()
    if lib is None or method not in _METHODS or getattr(counts_NE, "ndim", 0) != 2:
        return lib, None
    N, E = counts_NE.shape
    return lib, _int64s(counts_NE, N * E)


def _refuse(rc: int, where: int, what: str):
    """Raise a layer call's C refusal rc < 0: SplitRefused for the checks' (``where`` the
    index they name), NativeError for any other."""
    if rc in (-4, -5, -6):
        raise SplitRefused({-4: "conserve", -5: "negative", -6: "orphan"}[rc], where)
    raise NativeError(f"swiftmoe: the native {what} failed: {_ERRORS.get(rc, rc)}")


def layer_split(counts_NE, slots_K, S, rank, rpn, method, cost, slots_at=None):
    """``RankSplitter``'s split of a planned placement in one C call (``smoe_layer_split``,
    three arguments: the Python call's conversions of fifteen took more time than the counts'
    checks): the counts' checks of ``plan_index.prepare``, the split (as
    :func:`split_for_rank` returns it) and its conservation checks (``splitter._conserves``).

    counts_NE: the counts, an int64 C-contiguous CPU tensor or array [N, E] (anything else:
    None, for the Python path); slots_K: the placement, a checked int64 C-contiguous array
    [N*S] (a PlanIndex's; its ids are checked again in C), and ``slots_at`` its address where
    the caller keeps it (else taken here); 0 <= rank < N; cost None or the job's CostParams,
    checked against the split's nodes by the caller.

    Returns:
        :func:`split_for_rank`'s tuple, its arrays views of one fresh buffer, or None where it
        does not apply (no library, a method not ported, counts of another kind).

    Raises:
        SplitRefused: a negative count, tokens for an expert without a slot, or a split that
            failed its conservation checks.
        NativeError: the C code failed (memory, or an internal check: a slot id outside the
            experts).
    """
    lib, c = _counts_at(method, counts_NE)
    if c is None:
        return None
    N, E = counts_NE.shape
    K = N * S
    if slots_at is None:
        slots_at = _int64s(slots_K, K)
        if slots_at is None or not 0 <= rank < N:
            raise ValueError(f"swiftmoe: the split of rank {rank} of {N} needs an int64 "
                             f"C-contiguous placement of {K} slots")  # fmt: skip
    held = None if cost is None or method != "auto" else _cost_of(cost)
    args = _LayerArgs(slots_at, N, E, S, rank, rpn, held and held[2], _METHODS[method])
    out, at = _fresh(3 * K + 5 * N + 4)
    rc = lib.smoe_layer_split(ctypes.addressof(args), c, at)
    if rc < 0:
        _refuse(rc, int(out[-1]), "split")
    return _split_in(out, 0, K, N, S)


def _split_in(buf, at: int, room: int, N: int, S: int) -> tuple:
    """A rank's split as smoe_layer_split and smoe_layer_burst write it into buf from index
    ``at``: send_K, recv_QS ([room] each, N*S used), load_R [N], demand_K [room], sums [4*N],
    then node_local, priced and the price (a double's bytes); as :func:`split_for_rank` returns
    it (views of buf)."""
    K, info = N * S, at + 3 * room + 5 * N
    sums = ms = None
    if buf[info + 1]:
        flat = buf[info - 4 * N : info]
        sums = (flat[:N], flat[N : 2 * N], flat[2 * N : 3 * N], flat[3 * N :])
        ms = float(buf[info + 2 : info + 3].view(np.float64)[0])
    dem = at + 2 * room + N
    return (
        buf[at : at + K],
        buf[at + room : at + room + K].reshape(N, S),
        buf[at + 2 * room : dem],
        bool(buf[info]),
        (buf[dem : dem + K], ms, sums),
    )


def _split_views(buf, at: int, room: int, N: int, S: int, planned, local) -> tuple:
    """A rank's split as the C wrote it into buf from index ``at``: send_K, recv_QS, load_R,
    demand_K and the four tier sums, each array's room (``room`` for the [N*S] ones, at least
    N*S) one after another; as :func:`split_for_rank` returns it (views of buf)."""
    K = N * S
    send, recv, load, dem, sums_at = (
        at,
        at + room,
        at + 2 * room,
        at + 2 * room + N,
        at + 3 * room + N,
    )
    sums = None
    if planned.priced:
        flat = buf[sums_at : sums_at + 4 * N]
        sums = (flat[:N], flat[N : 2 * N], flat[2 * N : 3 * N], flat[3 * N :])
    ms = float(planned.ms) if planned.priced else None
    return (
        buf[send : send + K],
        buf[recv : recv + K].reshape(N, S),
        buf[load : load + N],
        bool(local.value),
        (buf[dem : dem + K], ms, sums),
    )


class _BurstArgs(ctypes.Structure):
    """smoe_burst_args: smoe_layer_burst's arguments but the counts, load_R and planned."""

    _fields_ = [
        ("slots_K", ctypes.c_void_p),
        ("N", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("S", ctypes.c_int64),
        ("B", ctypes.c_int64),
        ("rank", ctypes.c_int64),
        ("split_rpn", ctypes.c_int64),
        ("cost", ctypes.c_void_p),
        ("threshold", ctypes.c_double),
        ("gate_lo", ctypes.c_double),
        ("gate_hi", ctypes.c_double),
        ("method", ctypes.c_int),
        ("split_method", ctypes.c_int),
    ]


def burst_step(c_QE, slots, S, B, params, threshold, method, load_R, planned, rank, rpn,
               split_method, gate=None):  # fmt: skip
    """The engine's burst step of one layer call on rank ``rank`` past its threshold
    (``burst_run.decide``), in one C call (``smoe_layer_burst``, seven arguments: the Python
    call's conversions of thirty took a third of the step): the decision as :func:`plan_bursts`
    makes it, and where it makes bursts the rank's split over the enlarged placement as the
    layer's splitter makes it (``ranks_per_node`` rpn, ``split_method``, the same cost),
    checked as ``splitter._conserves`` checks it, and the placement's send order
    (``dispatch.slot_order``).

    The inputs are a layer call's own, checked by the split that made ``load_R`` and
    ``planned``: c_QE the counts, an int64 C-contiguous CPU tensor or array [N, E]; slots the
    placement, such a tensor or array [N*S] (its ids are checked in C: a NativeError for one
    outside 0..E-1); ``load_R`` int64 [N] or None; ``planned`` a ``split.rank.Planned`` of that
    split or None; 0 <= rank < N; ``params`` a CostParams of this job.

    Returns:
        None where it does not apply (no library, a method not ported, arrays of another kind);
        else (plan, split, order): plan the fields of :func:`plan_bursts`; split None when no
        burst is made, else (send_K [N*Sx], recv_QS [N, Sx], load_R [N], node_local,
        (demand_K, ms, sums)) as ``split_for_rank`` returns them; order (perm_K, inv_K) [N*Sx]
        or None. Arrays are views of one fresh buffer.

    Raises:
        NativeError: the C code failed (memory, or an internal check); "does not conserve"
        when the enlarged split failed its checks.
    """
    lib = library()
    if lib is None or method not in _METHODS or split_method not in _METHODS:
        return None
    if getattr(c_QE, "ndim", 0) != 2:
        return None
    N, E = c_QE.shape
    K, X, NB = N * S, N * (S + B), max(N * B, 1)
    if not (N >= 1 and S >= 1 and B >= 1 and 0 <= rank < N):
        raise ValueError(f"swiftmoe: a burst step of rank {rank} of {N} with {S} slots and {B} "
                         "burst slots per rank cannot run")  # fmt: skip
    c = _int64s(c_QE, N * E)
    sl = _int64s(slots, K)
    lr = None if load_R is None else _int64s(load_R, N)
    if c is None or sl is None or (load_R is not None and lr is None):
        return None
    held = _cost_of(params)
    args = _BurstArgs(sl, N, E, S, B, rank, rpn, held[2], float(threshold), *_gate(gate),
                      _METHODS[method], _METHODS[split_method])  # fmt: skip
    # The call's buffer: planned's demand and sums [K + 4*N] (the C reads them there, before
    # its outputs, so that an output written past its end runs off the buffer, where a
    # sanitizer sees it), then the outputs [SMOE_BURST_OUT(N, S, B)].
    whole, at = _fresh(K + 4 * N + 1 + 6 * X + 5 * NB + 3 + 5 * N + 3)
    pl, ms, priced = None, 0.0, 0
    if planned is not None:
        pl = at
        if planned.sums is None:
            whole[:K] = planned.demand_K
        else:
            np.concatenate((planned.demand_K, *planned.sums), out=whole[: K + 4 * N])
            ms, priced = float(planned.ms), 1
    buf = whole[K + 4 * N :]
    n = lib.smoe_layer_burst(ctypes.addressof(args), c, lr, pl, ms, priced, at + 8 * (K + 4 * N))
    if n == -4:
        raise NativeError(
            "swiftmoe: the token split over the enlarged placement does not conserve the "
            "counts (a bug in swiftmoe's native split); report it with the counts and the "
            "placement, and set SWIFTMOE_NATIVE=0 to go on with the NumPy split"
        )
    if n < 0:
        raise NativeError(f"swiftmoe: the native burst step failed: {_ERRORS.get(n, n)}")
    Sx = int(buf[0])
    Kx = N * Sx
    i_b = 1 + X
    e_C, q_C, s_C, d_C, j_C = buf[i_b : i_b + 5 * NB].reshape(5, NB)[:, :n]
    i_ms = i_b + 5 * NB
    before, after, copy = buf[i_ms : i_ms + 3].view(np.float64).tolist()
    plan = (Sx, buf[1 : 1 + Kx], e_C, q_C, s_C, d_C, j_C, before, after, copy)
    if n == 0:
        return plan, None, None
    send = i_ms + 3
    perm = send + 3 * X + 5 * N + 3
    split = _split_in(buf, send, X, N, Sx)
    return plan, split, (buf[perm : perm + Kx], buf[perm + X : perm + X + Kx])


def layer_step(counts_NE, slots_K, S, B, params, threshold, method, rank, slots_at=None,
               gate=None):  # fmt: skip
    """A layer call's whole host step in one C call (``smoe_layer_step``): the counts' checks
    and the split of the planned placement as :func:`layer_split` makes them, and where the
    split's loads pass the threshold the burst step as :func:`burst_step` makes it from that
    split (its glue and the planned split's routing are then not paid: the engine's layer
    makes the split's call and the step's call otherwise). The split is the decision's: its
    method ``method`` and its nodes ``params.ranks_per_node``.

    counts_NE and slots_K (with ``slots_at``) as for :func:`layer_split`; B >= 1 burst slots per
    rank; ``params`` the job's CostParams, checked against the split's nodes by the caller.

    Returns:
        None where it does not apply (no library, a method not ported, counts of another
        kind); else (split, bursts, before_ms, after_ms): split as :func:`split_for_rank`
        returns it, of the planned placement where bursts is None, else of the enlarged
        placement; bursts None, or (plan, order) as :func:`burst_step` returns them;
        before_ms and after_ms the decision's (0 where the threshold was not passed; where it
        was passed and no burst made, both the planned split's price, as where ``gate``
        stopped it). Arrays are views of one fresh buffer.

    Raises:
        SplitRefused: as :func:`layer_split`'s (a negative count, tokens for an expert without
            a slot, a split that failed its checks).
        NativeError: the C code failed (memory, or an internal check).
    """
    lib, c = _counts_at(method, counts_NE)
    if c is None:
        return None
    N, E = counts_NE.shape
    K, X, NB = N * S, N * (S + B), max(N * B, 1)
    if slots_at is None:
        slots_at = _int64s(slots_K, K)
    if slots_at is None or not (N >= 1 and S >= 1 and B >= 1 and 0 <= rank < N):
        raise ValueError(f"swiftmoe: a layer step of rank {rank} of {N} with {S} slots and {B} "
                         f"burst slots per rank needs an int64 C-contiguous placement of {K} "
                         "slots")  # fmt: skip
    held = _cost_of(params)
    m = _METHODS[method]
    args = _BurstArgs(slots_at, N, E, S, B, rank, params.ranks_per_node, held[2],
                      float(threshold), *_gate(gate), m, m)  # fmt: skip
    buf, at = _fresh(1 + 6 * X + 5 * NB + 3 + 5 * N + 3 + 1)
    n = lib.smoe_layer_step(ctypes.addressof(args), c, at)
    if n < 0:
        _refuse(n, int(buf[-1]), "layer step")
    Sx = int(buf[0])
    i_b = 1 + X
    i_ms = i_b + 5 * NB
    split = _split_in(buf, i_ms + 3, X, N, Sx)
    before, after, copy = buf[i_ms : i_ms + 3].view(np.float64).tolist()
    if n == 0:
        return split, None, before, after
    Kx = N * Sx
    e_C, q_C, s_C, d_C, j_C = buf[i_b : i_b + 5 * NB].reshape(5, NB)[:, :n]
    plan = (Sx, buf[1 : 1 + Kx], e_C, q_C, s_C, d_C, j_C, before, after, copy)
    perm = i_ms + 3 + 3 * X + 5 * N + 3
    return split, (plan, (buf[perm : perm + Kx], buf[perm + X : perm + X + Kx])), before, after


class _DecisionCall:
    """The arguments of one ``smoe_plan_bursts`` call in one buffer, with one address (each
    array's own address and the outputs' copies cost about as much as the copies in): counts
    [N*E], placement [K], load_R [N], the planned split's demand [K] and tier sums [4*N]; then
    the enlarged placement [N*(S+B)], each burst's e, q, s, d, j [NB each], the three ms (as
    float64), and ``extra`` more int64s from index ``self.extra``. The arrays :meth:`plan`
    returns are views of it, fresh on every call."""

    def __init__(self, c, sl, S, B, load_R, planned, extra: int) -> None:
        N, E = c.shape
        lr = None if load_R is None else np.asarray(load_R).reshape(-1)
        if lr is not None and lr.size != N:
            raise ValueError(f"load_R has {lr.size} entries, want N={N}")
        K, NB = N * S, max(N * B, 1)
        i_sl = N * E
        i_lr = i_sl + K
        i_d = i_lr + N
        i_sums = i_d + K
        self.i_slots = i_slots = i_sums + 4 * N
        self.i_out = i_out = i_slots + N * (S + B)
        self.i_ms = i_ms = i_out + 5 * NB
        self.extra = i_ms + 3
        self.buf = buf = np.empty(self.extra + extra, dtype=np.int64)
        buf[:i_sl] = c.reshape(-1)
        buf[i_sl:i_lr] = sl
        self.addr = a = buf.ctypes.data
        if lr is not None:
            buf[i_lr:i_d] = lr
            lr = a + 8 * i_lr
        pl = None
        if planned is not None:
            buf[i_d:i_sums] = np.asarray(planned.demand_K).reshape(-1)
            if planned.sums is not None:
                for t, v in enumerate(planned.sums):
                    buf[i_sums + t * N : i_sums + (t + 1) * N] = v
            pl = _Planned(
                a + 8 * i_d,
                None if planned.sums is None else a + 8 * i_sums,
                0.0 if planned.ms is None else float(planned.ms),
                int(planned.sums is not None),
            )
        self.N, self.E, self.S, self.B, self.NB = N, E, S, B, NB
        self.lr, self.pl, self.i_sl = lr, pl, i_sl
        self.out_S = ctypes.c_int64(0)

    def args(self, params, threshold, gate, method) -> tuple:
        lo, hi = _gate(gate)
        a, o = self.addr, self.addr + 8 * self.i_out
        NB = self.NB
        return (
            a,
            a + 8 * self.i_sl,
            self.N,
            self.E,
            self.S,
            self.B,
            _cost_ref(params),
            float(threshold),
            lo,
            hi,
            _METHODS[method],
            self.lr,
            None if self.pl is None else ctypes.byref(self.pl),
            a + 8 * self.i_slots,
            ctypes.byref(self.out_S),
            o,
            o + 8 * NB,
            o + 16 * NB,
            o + 24 * NB,
            o + 32 * NB,
            a + 8 * self.i_ms,
        )

    def plan(self, n: int) -> tuple:
        """plan_bursts' tuple after a call that returned n >= 0 bursts."""
        buf, N = self.buf, self.N
        Sx = int(self.out_S.value)
        e_C, q_C, s_C, d_C, j_C = buf[self.i_out : self.i_ms].reshape(5, self.NB)[:, :n]
        before, after, copy = buf[self.i_ms : self.extra].view(np.float64).tolist()
        i = self.i_slots
        return (Sx, buf[i : i + N * Sx], e_C, q_C, s_C, d_C, j_C, before, after, copy)


def _gate(gate) -> tuple[float, float]:
    """The C decision's gate_lo and gate_hi of ``burst.plan_bursts``' gate (None: none)."""
    return (math.inf, -math.inf) if gate is None else (float(gate[0]), float(gate[1]))


def _int64s(t, n: int):
    """The address of t's n int64s when t is a C-contiguous int64 CPU tensor or array of n
    entries, else None."""
    if isinstance(t, torch.Tensor):
        # t.is_cpu: a sixth of t.device.type's time (which builds a device object)
        if t.dtype is not torch.int64 or not t.is_cpu or not t.is_contiguous():
            return None
        return t.data_ptr() if t.numel() == n else None
    if isinstance(t, np.ndarray) and t.dtype == np.int64 and t.size == n:
        f = t.flags
        if not f.c_contiguous:
            return None
        # torch's view of a writable array gives the address in half the time of
        # ndarray.ctypes (torch warns of a read-only one, as a PlanIndex's are)
        return torch.from_numpy(t).data_ptr() if n and f.writeable else t.ctypes.data
    return None


def address(a, n: int) -> int:
    """The address of a's n int64s, for a C-contiguous int64 CPU tensor or array of n entries
    (the caller keeps a alive while the C reads it).

    Raises:
        ValueError: a is not such a tensor or array.
    """
    at = _int64s(a, n)
    if at is None:
        raise ValueError(f"swiftmoe: want a C-contiguous int64 CPU array of {n} entries")
    return at


def check_rank_split(counts_NE, slots_K, S, r, send_K, recv_QS, load_R) -> bool | None:
    """``splitter._conserves`` in C (``smoe_check_rank_split``): whether rank r's split
    (send_K [N*S], recv_QS [N, S], load_R [N]) of the counts [N, E] under the placement
    slots_K [N*S] (ids in 0..E-1, checked) conserves them; None when the library is not loaded
    or an array is not a C-contiguous int64 CPU one of its size (the caller checks in NumPy).

    Raises:
        NativeError: the C code failed (memory).
    """
    lib = library()
    if lib is None or counts_NE.ndim != 2:
        return None
    N, E = counts_NE.shape
    K = N * S
    ptrs = (
        _int64s(counts_NE, N * E),
        _int64s(slots_K, K),
        _int64s(send_K, K),
        _int64s(recv_QS, K),
        _int64s(load_R, N),
    )
    if None in ptrs or not 0 <= r < N:
        return None
    c, sl, send, recv, load = ptrs
    rc = lib.smoe_check_rank_split(c, sl, N, E, S, r, send, recv, load)
    if rc < 0:
        raise NativeError(f"swiftmoe: the native split check failed: {_ERRORS.get(rc, rc)}")
    return bool(rc)


def _cost_of(params) -> tuple:
    """(params, its _Cost, that struct's address), the struct made once for each of the last
    few parameters seen (the engine's are one per layer shape, the same on every call). A
    caller holds the tuple while the C reads the struct: another call may drop it from here."""
    costs = _state.setdefault("costs", {})
    hit = costs.get(id(params))
    if hit is None or hit[0] is not params:
        if len(costs) >= 64:
            costs.clear()
        c = _Cost(
            params.ranks,
            params.ranks_per_node,
            params.token_bytes,
            params.expert_bytes,
            params.flops_per_token,
            params.flops_per_s,
            params.intra_bw,
            params.inter_bw,
        )
        hit = costs[id(params)] = (params, c, ctypes.addressof(c))
    return hit


def _cost_ref(params):
    """byref of :func:`_cost_of`'s struct, for the calls whose argument is a _Cost pointer (it
    holds the struct while the call reads it)."""
    return ctypes.byref(_cost_of(params)[1])


def split_for_rank(c_QE, slots, S, rank, rpn, method, cost):
    """The native ``split_tokens_for_rank`` on checked inputs (``split.demand``'s: c_QE int64
    [N, E], slots int64 [N*S] or its ``PlanIndex``, 0 <= rank < N, ``cost`` None or the job's
    CostParams): (send_K [N*S], recv_QS [N, S], load_R [N], node_local, (demand_K [N*S], ms,
    sums)), int64 arrays (views of one fresh buffer), a bool and the split on the plan (ms and
    sums, four int64 arrays [N], None where stage 1 was not priced), the ``RankSplit``'s fields,
    the same as NumPy's; None when it does not apply (no library, or the method "exact" or
    "even").

    Raises:
        NativeError: the C code failed (memory, or an internal check).
    """
    got = _arrays(c_QE, slots, S, method)
    if got is None:
        return None
    lib, c, sl = got
    N, E = c.shape
    if not 0 <= rank < N:
        raise ValueError(f"rank must be in 0..{N - 1}, got {rank!r}")
    K = N * S
    # send_K, recv_QS, load_R, demand_K, sums: one address to take
    out = np.empty(3 * K + 5 * N, dtype=np.int64)
    a = out.ctypes.data
    local = ctypes.c_int(0)
    planned = _Planned(a + 8 * (2 * K + N), a + 8 * (3 * K + N), 0.0, 0)
    rc = lib.smoe_split_for_rank(
        c.ctypes.data,
        sl.ctypes.data,
        N,
        E,
        S,
        rank,
        rpn,
        _METHODS[method],
        None if cost is None else _cost_ref(cost),
        a,
        a + 8 * K,
        a + 16 * K,
        ctypes.byref(local),
        ctypes.byref(planned),
    )
    if rc < 0:
        raise NativeError(f"swiftmoe: the native split failed: {_ERRORS.get(rc, rc)}")
    return _split_views(out, 0, K, N, S, planned, local)
