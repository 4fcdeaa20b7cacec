"""The run directory's writer lock: one writer (aggregator or upload) per run at a time.

A restarted job's new aggregator waits here until the old one has finished its run end. The
lock is an exclusive ``flock``, which the kernel drops when the holder dies, so a SIGKILL never
leaves it stuck.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from coordinator.errors import SinkError

__all__ = ["WriterLock"]

_log = logging.getLogger("coordinator.aggregator")


class WriterLock:
    """An exclusive ``flock`` on ``path``, held from construction until :meth:`release`."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        """Take the lock, waiting up to ``timeout_s`` for the previous writer.

        Raises:
            SinkError: another writer still holds it after ``timeout_s``.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._f = open(path, "a+b")  # held for the aggregator's lifetime
        os.fchmod(self._f.fileno(), 0o600)  # the run's files are its owner's only
        deadline = time.monotonic() + timeout_s
        warned = False
        while True:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._f.close()
                    raise SinkError(f"{path.parent}: another writer still holds the run after {timeout_s} s") from None
                if not warned:
                    _log.info("waiting for the previous writer of %s to finish", path.parent)
                    warned = True
                time.sleep(0.05)

    def release(self) -> None:
        """Let the next writer in (idempotent)."""
        if not self._f.closed:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
