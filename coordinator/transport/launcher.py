"""Rank 0's aggregator process: starting it, stopping it, and restarting it when it dies.

The aggregator runs as ``python -m coordinator.aggregator`` in its own session, so a signal
the launcher sends to the workers cannot cut the run's end short. It says ``READY <endpoint>``
on stdout once its socket is bound.

Its configuration (which holds the trackers' options, credentials included) travels in a 0600
file inside the run's private 0700 socket directory, never on the command line: the aggregator
reads it and deletes it. The directory also names the processes that use it (``owners``), so a
later start removes the directories of runs whose processes were all killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.errors import ConfigError, CoordinatorError
from coordinator.transport.discovery import pid_alive, private_dir, remove_stale_records
from coordinator.transport.wake import WakePipe

__all__ = ["CONFIG_FILE", "OWNERS_FILE", "AggregatorProcess", "AggregatorSupervisor", "remove_stale_dirs"]

_MAX_IPC_PATH_BYTES = 107
"""sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest ipc:// path libzmq can bind."""

_log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
"""The aggregator's configuration inside its socket directory (0600; the aggregator deletes it)."""
OWNERS_FILE = "owners"
"""The pids of rank 0 and of its aggregator processes, one a line, inside the socket directory."""
_LEGACY_STALE_AGE_S = 60.0
_EXIT_POLL_S = 0.1
"""How often the supervisor looks at the aggregator's exit code where it cannot wait on a pidfd."""
_EXIT_WAIT_MS = 5000
"""Longest block on the pidfd before the supervisor looks again anyway (a safety net, not a rhythm)."""
"""A socket directory without an owners file is only removed once it is this old."""


def _write_private(path: Path, text: str, *, append: bool = False) -> None:
    """Write ``text`` to a file only this user can read (created 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _dir_in_use(d: Path, now: float) -> bool:
    try:
        pids = [int(x) for x in (d / OWNERS_FILE).read_text().split()]
    except FileNotFoundError:
        # Written right after the directory is made; an old version never wrote it. A socket
        # nobody listens on anymore refuses connections.
        if now - d.stat().st_mtime < _LEGACY_STALE_AGE_S:
            return True
        return _socket_listening(d / "agg.sock")
    except ValueError:
        return False
    return any(pid_alive(p) for p in pids)


def _socket_listening(path: Path) -> bool:
    import socket

    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # cannot tell: keep it
    return True


def remove_stale_dirs(base: Path) -> int:
    """Remove the socket directories in ``base`` whose rank 0 and aggregators are all gone
    (SIGKILLed together, a node's OOM killer), and stale rendezvous files; returns how many."""
    removed = remove_stale_records(base)
    now = time.time()
    for d in base.glob("run-*"):
        try:
            if not d.is_dir() or _dir_in_use(d, now):
                continue
        except FileNotFoundError:
            continue  # removed by its owner meanwhile
        shutil.rmtree(d, ignore_errors=True)
        _log.debug("removed the stale socket directory %s", d)
        removed += 1
    return removed


class AggregatorProcess:
    """Rank 0's handle on the aggregator sidecar process."""

    def __init__(
        self, run_id: str, config: dict[str, Any], *, tcp_host: str | None = None, stderr_path: str | None = None
    ) -> None:
        """Args:
        tcp_host: bind TCP on this address (a free port) instead of a private ipc socket.
        stderr_path: append the aggregator's log to this file instead of inheriting our stderr.
        """
        self.run_id = run_id
        self.stderr_path = stderr_path
        base = private_dir()
        if not tcp_host:
            # A Unix socket path is limited by sockaddr_un (107 bytes on Linux); the run's
            # directory name adds about 25. Say so before starting, instead of a libzmq error.
            longest = len(f"{base}/run-xxxxxxxx/agg.sock".encode())
            if longest > _MAX_IPC_PATH_BYTES:
                raise ConfigError(
                    f"the runtime directory {base} is too long for a Unix socket path ({longest} > "
                    f"{_MAX_IPC_PATH_BYTES} bytes): set XDG_RUNTIME_DIR (or TMPDIR) to a shorter directory"
                )
        remove_stale_dirs(base)
        self.sock_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        _write_private(self.sock_dir / OWNERS_FILE, f"{os.getpid()}\n")
        self.endpoint = f"tcp://{tcp_host}:*" if tcp_host else f"ipc://{self.sock_dir}/agg.sock"
        self.config = dict(config, endpoint=self.endpoint, parent_pid=os.getpid())
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        """Starts after the first one (a death before READY, or the supervisor's restarts)."""
        self._was_ready = False
        """An aggregator of this job became ready: a later start replaces it (``restart`` in its config)."""

    def start(self, timeout_s: float, *, retries: int = 0) -> None:
        """Start the process and wait until its socket is bound.

        A process that dies before it is ready (a signal, the OOM killer, a crash in its imports)
        is started again, up to ``retries`` times (each counted in :attr:`restarts`), with the
        same run id, store and endpoint.

        Raises:
            CoordinatorError: it exited ``retries + 1`` times or did not become ready in time
                (its stderr says why).
        """
        attempt = 0
        while (code := self._start_once(timeout_s)) is not None:
            if attempt == retries:
                tries = f" ({attempt + 1} starts)" if attempt else ""
                raise CoordinatorError(
                    f"the aggregator exited with code {code} before it was ready{tries} (see its messages above)"
                )
            attempt += 1
            self.restarts += 1
            _log.error(
                "the aggregator of run %s exited with code %s before it was ready; starting it again (%d/%d)",
                self.run_id,
                code,
                attempt,
                retries,
            )

    def _start_once(self, timeout_s: float) -> int | None:
        """One start; the exit code of a process that died before READY, else None (ready)."""
        config_file = self.sock_dir / CONFIG_FILE
        _write_private(config_file, json.dumps({**self.config, "restart": self._was_ready}))
        cmd = [
            sys.executable,
            "-m",
            "coordinator.aggregator",
            "--run",
            self.run_id,
            "--config-file",
            str(config_file),
        ]
        # The child writes to its own copy of the descriptor; ours is closed once it has started.
        with open(self.stderr_path, "ab") if self.stderr_path else contextlib.nullcontext() as stderr:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                # Its own session: a signal the launcher sends to the workers' process group must
                # not cut the run's end short; it watches rank 0 and finishes by itself.
                start_new_session=True,
                close_fds=True,
            )
        _write_private(self.sock_dir / OWNERS_FILE, f"{self.proc.pid}\n", append=True)
        try:
            line = self._read_ready(timeout_s)
        finally:
            config_file.unlink(missing_ok=True)  # read and deleted by the aggregator, unless it died first
        if line is None:
            code = self.proc.wait(5)
            assert self.proc.stdout is not None  # Popen(stdout=PIPE)
            self.proc.stdout.close()
            return code
        # A wildcard TCP port is now a real one; a restarted aggregator binds the same endpoint.
        self.endpoint = line[len(b"READY ") :].decode().strip()
        self.config["endpoint"] = self.endpoint
        self._was_ready = True
        return None

    def _read_ready(self, timeout_s: float) -> bytes | None:
        """The READY line, or None when the process exited first."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                self.kill()
                self.proc.stdout.close()
                raise CoordinatorError(f"the aggregator did not start within {timeout_s} s")
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                return None
            line += chunk
        if not line.startswith(b"READY "):
            self.kill()
            self.proc.stdout.close()
            raise CoordinatorError(f"the aggregator said {line!r:.200} instead of READY")
        self.proc.stdout.close()
        return line

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        """Wait for a normal exit; None if still running after ``timeout_s``."""
        if self.proc is None:
            return 0
        try:
            return self.proc.wait(max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM (it drains and finalises), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.wait(timeout_s)
        if code is None:
            _log.error("aggregator pid %d ignored SIGTERM for %.1f s; killing it", self.proc.pid, timeout_s)
            self.kill()
            code = self.proc.returncode
        return int(code)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        """Remove the socket directory."""
        shutil.rmtree(self.sock_dir, ignore_errors=True)


class AggregatorSupervisor(threading.Thread):
    """Rank 0's watchdog: restarts the aggregator if it dies (bounded), and reports when it finished.

    A clean exit (code 0, or 3 for a run closed as failed) is the end of the run. Anything else
    (SIGKILL, a crash) is restarted with the same endpoint; the new process recovers its state
    from the store, and the ranks resend what was not acknowledged.

    On Linux the thread blocks on the process's pidfd (``os.pidfd_open``), which becomes readable
    when it exits: no periodic wake-ups on rank 0 while training runs (polling every 100 ms cost
    ten cold wake-ups a second), and a crash is seen at once. Elsewhere, or where the kernel
    refuses a pidfd, it polls the exit code every :data:`_EXIT_POLL_S`.
    """

    def __init__(
        self,
        agg: AggregatorProcess,
        *,
        max_restarts: int,
        start_timeout_s: float,
        on_fatal: Callable[[CoordinatorError], None],
    ) -> None:
        super().__init__(name="coordinator-supervisor", daemon=True)
        self.agg = agg
        self.max_restarts = max_restarts
        self.start_timeout_s = start_timeout_s
        self.on_fatal = on_fatal
        self.restarts = agg.restarts
        """Restarts so far, those of its first start included (one budget for the whole run)."""
        self.exit_code: int | None = None
        self.finished = threading.Event()
        self._stop_evt = threading.Event()
        self._wake = WakePipe()
        """Ends a wait on the pidfd when :meth:`stop` is called."""

    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                self._wait_for_exit()
                if self._stop_evt.is_set():
                    return
                code = self.agg.poll()
                if code is None:
                    continue
                if code in (0, 3) or self.restarts >= self.max_restarts:
                    if code not in (0, 3):
                        self.on_fatal(
                            CoordinatorError(
                                f"the aggregator died (exit code {code}) and was already restarted "
                                f"{self.restarts} times; giving up"
                            )
                        )
                    self.exit_code = code
                    return
                self.restarts += 1
                self.agg.restarts += 1
                _log.error(
                    "the aggregator of run %s died (exit code %s); restarting it (%d/%d)",
                    self.agg.run_id,
                    code,
                    self.restarts,
                    self.max_restarts,
                )
                try:
                    self.agg.start(self.start_timeout_s)
                except CoordinatorError as e:
                    _log.error("restarting the aggregator failed: %s", e)
        finally:
            self._wake.close()
            self.finished.set()

    def _wait_for_exit(self) -> None:
        """Block until the aggregator may have exited or :meth:`stop` was called (see the class doc)."""
        proc = self.agg.proc
        fd = None
        if proc is not None and proc.returncode is None and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError as e:  # ESRCH: reaped meanwhile; ENOSYS, EPERM: no pidfds here
                _log.debug("no pidfd for the aggregator (%s); polling its exit code", e)
        if fd is None:
            self._stop_evt.wait(_EXIT_POLL_S)
            return
        try:
            waiter = select.poll()
            waiter.register(fd, select.POLLIN)
            waiter.register(self._wake.fd, select.POLLIN)
            waiter.poll(_EXIT_WAIT_MS)
        finally:
            os.close(fd)

    def stop(self, timeout_s: float) -> None:
        """Stop watching (the process itself is left to the caller)."""
        self._stop_evt.set()
        self._wake.wake()  # a no-op once the thread has ended and closed the pipe
        self.join(timeout_s)
