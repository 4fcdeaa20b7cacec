"""Text series in the journal: the ``texts`` table's rows, their writes and their reads.

A text series (``run["samples/generation"].append("...", step=s)``) is per rank: no reduction,
one row per (key, rank, incarnation, step) text, in journal order (``id``). Its key is in
``keys`` with the policy :data:`TEXT_POLICY`. What a reader sees of one rank's series follows the
replacement rule of :mod:`coordinator.core.incarnations`: a later incarnation that logs the key
from step ``f`` (its smallest step) replaces the earlier incarnations' texts at steps ``>= f``,
and within what is left each step keeps its latest text. Pages are bounded by count and bytes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from coordinator.core.incarnations import replaced_from

__all__ = [
    "MAX_TEXT_PAGE",
    "MAX_TEXT_PAGE_BYTES",
    "TEXTS_DDL",
    "TEXT_POLICY",
    "StoredText",
    "TextPage",
    "TextRow",
    "insert_texts",
    "last_steps",
    "max_text_id",
    "text_lineage",
    "text_page",
    "text_summary",
    "texts_after",
]

TEXT_POLICY = "text"
"""The ``keys.policy`` of a text series' key (a key is numeric or text for the whole run)."""

MAX_TEXT_PAGE = 10_000
"""The most texts one page holds."""

MAX_TEXT_PAGE_BYTES = 16 * 1024 * 1024
"""A page stops once its texts passed this many characters (at least one text per page)."""

TEXTS_DDL = """
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY, key_id INTEGER NOT NULL, rank INTEGER NOT NULL,
    incarnation INTEGER NOT NULL, step INTEGER NOT NULL, ts REAL NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS texts_by_key ON texts (key_id, rank, step);
"""
"""The table (schema 3) and its index; ``IF NOT EXISTS``, so the 2 -> 3 migration runs it too."""


class StoredText(NamedTuple):
    """One committed text as the forwarders read it (journal order = ``id`` order)."""

    id: int
    key: str
    rank: int
    incarnation: int
    step: int
    ts: float
    """The time of the batch that carried it (the rank's cut time)."""
    text: str


@dataclass(slots=True)
class TextRow:
    """Texts of one key from one batch, to insert."""

    key: str
    rank: int
    incarnation: int
    ts: float
    steps: list[int]
    texts: list[str]


class TextPage(NamedTuple):
    """One page of a rank's text series in step order, and where the next page starts."""

    steps: list[int]
    texts: list[str]
    next: int | None
    """Pass as ``after`` for the next page; ``None``: this page ends the series."""


def insert_texts(db: sqlite3.Connection, rows: list[TextRow], key_id: Callable[[str], int]) -> int:
    """Insert ``rows`` in the caller's transaction (``key_id``: key -> ``keys.id``); returns the count."""
    flat = [
        (key_id(r.key), r.rank, r.incarnation, s, r.ts, t) for r in rows for s, t in zip(r.steps, r.texts, strict=True)
    ]
    db.executemany("INSERT INTO texts (key_id, rank, incarnation, step, ts, value) VALUES (?, ?, ?, ?, ?, ?)", flat)
    return len(flat)


def max_text_id(db: sqlite3.Connection) -> int:
    """The id of the last committed text (0 when none)."""
    row = db.execute("SELECT MAX(id) FROM texts").fetchone()
    return int(row[0] or 0)


def texts_after(db: sqlite3.Connection, cursor: int, limit: int) -> list[StoredText]:
    """At most ``limit`` committed texts with ``id > cursor`` in journal order (every row, none resolved)."""
    cur = db.execute(
        "SELECT t.id, k.key, t.rank, t.incarnation, t.step, t.ts, t.value FROM texts t "
        "JOIN keys k ON k.id = t.key_id WHERE t.id > ? ORDER BY t.id LIMIT ?",
        (cursor, limit),
    )
    try:
        return [StoredText(*row) for row in cur.fetchall()]
    finally:
        cur.close()  # ends the implicit read so the writer can checkpoint the WAL


# Each query reads the rows of one (key, rank) that no later incarnation replaced: ``json_each(?)`` holds the
# replacement rule as [[incarnation, first replaced step], ...] (:func:`_cuts`), so the SQL stays constant.
_PAGE_ROWS = """
WITH cuts(inc, cut) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)),
page(id) AS (
    SELECT MAX(t.id) FROM texts t LEFT JOIN cuts c ON c.inc = t.incarnation
    WHERE t.key_id = ? AND t.rank = ? AND (c.cut IS NULL OR t.step < c.cut) AND t.step > ?
    GROUP BY t.step ORDER BY t.step LIMIT ?
)
SELECT step, value FROM texts WHERE id IN (SELECT id FROM page) ORDER BY step
"""
_COUNT_LAST = """
WITH cuts(inc, cut) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
SELECT COUNT(DISTINCT t.step), MAX(t.step) FROM texts t LEFT JOIN cuts c ON c.inc = t.incarnation
WHERE t.key_id = ? AND t.rank = ? AND (c.cut IS NULL OR t.step < c.cut)
"""
_TEXT_AT = """
WITH cuts(inc, cut) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
SELECT t.value FROM texts t LEFT JOIN cuts c ON c.inc = t.incarnation
WHERE t.key_id = ? AND t.rank = ? AND (c.cut IS NULL OR t.step < c.cut) AND t.step = ?
ORDER BY t.id DESC LIMIT 1
"""


def text_lineage(db: sqlite3.Connection, key_id: int, rank: int) -> list[tuple[int, int]]:
    """(incarnation, first step) of one rank's text series, in start order (first batch time, then journal order).

    The lineage :func:`coordinator.core.incarnations.replaced_from` reads, as
    :meth:`~coordinator.journal.paging.SeriesSource.lineage` is for numeric series.
    """
    rows = db.execute(
        "SELECT incarnation, MIN(step) FROM texts WHERE key_id=? AND rank=? "
        "GROUP BY incarnation ORDER BY MIN(ts), MIN(id)",
        (key_id, rank),
    ).fetchall()
    return [(int(inc), int(first)) for inc, first in rows]


def _cuts(db: sqlite3.Connection, key_id: int, rank: int) -> str:
    """The replacement rule for one (key, rank) as JSON ``[[incarnation, first replaced step], ...]``."""
    lineage = text_lineage(db, key_id, rank)
    if len(lineage) < 2:
        return "[]"
    cuts = [[inc, cut] for inc, _ in lineage if (cut := replaced_from(inc, lineage)) is not None]
    return json.dumps(cuts)


def text_page(db: sqlite3.Connection, key_id: int, rank: int, after: int, limit: int) -> TextPage:
    """At most ``limit`` current texts of (key, rank) with step ``> after``, in step order.

    A step logged more than once holds its latest text. The page also stops after
    :data:`MAX_TEXT_PAGE_BYTES` characters of text.
    """
    cur = db.execute(_PAGE_ROWS, (_cuts(db, key_id, rank), key_id, rank, after, min(limit, MAX_TEXT_PAGE)))
    steps: list[int] = []
    out: list[str] = []
    size = 0
    try:
        for step, text in cur:
            steps.append(step)
            out.append(text)
            size += len(text)
            if size >= MAX_TEXT_PAGE_BYTES:
                return TextPage(steps, out, step)
    finally:
        cur.close()
    return TextPage(steps, out, steps[-1] if len(steps) >= min(limit, MAX_TEXT_PAGE) else None)


def text_summary(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per (key, rank): ``key``, ``rank``, ``n`` current texts, ``last_step`` and ``last_text``."""
    out: list[dict[str, Any]] = []
    pairs = db.execute(
        "SELECT DISTINCT k.id, k.key, t.rank FROM texts t JOIN keys k ON k.id = t.key_id ORDER BY k.key, t.rank"
    ).fetchall()
    for key_id, key, rank in pairs:
        cuts = _cuts(db, key_id, rank)
        n, last_step = db.execute(_COUNT_LAST, (cuts, key_id, rank)).fetchone()
        row = db.execute(_TEXT_AT, (cuts, key_id, rank, last_step)).fetchone()
        out.append({"key": key, "rank": rank, "n": n, "last_step": last_step, "last_text": row[0] if row else None})
    return out


def last_steps(db: sqlite3.Connection, rank: int) -> dict[str, int]:
    """Key -> the last current step of ``rank``'s text series (a restarted rank numbers on from it)."""
    out: dict[str, int] = {}
    for key_id, key in db.execute(
        "SELECT DISTINCT k.id, k.key FROM texts t JOIN keys k ON k.id = t.key_id WHERE t.rank=?", (rank,)
    ).fetchall():
        (_, last) = db.execute(_COUNT_LAST, (_cuts(db, key_id, rank), key_id, rank)).fetchone()
        if last is not None:
            out[key] = int(last)
    return out
