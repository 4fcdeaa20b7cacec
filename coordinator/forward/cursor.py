"""A forwarder's durable cursor: ``<run dir>/forward-<backend>.json``, its lock, and its format version.

The cursor is the journal position up to which the backend has everything, saved only after the
backend accepted a batch, with what the forwarder needs to resume exactly there: the backend's
own resume state, the fields already sent, the downsampling buckets and the lifetime counters.
It is written to a temporary file, fsynced, then ``os.replace``-d (and the directory fsynced),
so a crash leaves the old cursor or the new one, never a torn file. A lock file next to it keeps
a second forwarder to the same backend away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coordinator.errors import SinkError

__all__ = ["CURSOR_VERSION", "CursorFile", "CursorState", "cursor_path"]

CURSOR_VERSION = 1
"""Format of the cursor file; another version is refused as unreadable."""


def cursor_path(run_dir: Path, backend: str) -> Path:
    """Where the forwarder to ``backend`` keeps its cursor: ``<run dir>/forward-<backend>.json``."""
    return run_dir / f"forward-{backend}.json"


@dataclass(slots=True)
class CursorState:
    """What the cursor file holds (besides its version and bookkeeping)."""

    cursor: int = 0
    """Journal position (chunk id) up to which the backend has everything."""
    backend_state: dict[str, Any] = field(default_factory=dict)
    fields_sent: dict[str, str] = field(default_factory=dict)
    thin: dict[str, list[float]] = field(default_factory=dict)
    """Series name -> downsampling bucket ``[tokens, last time]``."""
    counters: dict[str, int] = field(default_factory=dict)
    """Counters over every forwarder of this run and backend so far."""
    finished: str | None = None
    """The state the backend's run was finished with, once it was."""


class CursorFile:
    """The cursor file of one (run, backend), held under an exclusive lock from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: Path, backend: str) -> None:
        """Name the files (nothing is opened yet)."""
        self.run_dir = run_dir
        self.backend = backend
        self.path = cursor_path(run_dir, backend)
        self._lock: IO[bytes] | None = None

    def acquire(self) -> CursorState:
        """Take the lock and read the saved state (a fresh one when there is no file yet).

        Raises:
            SinkError: another forwarder holds the lock, or the file is unreadable.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.run_dir / f"forward-{self.backend}.lock", "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SinkError(
                f"{self.backend}: another forwarder is already sending run {self.run_dir.name} to this backend"
            ) from None
        self._lock = lock
        return self._read() if self.path.exists() else CursorState()

    def _read(self) -> CursorState:
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") != CURSOR_VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            return CursorState(
                cursor=int(raw["cursor"]),
                backend_state=dict(raw.get("backend_state") or {}),
                fields_sent=dict(raw.get("fields_sent") or {}),
                thin={k: [float(a), float(b)] for k, (a, b) in (raw.get("thin") or {}).items()},
                counters={k: int(v) for k, v in (raw.get("counters") or {}).items()},
                finished=raw.get("finished"),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SinkError(f"{self.backend}: cursor file {self.path} is unreadable: {e}") from e

    def save(self, s: CursorState, settings: dict[str, Any]) -> None:
        """Replace the file atomically and durably with ``s`` (and the forwarder's ``settings``, for the record).

        Raises:
            OSError: the file could not be written; the previous one is intact.
        """
        data = {
            "version": CURSOR_VERSION,
            "backend": self.backend,
            "cursor": s.cursor,
            "backend_state": s.backend_state,
            "fields_sent": s.fields_sent,
            "thin": s.thin,
            "counters": s.counters,
            "finished": s.finished,
            "settings": settings,
            "updated": time.time(),
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.run_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
