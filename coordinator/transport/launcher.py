"""Rank 0's aggregator process: starting it, stopping it, and restarting it when it dies.

The aggregator runs as ``python -m coordinator.aggregator`` in its own session, so a signal
the launcher sends to the workers cannot cut the run's end short. It says ``READY <endpoint>``
on stdout once its socket is bound.
"""

from __future__ import annotations

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

from coordinator.errors import CoordinatorError
from coordinator.transport.discovery import private_dir

__all__ = ["AggregatorProcess", "AggregatorSupervisor"]

_log = logging.getLogger(__name__)


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
        self.sock_dir = Path(tempfile.mkdtemp(prefix="run-", dir=private_dir()))
        self.endpoint = f"tcp://{tcp_host}:*" if tcp_host else f"ipc://{self.sock_dir}/agg.sock"
        self.config = dict(config, endpoint=self.endpoint, parent_pid=os.getpid())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float) -> None:
        """Start the process and wait until its socket is bound.

        Raises:
            CoordinatorError: it exited or did not become ready in time (its stderr says why).
        """
        cmd = [
            sys.executable,
            "-m",
            "coordinator.aggregator",
            "--run",
            self.run_id,
            "--config",
            json.dumps(self.config),
        ]
        stderr = open(self.stderr_path, "ab") if self.stderr_path else None  # noqa: SIM115 - owned by the child
        try:
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
        finally:
            if stderr is not None:
                stderr.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                self.kill()
                raise CoordinatorError(f"the aggregator did not start within {timeout_s} s")
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                code = self.proc.wait(5)
                raise CoordinatorError(
                    f"the aggregator exited with code {code} before it was ready (see its messages above)"
                )
            line += chunk
        if not line.startswith(b"READY "):
            self.kill()
            raise CoordinatorError(f"the aggregator said {line!r:.200} instead of READY")
        self.proc.stdout.close()
        # A wildcard TCP port is now a real one; a restarted aggregator binds the same endpoint.
        self.endpoint = line[len(b"READY ") :].decode().strip()
        self.config["endpoint"] = self.endpoint

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
        self.restarts = 0
        self.exit_code: int | None = None
        self.finished = threading.Event()
        self._stop_evt = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_evt.wait(0.1):
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
            self.finished.set()

    def stop(self, timeout_s: float) -> None:
        """Stop watching (the process itself is left to the caller)."""
        self._stop_evt.set()
        self.join(timeout_s)
