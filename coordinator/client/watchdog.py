"""The launcher's SIGTERM must end a worker within ``close_timeout_s``, even one blocked in C.

Python runs a signal handler only when the main thread returns to the interpreter; a main
thread waiting inside a collective (NCCL, gloo) or any other C call never does, so the
``SystemExit`` that drains the run would never come and the launcher would have to SIGKILL the
worker, losing its last points. The C-level handler still writes the signal number to the
wake-up fd (``signal.set_wakeup_fd``): a watchdog thread blocked on that pipe sees it at once.
If neither Python's handler ran nor the main thread began ``stop()`` within a short grace, the
watchdog stops the run itself (drain, BYE with ending ``interrupted``) and ends the process with ``os._exit(128 +
signum)``; if the main thread is stopping but still running at ``close_timeout_s``, it ends
the process too. A previous wake-up fd (asyncio's) still gets every byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from coordinator.client.endings import signalled

__all__ = ["SigtermWatchdog"]

_log = logging.getLogger("coordinator")

_QUIT = b"\x00"
"""Written by :meth:`SigtermWatchdog.close` (no signal has number 0)."""


class SigtermWatchdog:
    """Watches for SIGTERM off the main thread (install from the main thread).

    Args:
        close_timeout_s: the whole budget from the signal to the process's end.
        stopping: set when the run's stop() has begun; ``stopped``: when it returned.
        stop: the run's stop (called with the time left) when the main thread does not react.
        mark: records the rank's ending as interrupted (``mark(reason)``) before that stop.
        grace_s: how long the main thread gets to begin stopping by itself.
    """

    def __init__(
        self,
        *,
        close_timeout_s: float,
        stopping: threading.Event,
        stopped: threading.Event,
        stop: Callable[[float], None],
        mark: Callable[[str], None],
        grace_s: float | None = None,
    ) -> None:
        self._timeout = close_timeout_s
        self._grace = min(2.0, close_timeout_s / 4) if grace_s is None else grace_s
        self._stopping = stopping
        self._stopped = stopped
        self._stop = stop
        self._mark = mark
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._prev_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="coordinator-sigterm-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (the run ended normally); restores the previous wake-up fd from the main thread."""
        if self._closed:
            return
        self._closed = True
        restored = False
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._prev_fd)
                restored = True
        with contextlib.suppress(OSError):
            os.write(self._w, _QUIT)
        if threading.current_thread() is not self._thread:  # the watchdog itself may be the one stopping
            self._thread.join(5.0)
        os.close(self._r)
        if restored:
            os.close(self._w)  # else it stays the wake-up fd: writes to a full pipe are harmless

    def after_fork_in_child(self) -> None:
        """In a forked child (a DataLoader worker): its signals must not reach the parent's watchdog
        through the pipe they share (a worker terminated with SIGTERM would end the training).
        A watchdog closed before the fork has nothing to undo: its fd numbers may belong to
        someone else by now."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            old = signal.set_wakeup_fd(self._prev_fd)
            if old != self._w:  # someone else's fd by now: leave it
                signal.set_wakeup_fd(old)
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._r, 64)
            except OSError:
                return
            if not data or _QUIT in data:
                return
            if self._prev_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._prev_fd, data)
            if signal.SIGTERM in data:
                self._on_sigterm()
                return

    def _on_sigterm(self) -> None:
        t0 = time.monotonic()
        while not self._stopping.wait(0.05) and signalled() is None and time.monotonic() - t0 < self._grace:
            pass
        if signalled() is not None and not self._stopping.is_set():
            return  # Python's handler ran: the main thread is in Python code and leaves by SystemExit
        if not self._stopping.is_set():
            _log.warning(
                "SIGTERM: the main thread is blocked (in a C call such as a collective); stopping the run "
                "from the watchdog within %.0f s",
                self._timeout,
            )
            self._mark(f"signal {signal.SIGTERM} while the main thread was blocked")
            try:
                self._stop(max(0.1, self._timeout - (time.monotonic() - t0)))
            except Exception as e:  # the process ends next either way; say why it was not clean
                _log.error("SIGTERM: stopping the run failed: %s", e)
            _exit()
        if not self._stopped.wait(max(0.0, self._timeout - (time.monotonic() - t0))):
            _log.error("SIGTERM: the run did not stop within close_timeout_s=%.0f s; exiting", self._timeout)
            _exit()


def _exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signal.SIGTERM)
