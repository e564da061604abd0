"""pytest plugin: no swiftmoe-sidecar or swiftmoe-strategy-* process outlives the tests.

At configure time the session exports ``SWIFTMOE_TEST_SESSION=<uuid>``; every process the tests
start (ranks, sidecars, the plugins a sidecar starts) inherits it. When the session finishes,
:func:`find_orphans` scans ``/proc`` for sidecar and plugin processes that carry this session's
marker in ``/proc/PID/environ`` or descend from the pytest process, waits a grace period
(``$SWIFTMOE_ORPHAN_GRACE_S``, default 10 s) for those on their way out, and fails the run
(exit status 1) listing the survivors, which it then kills by pid so that they do not outlive
the run either.

The pytest configuration in pyproject.toml loads it for every run (``-p orphan_guard``, with
pyshim/tests on ``pythonpath``), so ``pytest pyshim/tests``, ``pytest test`` and both together
run the check once per session. Its scanner is also a helper: test/test_e2e_sidecar.py imports
it to look for the processes of one case.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

SESSION_ENV = "SWIFTMOE_TEST_SESSION"
SIDECAR_NAME = "swiftmoe-sidecar"
PLUGIN_PREFIX = "swiftmoe-strategy-"
GRACE_ENV = "SWIFTMOE_ORPHAN_GRACE_S"  # seconds to wait for exiting processes (default 10)
_INTERPRETERS = ("sh", "bash", "dash", "env", "python", "python3")
_DONE_ATTR = "_swiftmoe_orphan_check_done"


@dataclass(frozen=True)
class ProcInfo:
    """What the scan knows about one live process."""

    pid: int
    ppid: int
    state: str
    start_ticks: int
    name: str
    cmdline: str
    marker: str | None


def is_swiftmoe_name(name: str) -> bool:
    """``swiftmoe-sidecar`` or ``swiftmoe-strategy-NAME`` (a binary's base name)."""
    return name == SIDECAR_NAME or (
        name.startswith(PLUGIN_PREFIX) and len(name) > len(PLUGIN_PREFIX)
    )


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone (exited during the scan), or not ours to read
        return None


def _names(pid: int, argv: list[str]) -> list[str]:
    """Candidate binary names: the executable, argv[0], and argv[1] behind an interpreter."""
    out = []
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        out.append(os.path.basename(exe.removesuffix(" (deleted)")))
    except OSError:
        pass
    if argv:
        first = os.path.basename(argv[0])
        out.append(first)
        if len(argv) > 1 and first.rstrip("0123456789.") in _INTERPRETERS:
            out.append(os.path.basename(argv[1]))
    return out


def proc_info(pid: int, env_key: str = SESSION_ENV) -> ProcInfo | None:
    """The process's stat, name and marker; None when it is gone or unreadable."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    text = stat.decode(errors="replace")
    close = text.rfind(")")
    fields = text[close + 2 :].split()
    if close < 0 or len(fields) < 20:
        return None
    state, ppid, start = fields[0], int(fields[1]), int(fields[19])
    argv = [a.decode(errors="replace") for a in (_read(f"/proc/{pid}/cmdline") or b"").split(b"\0")]
    argv = [a for a in argv if a]
    names = [n for n in _names(pid, argv) if is_swiftmoe_name(n)]
    marker = None
    env = _read(f"/proc/{pid}/environ")
    if env is not None:
        prefix = env_key.encode() + b"="
        for entry in env.split(b"\0"):
            if entry.startswith(prefix):
                marker = entry[len(prefix) :].decode(errors="replace")
                break
    comm = (_read(f"/proc/{pid}/comm") or b"?").decode(errors="replace").strip()
    return ProcInfo(
        pid=pid,
        ppid=ppid,
        state=state,
        start_ticks=start,
        name=names[0] if names else comm,
        cmdline=" ".join(argv) or f"[{comm}]",
        marker=marker,
    )


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def scan(marker: str | None, root_pid: int | None, env_key: str = SESSION_ENV) -> list[ProcInfo]:
    """Live sidecar/plugin processes carrying ``env_key=marker`` or descending from root_pid
    (None: no descendant rule).

    Processes that exit while the scan runs are skipped; zombies (exited, not yet reaped) do not
    count as alive.
    """
    infos = {}
    for pid in _all_pids():
        info = proc_info(pid, env_key)
        if info is not None:
            infos[pid] = info
    children: dict[int, list[int]] = {}
    for info in infos.values():
        children.setdefault(info.ppid, []).append(info.pid)
    below: set[int] = set()
    todo = [] if root_pid is None else [root_pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in below:
                below.add(c)
                todo.append(c)
    found = []
    for info in infos.values():
        if info.pid == root_pid or info.state in ("Z", "X"):
            continue
        if not is_swiftmoe_name(info.name):
            continue
        if (marker is not None and info.marker == marker) or info.pid in below:
            found.append(info)
    return sorted(found, key=lambda i: i.pid)


def find_orphans(
    marker: str | None,
    root_pid: int | None,
    grace_s: float = 10.0,
    env_key: str = SESSION_ENV,
) -> list[ProcInfo]:
    """:func:`scan`, repeated for up to ``grace_s`` while processes are still on their way out."""
    deadline = time.monotonic() + grace_s
    found = scan(marker, root_pid, env_key)
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = scan(marker, root_pid, env_key)
    return found


def kill_same(info: ProcInfo) -> bool:
    """SIGKILL ``info.pid`` if it is still the process scanned (same start time); True if sent."""
    now = proc_info(info.pid)
    if now is None or now.start_ticks != info.start_ticks:
        return False
    try:
        os.kill(info.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def describe(found: list[ProcInfo]) -> str:
    return "\n".join(f"  pid {i.pid} (ppid {i.ppid}, {i.name}): {i.cmdline}" for i in found)


# ---------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(SESSION_ENV):
        os.environ[SESSION_ENV] = uuid.uuid4().hex


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if getattr(config, _DONE_ATTR, False) or hasattr(config, "workerinput"):
        return
    setattr(config, _DONE_ATTR, True)
    try:
        grace_s = float(os.environ.get(GRACE_ENV, "10"))
    except ValueError:
        grace_s = 10.0
    found = find_orphans(os.environ.get(SESSION_ENV), os.getpid(), grace_s)
    if not found:
        return
    msg = (
        f"swiftmoe: {len(found)} sidecar/plugin process(es) started by this test session "
        f"outlived it (orphans); killing them:\n{describe(found)}"
    )
    for info in found:
        kill_same(info)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "orphaned processes", red=True)
        reporter.write_line(msg, red=True)
    else:
        sys.stderr.write(msg + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
