"""The sidecar process this Python process owns: start it, wait until it listens, restart it,
stop it and every process it started.

:class:`ManagedSidecar` runs ``swiftmoe-sidecar serve --exit-with-parent`` and waits for its
``listening on ADDRESS`` line. ``close()`` (also run at exit and on SIGTERM) stops it and every
process it started: SIGTERM, a bounded wait, then SIGKILL to its whole process group.
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
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swiftmoe.planning.binaries import find_plugins_dir, find_sidecar_binary
from swiftmoe.planning.client import SidecarError

__all__ = ["ManagedSidecar", "READY_PREFIX"]

log = logging.getLogger("swiftmoe.sidecar")

READY_PREFIX = "listening on "

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
