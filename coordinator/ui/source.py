"""One run opened for reading by the UI: its reader, and the few lookups the pages need on top.

Every request opens its own read-only connection (SQLite connections belong to one thread) and
closes it when answered, so the UI never holds a read open that would keep the writer from
checkpointing. The lookups here are the ones :class:`~coordinator.journal.reader.JournalReader`
has no public query for: a key's ranks, a series' chunk source, what changed since a journal
position (for the live page), and a text series read newest first (the reader pages texts
oldest first; the replacement rule is the reader's ``text_lineage`` through
:func:`~coordinator.core.incarnations.replaced_from`, as the journal's own text reads apply it).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from coordinator.core.incarnations import replaced_from
from coordinator.errors import ConfigError, SinkError
from coordinator.journal.paging import SeriesSource
from coordinator.journal.paths import run_dir
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK
from coordinator.journal.schema import connect

__all__ = ["MAX_TEXT_CHARS", "RunSource", "TextsBefore", "UnknownRun"]

MAX_TEXT_CHARS = 2 * 1024 * 1024
"""A page of texts stops once it passed this many characters (at least one text per page)."""

_TEXTS_BEFORE = """
WITH cuts(inc, cut) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)),
page(id) AS (
    SELECT MAX(t.id) FROM texts t LEFT JOIN cuts c ON c.inc = t.incarnation
    WHERE t.key_id = ? AND t.rank = ? AND (c.cut IS NULL OR t.step < c.cut) AND t.step < ?
    GROUP BY t.step ORDER BY t.step DESC LIMIT ?
)
SELECT step, ts, value FROM texts WHERE id IN (SELECT id FROM page) ORDER BY step DESC
"""
_TEXTS_COUNT = """
WITH cuts(inc, cut) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
SELECT COUNT(DISTINCT t.step) FROM texts t LEFT JOIN cuts c ON c.inc = t.incarnation
WHERE t.key_id = ? AND t.rank = ? AND (c.cut IS NULL OR t.step < c.cut)
"""
# within what no later incarnation replaced, a step logged twice shows its latest text (MAX(id))


class TextsBefore(NamedTuple):
    """A page of one rank's text series, newest first, and where the next (older) page starts."""

    steps: list[int]
    times: list[float]
    texts: list[str]
    total: int
    """Current texts of the series (each step once)."""
    next: int | None
    """Pass as ``before`` for the next page; ``None``: this page reaches the first text."""


class UnknownRun(LookupError):
    """No stored run has that id (the server answers 404)."""


class RunSource:
    """A read-only view of one stored run; use as a context manager (closes the connection).

    Args:
        root: the store root.
        run_id: the run's id (its directory name).

    Raises:
        UnknownRun: the id names no stored run (or is not a valid run id).
        SinkError: the store cannot be opened.
    """

    def __init__(self, root: Path, run_id: str) -> None:
        try:
            path = run_dir(root, run_id) / "run.db"
        except ConfigError as e:
            raise UnknownRun(str(e)) from e
        if not path.is_file():
            raise UnknownRun(f"no run {run_id!r} under {root}")
        self._db = connect(path, readonly=True, durable=False)
        self.reader = JournalReader(self._db, path)
        self._key_ids: dict[str, int] | None = None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def key_ids(self) -> dict[str, int]:
        """Metric key -> its row id."""
        if self._key_ids is None:
            self._key_ids = {k: i for i, k in self._db.execute("SELECT id, key FROM keys")}
        return self._key_ids

    def ranks(self, key: str) -> list[int]:
        """The ranks (not the main series) that stored points of ``key``, ascending."""
        kid = self.key_ids().get(key)
        if kid is None:
            return []
        sql = "SELECT DISTINCT rank FROM chunks WHERE key_id=? AND rank>=0 ORDER BY rank"
        return [r for (r,) in self._db.execute(sql, (kid,))]

    def series(self, key: str, rank: int = MAIN_RANK) -> SeriesSource | None:
        """The chunk source of one series (``None``: the key is unknown)."""
        kid = self.key_ids().get(key)
        if kid is None:
            return None
        return SeriesSource(self._db, kid, rank, summarized=self.reader.summarized)

    def step_range(self, key: str) -> tuple[int, int] | None:
        """The smallest and largest step any series of ``key`` (main or rank) holds (``None``: no point)."""
        kid = self.key_ids().get(key)
        if kid is None:
            return None
        if self.reader.summarized:
            lo, hi = self._db.execute(
                "SELECT MIN(step_min), MAX(step_max) FROM chunks WHERE key_id=?", (kid,)
            ).fetchone()
            return None if lo is None else (int(lo), int(hi))
        bounds: list[int] = []
        for rank in (MAIN_RANK, *self.ranks(key)):
            src = self.series(key, rank)
            spans = list(src.spans()) if src is not None else []
            bounds.extend(b for s in spans for b in (s.lo, s.hi))
        return (min(bounds), max(bounds)) if bounds else None

    def position(self) -> int:
        """The journal's end: the last committed chunk's id (grows with every commit)."""
        return self.reader.max_chunk_id()

    def changed_keys(self, since: int) -> list[str]:
        """Keys with a chunk committed after journal position ``since``."""
        try:
            rows = self._db.execute(
                "SELECT DISTINCT k.key FROM chunks c JOIN keys k ON k.id=c.key_id WHERE c.id > ? ORDER BY k.key",
                (since,),
            ).fetchall()
        except sqlite3.Error as e:
            raise SinkError(f"store {self.reader.path}: {e}") from e
        return [k for (k,) in rows]

    def event_count(self) -> int:
        """How many events the run recorded."""
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def text_ranks(self, key: str) -> list[int]:
        """The ranks that logged text series ``key``, ascending (empty: no such text series)."""
        kid = self.key_ids().get(key)
        if kid is None or not self.reader.is_text(key):
            return []
        return [r for (r,) in self._db.execute("SELECT DISTINCT rank FROM texts WHERE key_id=? ORDER BY rank", (kid,))]

    def texts_before(self, key: str, rank: int, before: int, limit: int) -> TextsBefore:
        """At most ``limit`` current texts of (``key``, ``rank``) with step ``< before``, newest first.

        Raises:
            SinkError: the store cannot be read.
        """
        kid = self.key_ids().get(key)
        if kid is None or not self.reader.is_text(key):
            return TextsBefore([], [], [], 0, None)
        lineage = self.reader.text_lineage(key, rank)
        cuts = json.dumps([[i, c] for i, _ in lineage if (c := replaced_from(i, lineage)) is not None])
        steps: list[int] = []
        times: list[float] = []
        texts: list[str] = []
        size = 0
        try:
            (total,) = self._db.execute(_TEXTS_COUNT, (cuts, kid, rank)).fetchone()
            cur = self._db.execute(_TEXTS_BEFORE, (cuts, kid, rank, before, limit))
            try:
                for step, ts, text in cur:
                    steps.append(step)
                    times.append(ts)
                    texts.append(text)
                    size += len(text)
                    if size >= MAX_TEXT_CHARS:
                        break
            finally:
                cur.close()  # ends the read so the writer can checkpoint
        except sqlite3.Error as e:
            raise SinkError(f"store {self.reader.path}: {e}") from e
        more = bool(steps) and (size >= MAX_TEXT_CHARS or len(steps) >= limit) and steps[-1] > -(2**63)
        return TextsBefore(steps, times, texts, int(total), steps[-1] if more else None)
