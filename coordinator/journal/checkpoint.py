"""The writer's WAL checkpoints, run on a thread of their own instead of inside a commit.

A commit appends pages to the write-ahead log; a checkpoint copies them into the database file
and syncs both files. SQLite runs it inside the commit that crosses the automatic threshold, so
the aggregator's loop stood still for the copy and the two syncs: at 4 ranks logging flat out,
durable throughput rose by 10-20% once they ran elsewhere (docs/performance.md, round 15).
:class:`Checkpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection, which never
waits for the writer or a reader, at an interval it adapts to the log's growth (the frames a
checkpoint found): about :data:`TARGET_FRAMES` per checkpoint, at most every
:data:`MIN_INTERVAL_S`, at least every :data:`MAX_INTERVAL_S` while the writer commits, never
while it does not. The writer keeps SQLite's own checkpoint as a bound, at the same threshold,
for a burst the interval has not caught up with: at four times it (tried first) a writer that
the thread could not keep up with (1024 ranks at 2M points/s) stopped for one 128 MiB
checkpoint inside a commit, and its acks' p99 doubled (docs/performance.md, round 16).

A failed checkpoint loses nothing (the log keeps every page); it is logged and counted
(:attr:`Checkpointer.failures`), and the next one retries.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["MAX_INTERVAL_S", "MIN_INTERVAL_S", "TARGET_FRAMES", "Checkpointer"]

_log = logging.getLogger("coordinator.journal")

TARGET_FRAMES = 8192
"""Log frames (pages: 32 MiB at 4 KiB) a checkpoint aims to find, and the writer's own threshold,
with the thread or without: fewer checkpoints copy each rewritten index page fewer times."""

MIN_INTERVAL_S = 0.25
MAX_INTERVAL_S = 30.0
"""At most this long between a commit and the checkpoint that copies it (a paced run's log
reaches :data:`TARGET_FRAMES` far later)."""


class Checkpointer:
    """A thread that checkpoints one database's WAL while its writer commits (see the module doc)."""

    def __init__(self, path: Path, *, durable: bool = False) -> None:
        """Start the thread; it opens its own connection to ``path`` (a database in WAL mode)."""
        self._path = path
        self._durable = durable
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.interval = 1.0
        """Seconds between checkpoints while commits come (adapted to the log's growth)."""
        self.checkpoints = 0
        self.failures = 0
        self.last: tuple[int, int] | None = None
        """The last checkpoint's frames in the log and frames it copied (all of them unless a reader held some)."""
        self._thread = threading.Thread(target=self._main, name="coordinator-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """The writer committed: a checkpoint is due within :attr:`interval` (cheap: sets a flag)."""
        if not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (a checkpoint under way finishes first) and close its connection."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning("store %s: the checkpoint thread did not stop within %.0f s", self._path, timeout)

    def _main(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as e:
            self.failures += 1
            _log.warning("store %s: no checkpoint thread (SQLite checkpoints in the commits): %s", self._path, e)
            return
        try:
            while True:
                self._wake.wait()  # idle until a commit: no wake-ups while the writer is quiet
                started = time.monotonic()
                if self._stopping.wait(self.interval):  # commits accumulate; close() ends it at once
                    return
                self._wake.clear()  # a commit from here on wakes the next round
                self._checkpoint(db, time.monotonic() - started)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection, waited: float) -> None:
        try:
            db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")  # how it syncs the files
            row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                _log.warning(
                    "store %s: WAL checkpoint failed (%d so far; the log keeps every page, the next one retries): %s",
                    self._path,
                    self.failures,
                    e,
                )
            return
        self.checkpoints += 1
        frames = max(0, int(row[1])) if row is not None else 0  # -1: the database is not in WAL mode
        self.last = (frames, max(0, int(row[2])) if row is not None else 0)
        # The log restarts after a complete checkpoint, so the frames found are about those written
        # since the last one: aim the next interval at TARGET_FRAMES.
        rate = frames / max(waited, 1e-3)
        want = TARGET_FRAMES / rate if rate > 0 else MAX_INTERVAL_S
        self.interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, want))
