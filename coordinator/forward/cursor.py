"""A forwarder's durable cursor: ``<run dir>/forward-<backend>-<destination hash>.json``, its lock, its format.

The cursor is the journal position up to which the backend has everything (two positions: the
last chunk and the last text-series entry), saved only after the backend accepted a batch, with
what the forwarder needs to resume exactly there: the backend's own resume state, the fields
already sent, the downsampling buckets and the lifetime counters.
It is written to a temporary file, fsynced, then ``os.replace``-d (and the directory fsynced),
so a crash leaves the old cursor or the new one, never a torn file. A lock file next to it keeps
a second forwarder to the same backend and destination away.

The cursor is keyed by the backend *and* its destination (the adapter's ``destination()``: the
MLflow tracking URI and experiment, the TensorBoard logdir, ...), so a run synced to a new
destination starts there from the beginning. Before resuming, :func:`verified` asks the adapter
(``holds(state)``, where it is cheap) whether the destination still holds what the cursor
claims; when it does not (a deleted logdir, another server), the forwarder starts over.

A file written before text series existed has no ``texts`` position: it loads as 0 (every text
is sent), as do ``texts_pending`` and ``run_tags``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coordinator.errors import SinkError

__all__ = ["CURSOR_VERSION", "CursorFile", "CursorState", "cursor_path", "destination_of", "verified"]

_log = logging.getLogger(__name__)

CURSOR_VERSION = 1
"""Format of the cursor file; another version is refused as unreadable."""


def _stem(backend: str, destination: str) -> str:
    if not destination:
        return f"forward-{backend}"
    return f"forward-{backend}-{hashlib.sha256(destination.encode()).hexdigest()[:12]}"


def cursor_path(run_dir: Path, backend: str, destination: str = "") -> Path:
    """Where the forwarder to ``backend`` at ``destination`` keeps its cursor.

    ``<run dir>/forward-<backend>-<12 hex digits of the destination's SHA-256>.json``; a backend
    that names no destination uses ``forward-<backend>.json``.
    """
    return run_dir / f"{_stem(backend, destination)}.json"


def destination_of(backend: object) -> str:
    """The backend's destination identity (its ``destination()``), or "" when it names none."""
    fn = getattr(backend, "destination", None)
    return str(fn()) if callable(fn) else ""


def verified(state: CursorState, backend: object, name: str) -> CursorState:
    """``state``, or a fresh one (counters kept) when the destination does not hold what it claims.

    Asks the backend's ``holds(backend_state)`` (if it has one) for a cursor that claims anything.
    Errors reaching the destination propagate (the caller retries them).
    """
    holds = getattr(backend, "holds", None)
    if not callable(holds) or not (state.cursor or state.texts or state.finished or state.fields_sent):
        return state
    if holds(state.backend_state):
        return state
    _log.warning(
        "%s: the destination does not hold what the cursor claims (journal position %d): sending from the start",
        name,
        state.cursor,
    )
    return CursorState(counters=dict(state.counters))


@dataclass(slots=True)
class CursorState:
    """What the cursor file holds (besides its version and bookkeeping)."""

    cursor: int = 0
    """Journal position (chunk id) up to which the backend has everything."""
    texts: int = 0
    """Journal position of text-series entries (text id) up to which the backend has everything."""
    texts_pending: int = 0
    """When above ``texts``: the last text id of a batch being sent to a backend that names files by
    a batch's range (MLflow); a resumed forwarder sends exactly that range again, so the same files."""
    run_tags: list[str] = field(default_factory=list)
    """The tags (``sys/tags``) the backend has, to send a change as adds and removes."""
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

    def __init__(self, run_dir: Path, backend: str, destination: str = "") -> None:
        """Name the files (nothing is opened yet); ``destination``: see :func:`cursor_path`."""
        self.run_dir = run_dir
        self.backend = backend
        self.destination = destination
        self.path = cursor_path(run_dir, backend, destination)
        self._lock: IO[bytes] | None = None

    def acquire(self) -> CursorState:
        """Take the lock and read the saved state (a fresh one when there is no file yet).

        Raises:
            SinkError: another forwarder holds the lock, or the file is unreadable.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_suffix(".lock"), "a+b")  # held until release()
        os.fchmod(lock.fileno(), 0o600)  # the run's files are its owner's only
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SinkError(
                f"{self.backend}: another forwarder is already sending run {self.run_dir.name} to this destination"
            ) from None
        self._lock = lock
        return self._read() if self.path.exists() else CursorState()

    def _read(self) -> CursorState:
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") != CURSOR_VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            if raw.get("destination", self.destination) != self.destination:
                return CursorState()  # another destination (a hash collision): start there afresh
            return CursorState(
                cursor=int(raw["cursor"]),
                texts=int(raw.get("texts", 0)),
                texts_pending=int(raw.get("texts_pending", 0)),
                run_tags=[str(t) for t in raw.get("run_tags") or ()],
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
            "destination": self.destination,
            "cursor": s.cursor,
            "texts": s.texts,
            "texts_pending": s.texts_pending,
            "run_tags": s.run_tags,
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
            os.fchmod(f.fileno(), 0o600)
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
