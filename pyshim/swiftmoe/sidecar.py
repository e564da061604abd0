"""The sidecar lifecycle, seen from Python: find, start, talk to, restart and stop it.

* :class:`SidecarClient` is a thin gRPC client of the ``swiftmoe.v1.Planner`` service. Every call
  has a deadline; the channel is created at the first call (grpcio is not fork-safe: create
  clients only after worker processes are spawned).
* :class:`ManagedSidecar` runs ``swiftmoe-sidecar serve --exit-with-parent`` and waits for its
  ``listening on ADDRESS`` line. ``close()`` (also run at exit and on SIGTERM) stops it and every
  process it started: SIGTERM, a bounded wait, then SIGKILL to its whole process group.
* :class:`PlanService` is what rank 0 of the engine uses (the ``PlanSource`` protocol of
  ``swiftmoe.plan_source``): ``submit`` hands an iteration's loads to one worker thread and never
  blocks, ``poll(deadline_s)`` returns the newest plan or ``None``. When the sidecar dies or
  hangs, the worker restarts the sidecar it owns and re-registers the same job, logging what
  happened; meanwhile ``poll`` returns ``None`` and the engine keeps its placement.

Finding the binary (:func:`find_sidecar_binary`): the ``binary`` argument, ``$SWIFTMOE_SIDECAR``,
the copy bundled in the package (``swiftmoe/_bin/``, filled by ``pip install``), then
``<repo>/bin/`` of a source checkout (``make build``). Plugins (:func:`find_plugins_dir`): the
``plugins_dir`` argument, ``$SWIFTMOE_PLUGINS_DIR``, else the binary's folder.

Shape legend: L MoE layers, E experts of a layer, K = N*S slots of a layer (N ranks, S slots
per rank). ``loads_LE[l][e]`` is the global token count of expert e in layer l; ``slots_LK[l][k]``
is the expert held by slot k = r*S + s of layer l.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import signal
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from swiftmoe._proto.v1 import swiftmoe_pb2 as pb
from swiftmoe._proto.v1 import swiftmoe_pb2_grpc as pb_grpc
from swiftmoe.plan_source import WorkerPlanSource

__all__ = [
    "JobSpec",
    "ManagedSidecar",
    "PlanService",
    "Registration",
    "SidecarClient",
    "SidecarError",
    "SidecarNotFoundError",
    "SidecarPlan",
    "find_plugins_dir",
    "find_sidecar_binary",
]

log = logging.getLogger("swiftmoe.sidecar")

BINARY_NAME = "swiftmoe-sidecar"
ENV_BINARY = "SWIFTMOE_SIDECAR"
ENV_PLUGINS = "SWIFTMOE_PLUGINS_DIR"
READY_PREFIX = "listening on "

_PKG_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PKG_DIR.parent.parent


class SidecarError(RuntimeError):
    """A sidecar call or process failed. ``code`` is the gRPC status code when there is one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class SidecarNotFoundError(SidecarError, FileNotFoundError):
    """No ``swiftmoe-sidecar`` binary was found; the message lists where it looked."""


# ---------------------------------------------------------------------------- finding binaries


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_sidecar_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """The sidecar binary: ``binary``, ``$SWIFTMOE_SIDECAR``, the bundled one, ``<repo>/bin``.

    Raises SidecarNotFoundError naming what was tried and how to get one.
    """
    if binary is not None:
        p = Path(binary)
        if not _executable(p):
            raise SidecarNotFoundError(
                f"sidecar binary {str(p)!r} (the binary argument) is not an executable file: "
                "pass the path of swiftmoe-sidecar, or leave it out to use the bundled one"
            )
        return p
    env = os.environ.get(ENV_BINARY, "")
    if env:
        p = Path(env)
        if not _executable(p):
            raise SidecarNotFoundError(
                f"${ENV_BINARY}={env!r} is not an executable file: point it at swiftmoe-sidecar "
                "or unset it"
            )
        return p
    tried = [_PKG_DIR / "_bin" / BINARY_NAME]
    if (_REPO_DIR / "go.mod").is_file():
        tried.append(_REPO_DIR / "bin" / BINARY_NAME)
    for p in tried:
        if _executable(p):
            return p
    raise SidecarNotFoundError(
        f"{BINARY_NAME} not found (tried ${ENV_BINARY}, "
        + ", ".join(str(p) for p in tried)
        + "): run `make build` in the source checkout, or `pip install .` to bundle it, "
        f"or set ${ENV_BINARY}"
    )


def find_plugins_dir(
    plugins_dir: str | os.PathLike[str] | None = None, binary: Path | None = None
) -> Path:
    """The strategy plugins folder: ``plugins_dir``, ``$SWIFTMOE_PLUGINS_DIR``, else the binary's."""
    for value, what in (
        (plugins_dir, "the plugins_dir argument"),
        (os.environ.get(ENV_PLUGINS), f"${ENV_PLUGINS}"),
    ):
        if value:
            p = Path(value)
            if not p.is_dir():
                raise SidecarNotFoundError(
                    f"plugins directory {str(p)!r} ({what}) is not a directory: pass the folder "
                    "holding swiftmoe-strategy-* binaries"
                )
            return p
    return (binary or find_sidecar_binary()).resolve().parent


# ---------------------------------------------------------------------------- job and plan types


@dataclass(frozen=True)
class JobSpec:
    """A job's shape as the sidecar's RegisterJob takes it (see swiftmoe.proto).

    slots_per_rank 0 asks the sidecar to choose from its machine's free GPU memory, and link
    bandwidths 0 take the discovered ones; ``Registration.topology`` holds what is in force.
    """

    world_size: int
    slots_per_rank: int
    experts_per_layer: Sequence[int]
    expert_param_numel: Sequence[int]
    strategy: str = "swiftmoe"
    strategy_options: Mapping[str, str] = field(default_factory=dict)
    ranks_per_node: int = 0
    bytes_per_param: int = 4
    optimizer_bytes_per_param: int = 12
    intra_node_bandwidth: float = 0.0
    inter_node_bandwidth: float = 0.0
    current_slots: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        w = self.world_size
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"JobSpec.world_size is {w!r}: pass an integer >= 1")
        for name in (
            "slots_per_rank",
            "ranks_per_node",
            "bytes_per_param",
            "optimizer_bytes_per_param",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"JobSpec.{name} is {v!r}: pass an integer >= 0")
        experts = list(self.experts_per_layer)
        if not experts or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in experts
        ):
            raise ValueError(
                f"JobSpec.experts_per_layer is {experts!r}: pass one integer >= 1 per MoE layer"
            )
        numel = list(self.expert_param_numel)
        if len(numel) not in (1, len(experts)) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in numel
        ):
            raise ValueError(
                f"JobSpec.expert_param_numel is {numel!r}: pass one integer >= 1 per MoE layer "
                f"({len(experts)}) or a single one for all layers"
            )
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(
                f"JobSpec.strategy is {self.strategy!r}: pass a strategy name such as 'swiftmoe'"
            )
        for k, v in dict(self.strategy_options).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(
                    f"JobSpec.strategy_options[{k!r}] is {v!r}: option names and values are strings"
                )
        for name in ("intra_node_bandwidth", "inter_node_bandwidth"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"JobSpec.{name} is {v!r}: pass bytes/s >= 0 (0 = unknown)")
        cur = self.current_slots
        if self.slots_per_rank == 0 and cur is not None:
            raise ValueError(
                "JobSpec.current_slots: a placement fixes the slots per rank; pass slots_per_rank "
                "(0 lets the sidecar choose only for the static start)"
            )
        if cur is not None:
            total = self.world_size * self.slots_per_rank
            rows = [list(r) for r in cur]
            if len(rows) != len(experts) or any(
                len(r) != total or any(isinstance(x, bool) or not isinstance(x, int) for x in r)
                for r in rows
            ):
                raise ValueError(
                    f"JobSpec.current_slots: pass one list of {total} expert ids per MoE layer "
                    f"({len(experts)}), or None for the static placement"
                )
            object.__setattr__(self, "current_slots", tuple(tuple(r) for r in rows))
        object.__setattr__(self, "experts_per_layer", tuple(experts))
        object.__setattr__(self, "expert_param_numel", tuple(numel))
        object.__setattr__(self, "strategy_options", dict(self.strategy_options))

    def to_proto(self, job_id: str = "") -> pb.RegisterJobRequest:
        return pb.RegisterJobRequest(
            job_id=job_id,
            topology=pb.Topology(
                world_size=self.world_size,
                ranks_per_node=self.ranks_per_node,
                slots_per_rank=self.slots_per_rank,
                intra_node_bandwidth=float(self.intra_node_bandwidth),
                inter_node_bandwidth=float(self.inter_node_bandwidth),
            ),
            experts_per_layer=list(self.experts_per_layer),
            expert_param_numel=list(self.expert_param_numel),
            bytes_per_param=self.bytes_per_param,
            optimizer_bytes_per_param=self.optimizer_bytes_per_param,
            strategy=self.strategy,
            strategy_options=dict(self.strategy_options),
            current_slots=[pb.LayerSlots(slots=list(r)) for r in self.current_slots or ()],
        )


@dataclass(frozen=True)
class SidecarPlan:
    """A plan from the sidecar as plain Python values."""

    job_id: str
    iteration: int
    strategy: str
    slots_LK: list[list[int]]
    max_over_mean: float
    source: str
    note: str
    remap_total_bytes: int
    remap_changed_slots: int = 0
    remap_migrated_bytes: int = 0

    @classmethod
    def from_proto(cls, p: pb.Plan) -> SidecarPlan:
        return cls(
            job_id=p.job_id,
            iteration=int(p.iteration),
            strategy=p.strategy,
            slots_LK=[list(layer.slots) for layer in p.layers],
            max_over_mean=float(p.max_over_mean),
            source=pb.PlanSource.Name(p.source),
            note=p.note,
            remap_total_bytes=int(p.remap.total_bytes),
            remap_changed_slots=int(p.remap.changed_slots),
            remap_migrated_bytes=int(p.remap.migrated_bytes),
        )


@dataclass(frozen=True)
class Registration:
    """RegisterJob's answer: the job id, per-layer shard ranges ``(rank, offset, length)``, the
    initial plan, the topology in force (``world_size``, ``ranks_per_node``, ``slots_per_rank``,
    ``intra_node_bandwidth``, ``inter_node_bandwidth``: the request's, with the values it left 0
    filled from the sidecar's hardware discovery) and one line per filled value with its source."""

    job_id: str
    shard_layout: list[list[tuple[int, int, int]]]
    initial_plan: SidecarPlan
    strategy: dict[str, Any]
    topology: dict[str, Any] = field(default_factory=dict)
    defaults: list[str] = field(default_factory=list)


def _strategy_info(s: pb.StrategyInfo) -> dict[str, Any]:
    return {
        "name": s.name,
        "description": s.description,
        "version": s.version,
        "path": s.path,
        "sha256": s.sha256,
        "options": [
            {"name": o.name, "description": o.description, "default": o.default_value}
            for o in s.options
        ],
    }


def _loads_proto(loads_LE: Any) -> list[pb.LayerLoads]:
    if hasattr(loads_LE, "tolist"):
        loads_LE = loads_LE.tolist()
    if isinstance(loads_LE, (str, bytes)) or not isinstance(loads_LE, Sequence) or not loads_LE:
        raise ValueError(
            f"loads_LE is {type(loads_LE).__name__}: pass one list of per-expert token counts per "
            "MoE layer"
        )
    out = []
    for li, row in enumerate(loads_LE):
        if hasattr(row, "tolist"):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"loads_LE[{li}] is {type(row).__name__}: pass a list of token counts")
        for e, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"loads_LE[{li}][{e}] is {v!r}: token counts are integers >= 0")
        out.append(pb.LayerLoads(tokens=row))  # checked: plain ints >= 0
    return out


# ---------------------------------------------------------------------------- gRPC client


class SidecarClient:
    """gRPC client of the Planner service at ``address`` (``unix:///path`` or ``host:port``).

    Every call waits at most ``timeout_s`` (or the call's own ``timeout_s``) and raises
    SidecarError with the gRPC code on failure. The channel is created at the first call.
    """

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError(
                f"SidecarClient address is {address!r}: pass 'unix:///path/to/socket' or 'host:port'"
            )
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"SidecarClient timeout_s is {timeout_s!r}: pass seconds > 0")
        self.address = address.strip()
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.PlannerStub | None = None

    def _planner(self) -> pb_grpc.PlannerStub:
        with self._lock:
            if self._stub is None:
                # The sidecar prints tcp://HOST:PORT; gRPC dials HOST:PORT.
                target = self.address.removeprefix("tcp://")
                # Plans of large jobs exceed gRPC's 4 MiB default; the sidecar bounds its own.
                self._channel = grpc.insecure_channel(
                    target,
                    options=[
                        ("grpc.max_receive_message_length", -1),
                        ("grpc.max_send_message_length", -1),
                    ],
                )
                self._stub = pb_grpc.PlannerStub(self._channel)
            return self._stub

    def _call(self, method: str, request: Any, timeout_s: float | None) -> Any:
        t = self.timeout_s if timeout_s is None else float(timeout_s)
        if not t > 0:
            raise ValueError(f"{method} timeout_s is {timeout_s!r}: pass seconds > 0")
        try:
            return getattr(self._planner(), method)(request, timeout=t)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "UNKNOWN"
            raise SidecarError(
                f"sidecar {method} at {self.address} failed: {name}: {details}", code
            ) from None

    def register_job(
        self, spec: JobSpec, job_id: str = "", timeout_s: float | None = None
    ) -> Registration:
        if not isinstance(spec, JobSpec):
            raise ValueError(f"register_job spec is {type(spec).__name__}: pass a JobSpec")
        r = self._call("RegisterJob", spec.to_proto(job_id), timeout_s)
        return Registration(
            job_id=r.job_id,
            shard_layout=[
                [(int(s.rank), int(s.offset), int(s.length)) for s in layer.ranges]
                for layer in r.shard_layout
            ],
            initial_plan=SidecarPlan.from_proto(r.initial_plan),
            strategy=_strategy_info(r.strategy),
            topology={
                "world_size": int(r.topology.world_size),
                "ranks_per_node": int(r.topology.ranks_per_node),
                "slots_per_rank": int(r.topology.slots_per_rank),
                "intra_node_bandwidth": float(r.topology.intra_node_bandwidth),
                "inter_node_bandwidth": float(r.topology.inter_node_bandwidth),
            },
            defaults=list(r.defaults),
        )

    def report_loads(
        self, job_id: str, iteration: int, loads_LE: Any, timeout_s: float | None = None
    ) -> SidecarPlan:
        """Sends iteration's loads; returns the plan for iteration+1."""
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"report_loads iteration is {iteration!r}: pass an integer >= 0")
        req = pb.ReportLoadsRequest(
            job_id=job_id, iteration=iteration, layers=_loads_proto(loads_LE)
        )
        return SidecarPlan.from_proto(self._call("ReportLoads", req, timeout_s).plan)

    def get_plan(self, job_id: str, timeout_s: float | None = None) -> SidecarPlan:
        return SidecarPlan.from_proto(
            self._call("GetPlan", pb.GetPlanRequest(job_id=job_id), timeout_s)
        )

    def list_strategies(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        r = self._call("ListStrategies", pb.ListStrategiesRequest(), timeout_s)
        return [_strategy_info(s) for s in r.strategies]

    def check_health(self, timeout_s: float | None = None) -> None:
        """Liveness probe (ListStrategies); raises SidecarError when the sidecar does not answer."""
        self.list_strategies(timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- process management

_live: weakref.WeakSet[ManagedSidecar] = weakref.WeakSet()
_live_lock = threading.Lock()
_handlers_installed = False


def _close_all() -> None:
    with _live_lock:
        sidecars = list(_live)
    for s in sidecars:
        try:
            s.close()
        except Exception as e:  # best effort at exit: report and go on with the others
            log.error("stopping sidecar pid %s at exit: %s", s.pid, e)


def _install_exit_handlers() -> None:
    """atexit plus a SIGTERM handler that stops every sidecar, then runs the previous handler."""
    global _handlers_installed
    with _live_lock:
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        log.debug(
            "not in the main thread: SIGTERM handler not installed (atexit and "
            "--exit-with-parent still stop the sidecar)"
        )
        return
    prev = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _close_all()
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL or prev is None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


class ManagedSidecar:
    """A ``swiftmoe-sidecar serve`` process owned by this Python process.

    Starts at construction and waits up to ``start_timeout_s`` for its ``listening on ADDRESS``
    line; ``address`` is then what :class:`SidecarClient` connects to. The process runs in its own
    process group so that ``close()`` can also stop the plugins it started.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        plugins_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise ValueError(
                f"ManagedSidecar extra_args is {extra_args!r}: pass a sequence of strings"
            )
        for name, v in (("start_timeout_s", start_timeout_s), ("stop_timeout_s", stop_timeout_s)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"ManagedSidecar {name} is {v!r}: pass seconds > 0")
        self.binary = find_sidecar_binary(binary)
        self.plugins_dir = find_plugins_dir(plugins_dir, self.binary)
        self.extra_args = tuple(extra_args)
        self.start_timeout_s = float(start_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self._lock = threading.RLock()
        self._final = False
        self._proc: subprocess.Popen[str] | None = None
        self._address: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.restarts = 0
        _install_exit_handlers()
        self._start()

    @property
    def command(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--exit-with-parent",
            "--plugins-dir",
            str(self.plugins_dir),
            *self.extra_args,
        ]

    @property
    def address(self) -> str:
        with self._lock:
            if self._address is None or not self.alive():
                raise SidecarError(
                    "the sidecar is not running: call restart() (or create a new ManagedSidecar)"
                )
            return self._address

    @property
    def pid(self) -> int | None:
        p = self._proc
        return None if p is None else p.pid

    def alive(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    def _start(self) -> None:
        with self._lock:
            self._stderr_tail.clear()
            cmd = self.command
            log.info("starting sidecar: %s", " ".join(cmd))
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            self._proc = proc
            with _live_lock:
                _live.add(self)
            ready = threading.Event()
            found: list[str] = []
            threading.Thread(
                target=self._read_stdout,
                args=(proc, ready, found),
                daemon=True,
                name=f"swiftmoe-sidecar-{proc.pid}-stdout",
            ).start()
            err_reader = threading.Thread(
                target=self._read_stderr,
                args=(proc,),
                daemon=True,
                name=f"swiftmoe-sidecar-{proc.pid}-stderr",
            )
            err_reader.start()
            got = ready.wait(self.start_timeout_s)
            if not got or not found:
                exited = proc.poll()
                if got and exited is None:  # stdout closed: the process is on its way out
                    try:
                        exited = proc.wait(2.0)
                    except subprocess.TimeoutExpired:
                        pass
                self._stop(proc)
                err_reader.join(2.0)  # the last lines of stderr say why
                tail = "\n".join(self._stderr_tail)
                why = (
                    f"exited with status {exited}"
                    if exited is not None
                    else f"printed no '{READY_PREFIX}ADDRESS' line within {self.start_timeout_s:g}s"
                )
                raise SidecarError(
                    f"sidecar {self.binary} {why}; its stderr ends with:\n{tail or '(nothing)'}\n"
                    "check the binary (`swiftmoe doctor`), or raise start_timeout_s"
                )
            self._address = found[0]
            log.info("sidecar pid %d listening on %s", proc.pid, self._address)

    def _read_stdout(
        self, proc: subprocess.Popen[str], ready: threading.Event, found: list[str]
    ) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # keeps draining after the ready line: the pipe never fills
                line = line.strip()
                if not ready.is_set() and line.startswith(READY_PREFIX):
                    found.append(line[len(READY_PREFIX) :].strip())
                    ready.set()
                elif line:
                    log.debug("sidecar[%d]: %s", proc.pid, line)
        finally:
            ready.set()
            proc.stdout.close()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                line = line.rstrip()
                self._stderr_tail.append(line)
                log.debug("sidecar[%d]: %s", proc.pid, line)
        finally:
            proc.stderr.close()

    def _stop(self, proc: subprocess.Popen[str]) -> None:
        """SIGTERM, wait up to stop_timeout_s, SIGKILL; then kill what is left of its group."""
        if proc.poll() is None:
            try:
                proc.terminate()
                # A stopped (SIGSTOP, hung in a debugger) sidecar acts on SIGTERM only once resumed.
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "sidecar pid %d ignored SIGTERM for %.1fs: killing it",
                    proc.pid,
                    self.stop_timeout_s,
                )
                _killpg(proc.pid)
                proc.kill()
                try:
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.error(
                        "sidecar pid %d survived SIGKILL for %.1fs", proc.pid, self.stop_timeout_s
                    )
        else:
            proc.wait(0)
        _killpg(proc.pid)  # plugins it started and did not stop
        # The reader threads close the pipes at EOF; closing them here would block on a reader.

    def _remove_socket(self) -> None:
        addr = self._address or ""
        if not addr.startswith("unix://"):
            return
        path = Path(addr[len("unix://") :])
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
                log.info("removed stale sidecar socket %s", path)
            d = path.parent
            if d.stat().st_uid == os.getuid() and stat.S_IMODE(d.stat().st_mode) == 0o700:
                # A killed sidecar also leaves its plugins' sockets in d/plugins.
                plugins = d / "plugins"
                if plugins.is_dir() and not plugins.is_symlink():
                    for p in plugins.iterdir():
                        if stat.S_ISSOCK(p.lstat().st_mode):
                            p.unlink()
                    plugins.rmdir()  # only succeeds when empty
                d.rmdir()  # only succeeds when empty
        except OSError:
            pass

    def restart(self) -> None:
        """Stops the process (if it still runs) and starts a new one; ``address`` changes.

        Raises SidecarError after ``shutdown()``, so a late restart cannot outlive its owner."""
        with self._lock:
            if self._final:
                raise SidecarError("the sidecar was shut down; it is not restarted")
            self.close()
            self.restarts += 1
            self._start()

    def shutdown(self) -> None:
        """``close()`` for good: a later ``restart()`` refuses to start a new process."""
        with self._lock:
            self._final = True
            self.close()

    def close(self) -> None:
        """Stops the sidecar and its plugins and removes its socket. Safe to call twice."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                self._stop(proc)
                log.info("sidecar pid %d stopped (status %s)", proc.pid, proc.returncode)
                self._remove_socket()
            self._proc, self._address = None, None
            with _live_lock:
                _live.discard(self)

    def __enter__(self) -> ManagedSidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------- plan service

# The deadline of RegisterJob: the sidecar may wait up to 5 s for hardware discovery when the job
# leaves slots or bandwidths to it.
_REGISTER_TIMEOUT_S = 10.0

# Codes after which the sidecar is presumed dead or hung: restart it (when owned), re-register.
_RESTART_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


class PlanService(WorkerPlanSource):
    """Rank 0's plan source backed by the sidecar (``submit``/``poll`` of ``PlanSource``).

    ``start()`` starts the bundled sidecar (unless ``address`` attaches to a running one) and
    registers the job; it raises SidecarError when that fails. Afterwards nothing raises:
    ``submit`` queues the loads for one worker thread (a newer submit replaces a pending one),
    ``poll(deadline_s)`` returns the newest plan's per-layer slots that arrived by the deadline,
    else ``None``. A failed report is logged; after a dead or hung sidecar the worker restarts the
    sidecar it owns (an attached one is only re-registered) and registers the same job_id again,
    with a growing back-off between failed attempts. ``events`` counts what happened.
    """

    _log_prefix = "plan service"

    def __init__(
        self,
        spec: JobSpec,
        *,
        address: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        plugins_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        job_id: str = "",
        rpc_timeout_s: float = 2.0,
        start_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not isinstance(spec, JobSpec):
            raise ValueError(f"PlanService spec is {type(spec).__name__}: pass a JobSpec")
        for name, v in (("rpc_timeout_s", rpc_timeout_s), ("max_backoff_s", max_backoff_s)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"PlanService {name} is {v!r}: pass seconds > 0")
        self.spec = spec
        self.job_id = job_id
        self.rpc_timeout_s = float(rpc_timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._address = address
        self._sidecar_args = dict(
            binary=binary,
            plugins_dir=plugins_dir,
            extra_args=tuple(extra_args),
            start_timeout_s=start_timeout_s,
        )
        super().__init__()
        self.sidecar: ManagedSidecar | None = None
        self.client: SidecarClient | None = None
        self.registration: Registration | None = None
        self.latest: SidecarPlan | None = None
        self._healthy = False
        self._need_restart = False
        self._backoff_s = 0.0
        self._next_attempt = 0.0

    @property
    def owns_sidecar(self) -> bool:
        return self._address is None

    def start(self) -> Registration:
        """Starts (or attaches to) the sidecar and registers the job; SidecarError on failure."""
        if self._thread is not None:
            raise SidecarError("PlanService.start() was already called: create one service per job")
        if self.owns_sidecar:
            self.sidecar = ManagedSidecar(**self._sidecar_args)
            address = self.sidecar.address
        else:
            address = self._address
        self.client = SidecarClient(address, self.rpc_timeout_s)
        try:
            reg = self.client.register_job(
                self.spec, self.job_id, max(self.rpc_timeout_s, _REGISTER_TIMEOUT_S)
            )
        except SidecarError:
            self.close()
            raise
        topo = reg.topology
        if not topo.get("slots_per_rank"):
            if self.spec.slots_per_rank == 0:
                self.close()
                raise SidecarError(
                    f"the sidecar at {address} registered job {reg.job_id} without choosing "
                    "slots_per_rank: it predates automatic slots; update it, or set slots_per_rank"
                )
        else:
            # Re-registrations keep what was chosen now (the engine's buffers are sized by the
            # slots) and need no discovery.
            self.spec = replace(
                self.spec,
                slots_per_rank=topo["slots_per_rank"],
                intra_node_bandwidth=topo["intra_node_bandwidth"],
                inter_node_bandwidth=topo["inter_node_bandwidth"],
            )
        self.registration, self.job_id, self._healthy = reg, reg.job_id, True
        self.latest = reg.initial_plan
        log.info(
            "registered job %s with strategy %s at %s", reg.job_id, self.spec.strategy, address
        )
        for line in reg.defaults:
            log.info("job %s: %s (from the sidecar's hardware discovery)", reg.job_id, line)
        self._start_worker("swiftmoe-plan-service")
        return reg

    def close(self) -> None:
        """Stops the worker, the client and the owned sidecar."""
        self._stop_worker(timeout_s=self.rpc_timeout_s + 1.0)
        if self.client is not None:
            self.client.close()
        if self.sidecar is not None:
            self.sidecar.shutdown()

    def __enter__(self) -> PlanService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker

    def _plan(self, iteration: int, loads_LE: list[list[int]]) -> list[list[int]] | None:
        if not (self._healthy or self._recover()):
            return None
        plan = self._report(iteration, loads_LE)
        if plan is None:
            return None
        with self._cv:
            self.latest = plan
        return plan.slots_LK

    def _report(self, iteration: int, loads: list[list[int]]) -> SidecarPlan | None:
        assert self.client is not None
        try:
            return self.client.report_loads(self.job_id, iteration, loads, self.rpc_timeout_s)
        except ValueError as e:
            self._note("bad_input", f"iteration {iteration}: {e}")
            return None
        except SidecarError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                self._note(
                    "job_lost", f"iteration {iteration}: {e}; registering job {self.job_id} again"
                )
            elif e.code in _RESTART_CODES:
                what = "restarting it" if self.owns_sidecar else "registering again"
                self._note(
                    "sidecar_failed", f"iteration {iteration}: {e}; keeping the placement, {what}"
                )
            else:
                self._note("rejected", f"iteration {iteration}: {e}")
                return None
            self._healthy = False
            self._need_restart = e.code != grpc.StatusCode.NOT_FOUND
            self._next_attempt = 0.0
            self._recover()
            return None

    def _recover(self) -> bool:
        """Restarts the owned sidecar and re-registers the job; False (with back-off) on failure."""
        now = time.monotonic()
        if now < self._next_attempt or self._closed:
            return False
        assert self.client is not None
        try:
            sc = self.sidecar
            if self.owns_sidecar and sc is not None and (self._need_restart or not sc.alive()):
                sc.restart()
                self.client.close()
                self.client = SidecarClient(sc.address, self.rpc_timeout_s)
                self._need_restart = False
                with self._cv:
                    self.events["restarts"] += 1
            with self._cv:
                in_force = self._in_force
            # The engine adopts the plans poll() hands it, so the newest of them is the
            # placement in force (the engine keeps its current one only if it rejects a plan).
            spec = self.spec if in_force is None else replace(self.spec, current_slots=in_force)
            reg = self.client.register_job(spec, self.job_id, self.rpc_timeout_s)
        except (SidecarError, OSError) as e:
            self._backoff_s = min(self.max_backoff_s, max(0.5, 2 * self._backoff_s))
            self._next_attempt = time.monotonic() + self._backoff_s
            self._note(
                "recover_failed",
                f"recovering the sidecar failed: {e}; next try in {self._backoff_s:.1f}s",
            )
            return False
        self.registration, self._healthy, self._backoff_s = reg, True, 0.0
        with self._cv:
            self.events["reregistered"] += 1
        log.warning("plan service: job %s registered again at %s", reg.job_id, self.client.address)
        return True
