"""The journal's SQLite schema: its tables, its version, and opening a database at that version.

A store written by an older coordinator is upgraded in place by :func:`migrate` (one step per
version); one written by a newer coordinator is refused, since this code cannot know what its
tables mean.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

from coordinator.core.columns import from_le
from coordinator.errors import SinkError
from coordinator.journal.staging import STAGED_DDL
from coordinator.journal.summary import SUMMARY_COLUMNS, summarize
from coordinator.journal.texts import TEXTS_DDL

__all__ = ["DDL", "INDEXES", "MIGRATIONS", "OLDEST_READABLE", "SCHEMA_VERSION", "connect", "migrate", "schema_of"]

SCHEMA_VERSION = 5
"""The version this code writes and reads; kept in ``meta`` under ``schema``.

2: per-chunk summaries (:mod:`coordinator.journal.summary`) and the ``chunks_by_step`` index.
3: the ``texts`` table of text series (:mod:`coordinator.journal.texts`).
4: the ``staged`` table, the staging log of rank points (:mod:`coordinator.journal.staging`).
5: a chunk of consecutive steps may store them as a run, its first and last step
   (:mod:`coordinator.journal.stepblobs`); the tables do not change, but a coordinator that
   reads only version 4 would misread such a chunk, so it refuses the store.
"""

OLDEST_READABLE = 1
"""The oldest version a read-only open accepts as it is (readers compute what it lacks)."""

BUSY_TIMEOUT_S = 30.0
"""How long a connection waits on a lock another connection holds (the writer's commits are short)."""

DDL = (
    """
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
    steps BLOB NOT NULL, vals BLOB NOT NULL, counts BLOB,
    step_min INTEGER, step_max INTEGER, step_first INTEGER, step_last INTEGER,
    v_first REAL, v_last REAL, v_min REAL, v_max REAL, ordered INTEGER
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
    + TEXTS_DDL
    + STAGED_DDL
)
"""The tables at :data:`SCHEMA_VERSION` (``CREATE ... IF NOT EXISTS``: running it on an existing store is a no-op)."""

INDEXES = "CREATE INDEX IF NOT EXISTS chunks_by_step ON chunks (key_id, rank, step_min, step_max);"
"""Indexes on columns a migration adds: created once the store is at :data:`SCHEMA_VERSION`."""

Migration = Callable[[sqlite3.Connection], None]

_MIGRATE_ROWS = 512
"""Chunks summarised per round of the 1 -> 2 upgrade (bounded memory for any store size)."""


def _add_summaries(db: sqlite3.Connection) -> None:
    """1 -> 2: add the summary columns to ``chunks`` and fill them, a bounded round of rows at a time."""
    have = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    types = {"v_first": "REAL", "v_last": "REAL", "v_min": "REAL", "v_max": "REAL"}
    for col in SUMMARY_COLUMNS:
        if col not in have:
            db.execute(f"ALTER TABLE chunks ADD COLUMN {col} {types.get(col, 'INTEGER')}")
    sets = ", ".join(f"{c}=?" for c in SUMMARY_COLUMNS)
    last = 0
    while True:
        rows = db.execute(
            "SELECT id, steps, vals FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (last, _MIGRATE_ROWS)
        ).fetchall()
        if not rows:
            return
        db.executemany(
            f"UPDATE chunks SET {sets} WHERE id=?",  # constant column names
            [(*summarize(from_le("q", sb), from_le("d", vb)), cid) for cid, sb, vb in rows],  # schema 1: no runs
        )
        last = rows[-1][0]


def _add_texts(db: sqlite3.Connection) -> None:
    """2 -> 3: add the ``texts`` table and its index (a store of version 2 has no text series)."""
    for stmt in TEXTS_DDL.split(";"):  # one statement at a time: executescript would commit the open transaction
        if stmt.strip():
            db.execute(stmt)


def _add_staged(db: sqlite3.Connection) -> None:
    """3 -> 4: add the ``staged`` table (a store of version 3 has nothing staged: its rank points are chunks)."""
    db.execute(STAGED_DDL)


def _allow_runs(db: sqlite3.Connection) -> None:
    """4 -> 5: nothing to change (chunks written before hold their steps; runs are written from now on)."""


MIGRATIONS: Mapping[int, Migration] = {1: _add_summaries, 2: _add_texts, 3: _add_staged, 4: _allow_runs}
"""Version ``v`` -> the step that upgrades a store from ``v`` to ``v + 1`` (run in one transaction)."""


def connect(path: Path, *, readonly: bool, durable: bool) -> sqlite3.Connection:
    """Open the database at ``path`` at :data:`SCHEMA_VERSION` (creating it unless ``readonly``).

    A writer creates the run directory ``0700`` and the database ``0600`` (SQLite gives its
    ``-wal`` and ``-shm`` files the database's mode), and tightens an existing run's modes.

    Args:
        path: the ``run.db`` file.
        readonly: open without write access; the file must exist and is never upgraded (a
            store from :data:`OLDEST_READABLE` on is read as it is: see :func:`schema_of`).
        durable: ``synchronous=FULL`` (survives power loss) instead of ``NORMAL`` (survives
            process crashes); writers only.

    Raises:
        SinkError: the file is missing (``readonly``), cannot be opened, or has a schema this
            code cannot read.
    """
    try:
        if readonly:
            if not path.exists():
                raise SinkError(f"no store at {path}")
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        else:
            _private(path)
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.executescript(DDL)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    except sqlite3.Error as e:
        raise SinkError(f"cannot open store {path}: {e}") from e
    try:
        migrate(db, path, readonly=readonly)
        if not readonly:
            db.executescript(INDEXES)
    except sqlite3.Error as e:
        db.close()
        raise SinkError(f"cannot open store {path}: {e}") from e
    except BaseException:
        db.close()
        raise
    return db


def _private(path: Path) -> None:
    """The run directory ``0700`` and ``path`` ``0600``, before SQLite creates anything in it."""
    for d in reversed([path.parent, *path.parent.parents]):
        if not d.exists():
            d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if f.exists():
            os.chmod(f, 0o600)


def schema_of(db: sqlite3.Connection) -> int:
    """The schema version of the store open on ``db`` (after :func:`connect`: current, or older read-only)."""
    row = db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
    return int(row[0])


def migrate(
    db: sqlite3.Connection,
    path: Path,
    *,
    readonly: bool = False,
    target: int = SCHEMA_VERSION,
    steps: Mapping[int, Migration] = MIGRATIONS,
    oldest_readable: int = OLDEST_READABLE,
) -> None:
    """Bring the store open on ``db`` to schema ``target``, or refuse it.

    Args:
        db: an open connection (autocommit mode when writable).
        path: the file, for messages.
        readonly: a read-only store is never upgraded: one from ``oldest_readable`` on is read
            as it is, an older one is refused.
        target: the version to reach (this code's version).
        steps: version -> the upgrade step to the next version.

    Raises:
        SinkError: the store is newer than ``target``, older with no upgrade path, read-only
            and older than ``oldest_readable``, or an upgrade step failed (then nothing of it is
            kept).
    """
    try:
        row = db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
    except sqlite3.Error as e:
        raise SinkError(f"cannot open store {path}: {e}") from e
    version = int(row[0]) if row is not None else None
    if version == target:
        return
    refusal = f"store {path} has schema {version}, this version reads {target}"
    if version is None:
        raise SinkError(refusal)
    if version > target:
        raise SinkError(f"{refusal} (written by a newer coordinator: upgrade coordinator to read it)")
    if readonly and version >= oldest_readable:
        return  # read as it is; the readers compute what it lacks
    missing = [v for v in range(version, target) if v not in steps]
    if missing or readonly:
        why = "opened read-only" if readonly else f"no upgrade from schema {missing[0]}"
        raise SinkError(f"{refusal} and cannot upgrade it ({why})")
    try:
        db.execute("BEGIN IMMEDIATE")
        for v in range(version, target):
            steps[v](db)
        db.execute("UPDATE meta SET v=? WHERE k='schema'", (str(target),))
        db.execute("COMMIT")
    except sqlite3.Error as e:
        with contextlib.suppress(sqlite3.Error):  # the step's error is what the caller needs
            db.execute("ROLLBACK")
        raise SinkError(f"{refusal}; upgrading it failed: {e}") from e
