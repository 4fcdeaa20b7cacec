"""The embedded store: one SQLite database (WAL) per run, written only by the aggregator.

Layout: ``<root>/runs/<run_id>/run.db``. Metric points are stored as columnar chunks, one row
per (key, rank, batch), which keeps ingest at one row per key per batch instead of one per
point. ``rank = -1`` holds the reduced main series, with the number of contributing ranks of
each point.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from coordinator.core import env as _env
from coordinator.core.columns import from_le as _from_le
from coordinator.core.columns import to_le as _le
from coordinator.core.limits import DIR_NAME
from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, SinkError
from coordinator.settings import DEFAULTS

__all__ = [
    "MAIN_RANK",
    "ChunkRow",
    "LocalStore",
    "RunInfo",
    "StoredChunk",
    "TxnData",
    "list_runs",
    "resolve_root",
    "run_dir",
]

MAIN_RANK = -1
"""Rank value of the reduced main series."""

_SCHEMA_VERSION = 1
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, ended REAL, state TEXT NOT NULL,
    world_size INTEGER NOT NULL, report TEXT
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, key_id INTEGER NOT NULL, rank INTEGER NOT NULL,
    incarnation INTEGER NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, ts REAL NOT NULL,
    steps BLOB NOT NULL, vals BLOB NOT NULL, counts BLOB
);
CREATE INDEX IF NOT EXISTS chunks_by_key ON chunks (key_id, rank, id);
CREATE TABLE IF NOT EXISTS fields (
    path TEXT PRIMARY KEY, type TEXT NOT NULL, value BLOB NOT NULL,
    rank INTEGER NOT NULL, ts REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, rank INTEGER NOT NULL, type TEXT NOT NULL,
    value BLOB NOT NULL, kept_rank INTEGER NOT NULL, ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS senders (
    rank INTEGER NOT NULL, incarnation INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    points INTEGER NOT NULL, batches INTEGER NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, state TEXT NOT NULL, pid INTEGER, host TEXT,
    PRIMARY KEY (rank, incarnation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, rank INTEGER, detail TEXT
);
"""


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The store root: the argument, else ``$COORDINATOR_DIR``, else ``./.coordinator``."""
    if root is None:
        root = os.environ.get(_env.COORDINATOR_DIR) or DIR_NAME
    return Path(root).expanduser().absolute()


def run_dir(root: Path, run_id: str) -> Path:
    """Directory of one run under the store root."""
    if not run_id or "/" in run_id or run_id in (".", "..") or "\x00" in run_id:
        raise ConfigError(f"run id {run_id!r} is not a valid directory name")
    return root / "runs" / run_id


@dataclass(slots=True)
class ChunkRow:
    """One columnar chunk to insert."""

    key: str
    rank: int
    incarnation: int
    seq: int
    ts: float
    steps: array[int]
    values: array[float]
    counts: array[int] | None = None


@dataclass(slots=True)
class TxnData:
    """Everything one aggregator commit writes, atomically."""

    chunks: list[ChunkRow] = field(default_factory=list)
    fields: list[tuple[str, FieldValue, int, float]] = field(default_factory=list)
    """(path, value, rank, ts) upserts."""
    conflicts: list[tuple[str, int, FieldValue, int, float]] = field(default_factory=list)
    """(path, rank, rejected value, kept rank, ts)."""
    senders: dict[tuple[int, int], tuple[int, int, int, float, float, str, int | None, str | None]] = field(
        default_factory=dict
    )
    """(rank, incarnation) -> (last_seq, points, batches, first_seen, last_seen, state, pid, host)."""
    events: list[tuple[float, str, int | None, str]] = field(default_factory=list)
    key_policies: dict[str, str] = field(default_factory=dict)
    """New keys and their reduction policy."""
    meta: dict[str, str] = field(default_factory=dict)
    """Meta-table upserts (saved counters)."""

    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.chunks or self.fields or self.conflicts or self.senders or self.events or self.key_policies)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The run row plus where it lives."""

    id: str
    project: str
    name: str
    created: float
    ended: float | None
    state: str
    world_size: int
    report: dict[str, Any] | None
    path: Path


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One committed chunk as the forwarder reads it (journal order = ``id`` order)."""

    id: int
    """Row id: increases with every commit (one writer), so it is a cursor."""
    key: str
    rank: int
    """A training rank, or ``MAIN_RANK`` for the reduced main series."""
    incarnation: int
    ts: float
    """Time of the batch (the rank's batch time; for the main series, when it was emitted)."""
    steps: array[int]
    values: array[float]


class LocalStore:
    """One run's SQLite database.

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
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise SinkError(f"no store at {self.path}")
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro",
                    uri=True,
                    timeout=DEFAULTS.sqlite_busy_timeout_s,
                    check_same_thread=False,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._db = sqlite3.connect(
                    self.path,
                    timeout=DEFAULTS.sqlite_busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        except sqlite3.Error as e:
            raise SinkError(f"cannot open store {self.path}: {e}") from e
        if row is None or int(row[0]) != _SCHEMA_VERSION:
            raise SinkError(
                f"store {self.path} has schema {row[0] if row else None}, this version reads {_SCHEMA_VERSION}"
            )
        self._key_ids: dict[str, int] = {k: i for i, k in self._db.execute("SELECT id, key FROM keys")}

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    # ---------------------------------------------------------------- writing

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

    def _txn(self) -> _Txn:
        return _Txn(self._db)

    def commit(self, data: TxnData) -> None:
        """Write ``data`` in one transaction: all of it or nothing.

        Raises:
            SinkError: the write failed (disk full, I/O error); nothing of ``data`` is stored.
        """
        if data.empty():
            return
        db = self._db
        new_ids: dict[str, int] = {}
        try:
            with self._txn():
                for key, policy in data.key_policies.items():
                    if key not in self._key_ids:
                        cur = db.execute("INSERT INTO keys (key, policy) VALUES (?, ?)", (key, policy))
                        assert cur.lastrowid is not None
                        new_ids[key] = cur.lastrowid
                ids = self._key_ids
                if data.chunks:
                    db.executemany(
                        "INSERT INTO chunks (key_id, rank, incarnation, seq, n, ts, steps, vals, counts) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                ids.get(c.key) or new_ids[c.key],
                                c.rank,
                                c.incarnation,
                                c.seq,
                                len(c.steps),
                                c.ts,
                                _le(c.steps),
                                _le(c.values),
                                None if c.counts is None else _le(c.counts),
                            )
                            for c in data.chunks
                        ],
                    )
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
        except sqlite3.Error as e:
            raise SinkError(f"store {self.path}: commit failed: {e}") from e
        self._key_ids.update(new_ids)

    # ---------------------------------------------------------------- reading

    def meta(self, key: str) -> str | None:
        """A value of the meta table (``schema``, ``config``, ``counters``)."""
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value (its own transaction)."""
        with self._txn():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def max_chunk_id(self) -> int:
        """The journal's current end: the id of the last committed chunk (0 when empty)."""
        row = self._db.execute("SELECT MAX(id) FROM chunks").fetchone()
        return int(row[0] or 0)

    def run_info(self) -> RunInfo:
        """The run row."""
        row = self._db.execute(
            "SELECT id, project, name, created, ended, state, world_size, report FROM run"
        ).fetchone()
        if row is None:
            raise SinkError(f"store {self.path} holds no run")
        rid, project, name, created, ended, state, world = row[:7]
        report = json.loads(row[7]) if row[7] else None
        return RunInfo(rid, project, name, created, ended, state, world, report, self.path.parent)

    def fields(self) -> dict[str, FieldValue]:
        """Every field: path -> (type tag, value)."""
        return {
            p: (t, msgpack.unpackb(v))
            for p, t, v in self._db.execute("SELECT path, type, value FROM fields ORDER BY path")
        }

    def field_writers(self) -> dict[str, int]:
        """Path -> rank whose value is stored."""
        return dict(self._db.execute("SELECT path, rank FROM fields"))

    def _ranks_of(self, key: str) -> list[int]:
        sql = "SELECT DISTINCT rank FROM chunks c JOIN keys k ON k.id=c.key_id WHERE k.key=? AND rank>=0 ORDER BY rank"
        return [r for (r,) in self._db.execute(sql, (key,))]

    def rank_points(self, key: str) -> dict[int, tuple[list[int], list[float]]]:
        """Per rank (not the main series): its resolved (steps, values) of ``key`` in logging order."""
        out: dict[int, tuple[list[int], list[float]]] = {}
        for r in self._ranks_of(key):
            pts = self._rank_points(key, r)
            out[r] = ([s for s, _ in pts], [v for _, v in pts])
        return out

    def conflicts(self) -> list[dict[str, Any]]:
        """Every recorded conflicting field write."""
        return [
            {"path": p, "rank": r, "type": t, "value": msgpack.unpackb(v), "kept_rank": k, "ts": ts}
            for p, r, t, v, k, ts in self._db.execute(
                "SELECT path, rank, type, value, kept_rank, ts FROM conflicts ORDER BY id"
            )
        ]

    def senders(self) -> list[dict[str, Any]]:
        """Per (rank, incarnation): high-water mark, counts, liveness state."""
        cols = (
            "rank",
            "incarnation",
            "last_seq",
            "points",
            "batches",
            "first_seen",
            "last_seen",
            "state",
            "pid",
            "host",
        )
        return [
            dict(zip(cols, row, strict=True))
            for row in self._db.execute(f"SELECT {', '.join(cols)} FROM senders ORDER BY rank, first_seen")  # noqa: S608 - constant column names
        ]

    def high_water_marks(self) -> dict[tuple[int, int], int]:
        """(rank, incarnation) -> last committed batch number."""
        return {(r, i): s for r, i, s in self._db.execute("SELECT rank, incarnation, last_seq FROM senders")}

    def events(self) -> list[tuple[float, str, int | None, str]]:
        """The run's history (joins, goodbyes, losses, conflicts) in order."""
        return list(self._db.execute("SELECT ts, kind, rank, detail FROM events ORDER BY id"))

    def key_policies(self) -> dict[str, str]:
        """Metric key -> reduction policy."""
        return dict(self._db.execute("SELECT key, policy FROM keys ORDER BY key"))

    def _chunks(self, key: str, rank: int) -> Iterator[tuple[bytes, bytes, bytes | None, float, int]]:
        yield from self._db.execute(
            "SELECT c.steps, c.vals, c.counts, c.ts, c.incarnation FROM chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE k.key = ? AND c.rank = ? ORDER BY c.id",
            (key, rank),
        )

    def _rank_points(self, key: str, rank: int) -> list[tuple[int, float]]:
        """One rank's points in logging order, with elastic restarts resolved.

        A later incarnation of the rank that first logs the key at step ``f`` replaces the
        earlier incarnations' points at steps ``>= f`` (it resumed from a checkpoint).
        Incarnations are ordered by when they started logging (the earliest batch time).
        """
        by_inc: dict[int, list[tuple[int, float]]] = {}
        started: dict[int, float] = {}
        for sb, vb, _, ts, inc in self._chunks(key, rank):
            by_inc.setdefault(inc, []).extend(zip(_from_le("q", sb), _from_le("d", vb), strict=True))
            started[inc] = min(ts, started.get(inc, ts))
        if len(by_inc) == 1:
            return next(iter(by_inc.values()))
        out: list[tuple[int, float]] = []
        for inc in sorted(by_inc, key=lambda i: started[i]):
            pts = by_inc[inc]
            if out and pts:
                first = min(p[0] for p in pts)
                out = [p for p in out if p[0] < first]
            out.extend(pts)
        return out

    def values(self, key: str, rank: int = MAIN_RANK) -> list[tuple[int, float]]:
        """A series as (step, value) pairs in step order.

        Args:
            key: the metric key.
            rank: a rank's own points (every point it logged, in step order, stable for
                repeated steps; steps re-logged by a restarted incarnation replace the stale
                ones), or ``MAIN_RANK`` for the reduced series (one value per step; a step
                re-emitted after a restart replaces the earlier value).
        """
        if rank != MAIN_RANK:
            pts = self._rank_points(key, rank)
            pts.sort(key=lambda p: p[0])
            return pts
        return [(s, v) for s, v, _ in self._main(key)]

    def _main(self, key: str) -> list[tuple[int, float, int]]:
        latest: dict[int, tuple[float, int]] = {}
        for sb, vb, cb, _, _ in self._chunks(key, MAIN_RANK):
            steps = _from_le("q", sb)
            counts = _from_le("i", cb) if cb is not None else array("i", [1] * len(steps))
            for s, v, c in zip(steps, _from_le("d", vb), counts, strict=True):
                latest[s] = (v, c)
        return [(s, v, c) for s, (v, c) in sorted(latest.items())]

    def contributors(self, key: str) -> list[tuple[int, int]]:
        """(step, number of ranks that contributed) for each point of the main series."""
        return [(s, c) for s, _, c in self._main(key)]

    def series_summary(self) -> list[dict[str, Any]]:
        """Per key: points in the main series, per-rank counts, last main value."""
        out: list[dict[str, Any]] = []
        for key, policy in self.key_policies().items():
            per_rank = {r: len(self._rank_points(key, r)) for r in self._ranks_of(key)}
            main = self.values(key)
            out.append(
                {
                    "key": key,
                    "policy": policy,
                    "points": len(main),
                    "last": main[-1] if main else None,
                    "per_rank": per_rank,
                }
            )
        return out

    # ---------------------------------------------------------------- journal reads (forwarders)

    def chunks_after(self, cursor: int, max_points: int) -> list[StoredChunk]:
        """Committed chunks with ``id > cursor`` in journal order, about ``max_points`` points.

        At least one chunk is returned when there is one, even if it alone exceeds ``max_points``;
        otherwise chunks are taken while the total stays within ``max_points``.
        """
        out: list[StoredChunk] = []
        total = 0
        cur = self._db.execute(
            "SELECT c.id, k.key, c.rank, c.incarnation, c.ts, c.n, c.steps, c.vals "
            "FROM chunks c JOIN keys k ON k.id = c.key_id WHERE c.id > ? ORDER BY c.id",
            (cursor,),
        )
        try:
            while True:
                rows = cur.fetchmany(256)
                if not rows:
                    break
                for cid, key, rank, inc, ts, n, sb, vb in rows:
                    if out and total + n > max_points:
                        return out
                    out.append(StoredChunk(cid, key, rank, inc, ts, _from_le("q", sb), _from_le("d", vb)))
                    total += n
        finally:
            cur.close()  # ends the implicit read so the writer can checkpoint the WAL
        return out

    def points_after(self, cursor: int) -> tuple[int, int]:
        """(chunks, points) committed with ``id > cursor``: what a forwarder still has to send."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM chunks WHERE id > ?", (cursor,)).fetchone()
        return int(row[0]), int(row[1])

    def multi_incarnation_ranks(self) -> set[int]:
        """Ranks that had more than one incarnation (elastic restarts)."""
        return {r for (r,) in self._db.execute("SELECT rank FROM senders GROUP BY rank HAVING COUNT(*) > 1")}

    def rank_incarnations(self, key: str, rank: int) -> list[tuple[int, float, int]]:
        """(incarnation, first batch time, first step) of one rank's ``key``, by start time.

        The same order :meth:`values` uses to let a later incarnation replace earlier steps.
        """
        started: dict[int, float] = {}
        first: dict[int, int] = {}
        for sb, _, _, ts, inc in self._chunks(key, rank):
            steps = _from_le("q", sb)
            started[inc] = min(ts, started.get(inc, ts))
            if steps:
                first[inc] = min(min(steps), first.get(inc, min(steps)))
        return sorted(((i, started[i], first.get(i, 0)) for i in started), key=lambda t: t[1])


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


def list_runs(root: Path) -> list[RunInfo]:
    """Every run under ``root``, oldest first; unreadable runs are skipped with a warning."""
    out: list[RunInfo] = []
    runs = root / "runs"
    if not runs.is_dir():
        return out
    for d in sorted(runs.iterdir()):
        db = d / "run.db"
        if not db.exists():
            continue
        try:
            s = LocalStore(db, readonly=True)
            try:
                out.append(s.run_info())
            finally:
                s.close()
        except (SinkError, sqlite3.Error) as e:
            _log.warning("skipping unreadable run %s: %s", d, e)
    out.sort(key=lambda r: r.created)
    return out
