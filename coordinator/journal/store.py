"""The embedded store: one SQLite database (WAL) per run, written only by the aggregator.

Layout: ``<root>/runs/<run_id>/run.db``. Metric points are stored as columnar chunks, one row
per series and write (the aggregator stages a commit round's rank points as one row of the
staging log, :mod:`~coordinator.journal.staging`, and writes them as one chunk per key, rank and
incarnation every ~2 s; a writer's open writes what a crash left staged). ``rank = -1`` holds the
reduced main series, with the number of contributing ranks of each point. This module owns the
writes; the queries are :class:`~coordinator.journal.reader.JournalReader`'s, the tables
:mod:`~coordinator.journal.schema`'s. The records and path helpers are re-exported here, the
journal's one import for its users.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from coordinator.core.columns import to_le as _le
from coordinator.errors import SinkError
from coordinator.journal.blockrows import block_params, shared_summaries
from coordinator.journal.checkpoint import TARGET_FRAMES, Checkpointer
from coordinator.journal.paths import list_runs, resolve_root, run_dir
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK, ChunkRow, RunInfo, StagedBlock, StoredChunk, TxnData
from coordinator.journal.schema import connect
from coordinator.journal.staging import clear as _clear_staged
from coordinator.journal.staging import load as _load_staged
from coordinator.journal.staging import stage as _stage
from coordinator.journal.stepblobs import encode_steps
from coordinator.journal.summary import SUMMARY_COLUMNS, summarize
from coordinator.journal.texts import TEXT_POLICY, StoredText, TextRow, insert_texts

__all__ = [
    "MAIN_RANK",
    "TEXT_POLICY",
    "ChunkRow",
    "LocalStore",
    "RunInfo",
    "StoredChunk",
    "StoredText",
    "TextRow",
    "TxnData",
    "list_runs",
    "resolve_root",
    "run_dir",
]

_log = logging.getLogger(__name__)

_LITTLE = sys.byteorder == "little"

_INSERT_CHUNK = (
    f"INSERT INTO chunks (key_id, rank, incarnation, seq, n, ts, steps, vals, counts, {', '.join(SUMMARY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (9 + len(SUMMARY_COLUMNS)))})"
)

_NONE: list[ChunkRow | StagedBlock] = []
"""No rank rows (a default never mutated)."""


def _same(a: array[Any]) -> array[Any]:
    return a


_WRITER_CACHE_KIB = 8 * 1024
"""The writer's page cache. A write appends to each (key, rank)'s end of both chunk indexes; with
100 keys and a few ranks that is ~1,600 hot index pages (SQLite's default 2 MiB holds 512). With
rank points staged (one chunk per series every second or two, not one per commit) 8 MiB measured
the same CPU per point as 32 MiB, and the aggregator's RSS stops growing once the cache is full:
after ~20 s at 20,000 points/s instead of ~50 s (+28 MiB) with 32 MiB
(benchmarks/results/profiles/cpu-per-point-round4.md)."""
_CHECKPOINT_PAGES = TARGET_FRAMES
"""WAL pages (32 MiB at 4 KiB) before an automatic checkpoint (SQLite's default: 1000). A commit
rewrites each hot index page to the WAL; a checkpoint copies each page once however often it was
rewritten, so rarer checkpoints copy (and sync) far fewer pages per point."""


class LocalStore(JournalReader):
    """One run's SQLite database: the reads of :class:`JournalReader` plus the aggregator's writes.

    Thread-safety: a store object belongs to one thread. The aggregator opens it for writing;
    readers (CLI, read-only runs) open it with ``readonly=True`` and never block the writer.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, durable: bool = False):
        """Open (and with ``readonly=False`` create) the database at ``path``.

        Args:
            path: the ``run.db`` file.
            readonly: open without write access; the file must exist.
            durable: ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``
                (survives process crashes).
        Raises:
            SinkError: the file cannot be opened or has another schema version.
        """
        path = Path(path)
        super().__init__(connect(path, readonly=readonly, durable=durable), path)
        self.readonly = readonly
        self._durable = durable
        self._checkpointer: Checkpointer | None = None
        self._failures_taken = 0
        if not readonly:
            self._db.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
            self._db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        self._key_ids: dict[str, int] = {k: i for i, k in self._db.execute("SELECT id, key FROM keys")}
        self._block_ids: dict[tuple[str, ...], list[int]] = {}
        """Key ids of staged blocks' key tuples (see :func:`~coordinator.journal.staging.encode`)."""
        try:
            self.unstaged_points = 0 if readonly else self._materialize_staged()
        except BaseException:
            self._db.close()
            raise
        """Points a crashed writer left in the staging log, written as chunks by this open."""

    def start_checkpoints(self) -> None:
        """Run the WAL's checkpoints on a thread of their own from now on (a writer that commits
        often: the aggregator's loop), mostly before a commit crosses SQLite's threshold; SQLite's
        own stays, at the same threshold, the bound for a burst the thread has not caught up with
        (:mod:`~coordinator.journal.checkpoint`). :meth:`close` stops the thread."""
        if not self.readonly and self._checkpointer is None:
            self._checkpointer = Checkpointer(self.path, durable=self._durable)

    def take_checkpoint_failures(self) -> int:
        """WAL checkpoints that failed on the checkpoint thread since the last call (for the run's counters)."""
        ck = self._checkpointer
        if ck is None:
            return 0
        failed = ck.failures - self._failures_taken
        self._failures_taken = ck.failures
        return failed

    def close(self) -> None:
        """Stop the checkpoint thread, then close the connection (idempotent)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()

    def create_run(self, run_id: str, project: str, name: str, world_size: int, created: float) -> None:
        """Insert the run row if it does not exist yet (a restarted aggregator keeps it)."""
        with self._txn():
            self._db.execute(
                "INSERT OR IGNORE INTO run (id, project, name, created, state, world_size) "
                "VALUES (?, ?, ?, ?, 'running', ?)",
                (run_id, project, name, created, world_size),
            )
            self._db.execute("UPDATE run SET state='running', ended=NULL WHERE id=?", (run_id,))

    def finish_run(self, state: str, report: dict[str, Any], ended: float | None = None) -> None:
        """Record the final state and report."""
        with self._txn():
            self._db.execute(
                "UPDATE run SET state=?, ended=?, report=?",
                (state, ended if ended is not None else time.time(), json.dumps(report, sort_keys=True)),
            )

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value (its own transaction)."""
        with self._txn():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def commit(self, data: TxnData) -> None:
        """Write ``data`` in one transaction: all of it or nothing.

        Raises:
            SinkError: the write failed (disk full, I/O error); nothing of ``data`` is stored.
        """
        if data.empty():
            return
        new_ids: dict[str, int] = {}
        try:
            with self._txn():
                self._insert_keys(data.key_policies, new_ids)
                self._insert_rows(data, new_ids)
        except sqlite3.Error as e:
            raise SinkError(f"store {self.path}: commit failed: {e}") from e
        self._key_ids.update(new_ids)
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _materialize_staged(self) -> int:
        """Write what the staging log holds as chunk rows and empty it, in one transaction; returns the points.

        A writer does this when it opens the run, before anything (``Reducer.restore``, a reader)
        reads rank chunks: staged rows outlive their writer only if it crashed.

        Raises:
            SinkError: a staged row is corrupt or names an unknown key, or the write failed.
        """
        try:
            pieces = _load_staged(self._db)
            if not pieces:
                return 0
            names = {i: k for k, i in self._key_ids.items()}
            rows = [ChunkRow(names[kid], r, inc, seq, ts, st, vs) for kid, r, inc, seq, ts, st, vs in pieces]
            with self._txn():
                self._insert_chunks(rows, self._key_ids)
                _clear_staged(self._db)
        except (sqlite3.Error, KeyError, SinkError) as e:
            raise SinkError(f"store {self.path}: materializing staged rank points failed: {e}") from e
        n = sum(len(r.steps) for r in rows)
        _log.info("store %s: %d staged rank points written as %d chunks", self.path, n, len(rows))
        return n

    def _insert_keys(self, policies: dict[str, str], new_ids: dict[str, int]) -> None:
        for key, policy in policies.items():
            if key not in self._key_ids:
                cur = self._db.execute("INSERT INTO keys (key, policy) VALUES (?, ?)", (key, policy))
                assert cur.lastrowid is not None
                new_ids[key] = cur.lastrowid

    def _insert_rows(self, data: TxnData, new_ids: dict[str, int]) -> None:
        db = self._db
        ids = self._key_ids
        if data.unstage:
            _clear_staged(db)
        if data.chunks or data.rank_rows or data.staged:
            key_id = {**ids, **new_ids} if new_ids else ids
            if data.rank_rows or data.chunks:
                self._insert_chunks(data.chunks, key_id, data.rank_rows)
            if data.staged:
                # Ids new in this transaction are not remembered: a rollback would take them back.
                _stage(db, data.staged, key_id.__getitem__, None if new_ids else self._block_ids)
        if data.texts:
            insert_texts(db, data.texts, lambda k: ids.get(k) or new_ids[k])
        if data.fields:
            db.executemany(
                "INSERT OR REPLACE INTO fields (path, type, value, rank, ts) VALUES (?, ?, ?, ?, ?)",
                [(p, t, msgpack.packb(v), r, ts) for p, (t, v), r, ts in data.fields],
            )
        if data.conflicts:
            db.executemany(
                "INSERT INTO conflicts (path, rank, type, value, kept_rank, ts) VALUES (?, ?, ?, ?, ?, ?)",
                [(p, r, t, msgpack.packb(v), k, ts) for p, r, (t, v), k, ts in data.conflicts],
            )
        if data.senders:
            db.executemany(
                "INSERT OR REPLACE INTO senders (rank, incarnation, last_seq, points, batches, "
                "first_seen, last_seen, state, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r, i, *rest) for (r, i), rest in data.senders.items()],
            )
        if data.events:
            db.executemany("INSERT INTO events (ts, kind, rank, detail) VALUES (?, ?, ?, ?)", data.events)
        if data.meta:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(data.meta.items()))

    def _insert_chunks(
        self,
        chunks: Sequence[ChunkRow | StagedBlock],
        key_id: dict[str, int],
        first: Sequence[ChunkRow | StagedBlock] = _NONE,
    ) -> None:
        """Insert ``first`` (rank chunks and blocks), then ``chunks``, in that order; a block as one row per key.

        The rows' parameters are made as SQLite takes them, not listed first: listed, a rank hold's
        write (~128k points every 2 s at 64 paced ranks) held every row's blobs at once beside the
        rows themselves, part of the RSS spike each write made in the soak.
        """

        known = shared_summaries(b for rows in (first, chunks) for b in rows if isinstance(b, StagedBlock))

        def params() -> Iterator[tuple[Any, ...]]:
            for rows in (first, chunks):
                for item in rows:
                    if isinstance(item, StagedBlock):
                        yield from block_params(item, key_id.__getitem__, known.get(id(item)))
                    else:
                        yield self._chunk_params(item, key_id)

        self._db.executemany(_INSERT_CHUNK, params())

    @staticmethod
    def _chunk_params(c: ChunkRow, key_id: dict[str, int]) -> tuple[Any, ...]:
        # On a little-endian machine an array is its own blob (SQLite binds any buffer): no copy.
        le = _same if _LITTLE else _le
        s = summarize(c.steps, c.values)
        return (
            key_id[c.key],
            c.rank,
            c.incarnation,
            c.seq,
            len(c.steps),
            c.ts,
            encode_steps(c.steps, s),
            le(c.values),
            None if c.counts is None else le(c.counts),
            *s,
        )

    def _txn(self) -> _Txn:
        return _Txn(self._db)


class _Txn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        if et is None:
            self._db.execute("COMMIT")
        else:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as e:  # the original exception is what the caller needs
                _log.warning("rollback failed after an error: %s", e)
