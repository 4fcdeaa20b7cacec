"""Reading a stored run's series for ``plot``, ``export`` and ``top``: read-only, retried, with each point's time.

The journal may be live (an aggregator committing to its WAL): it is opened read-only, never
blocks the writer, and a read that meets ``SQLITE_BUSY`` (a checkpoint or WAL recovery in
progress) is retried a few times before it fails. Series are read the way
:class:`~coordinator.journal.reader.JournalReader` pages them (the same replacement rule, in step
order, one chunk group at a time), with the time of each point: the timestamp of the chunk that
holds its current value (a rank's batch time; for the main series, when it was reduced).
"""

from __future__ import annotations

import fnmatch
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from coordinator.errors import CoordinatorError
from coordinator.journal.paging import SeriesSource, Span
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK
from coordinator.journal.schema import connect
from coordinator.journal.stepblobs import decode_steps

__all__ = ["BUSY_RETRIES", "ReadOnlyRun", "TimedPage", "parse_ranks", "retry_busy"]

BUSY_RETRIES = 20
"""How many times a read that met a busy or locked database is tried again (50 ms apart)."""

_FIRST = -(2**63)
_T = TypeVar("_T")

TimedPage = tuple["array[int]", "array[float]", "array[float]"]
"""Steps, values and times (unix seconds) of consecutive points of a series."""


def retry_busy(fn: Callable[[], _T], attempts: int = BUSY_RETRIES) -> _T:
    """``fn()``, tried again while SQLite says the database is busy or locked.

    Raises:
        sqlite3.OperationalError: still busy after ``attempts`` tries, or any other error.
    """
    tried = 0
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            tried += 1
            text = str(e).lower()
            if ("locked" not in text and "busy" not in text) or tried >= attempts:
                raise
            time.sleep(0.05)


def parse_ranks(text: str) -> list[int] | None:
    """``--ranks``: ``main`` (the reduced series), ``all`` (``None``: main and every rank) or a list like ``main,0,1``.

    Raises:
        CoordinatorError: anything else.
    """
    if text == "all":
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if part == "main":
            out.append(MAIN_RANK)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise CoordinatorError(f"--ranks takes main, all or a list like 0,1 or main,0,1; got {text!r}")
    return sorted(set(out))


class ReadOnlyRun:
    """A read-only connection to one run's ``run.db`` and its :class:`JournalReader`.

    Thread-safety: belongs to one thread. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        """Open ``path`` read-only.

        Raises:
            SinkError: no store there, or it cannot be read.
        """
        self.path = path
        self.db = connect(path, readonly=True, durable=False)
        """The run's read-only connection (other views of the run, e.g. its texts, share it)."""
        self.reader = JournalReader(self.db, path)

    def __enter__(self) -> ReadOnlyRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.db.close()

    def metric_keys(self, patterns: list[str] | None = None) -> list[str]:
        """The run's metric keys, sorted; with ``patterns`` those matching any of the globs."""
        keys = list(retry_busy(self.reader.key_policies))
        if not patterns:
            return keys
        return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]

    def ranks_of(self, key: str) -> list[int]:
        """The ranks that stored points of ``key`` (not the main series), sorted."""
        sql = "SELECT DISTINCT c.rank FROM chunks c JOIN keys k ON k.id=c.key_id WHERE k.key=? AND c.rank>=0"
        return sorted(r for (r,) in retry_busy(lambda: self.db.execute(sql, (key,)).fetchall()))

    def source(self, key: str, rank: int = MAIN_RANK) -> SeriesSource | None:
        """The chunks of series (``key``, ``rank``), or ``None`` when the key has none."""
        row = retry_busy(lambda: self.db.execute("SELECT id FROM keys WHERE key=?", (key,)).fetchone())
        if row is None:
            return None
        return SeriesSource(self.db, int(row[0]), rank, summarized=self.reader.summarized)

    def timed_pages(self, key: str, rank: int = MAIN_RANK) -> Iterator[TimedPage]:
        """The series in step order with each point's time, one chunk group at a time (bounded memory)."""
        src = self.source(key, rank)
        if src is None:
            return
        for group in src.groups(_FIRST):
            steps, values = src.resolve(group, _FIRST)
            if not steps:
                continue
            one = len(group) == 1
            times = array("d", [group[0].ts]) * len(steps) if one else self._group_times(src, group, steps)
            yield steps, values, times

    def _group_times(self, src: SeriesSource, group: list[Span], steps: array[int]) -> array[float]:
        """Per step of a group of overlapping chunks: the time of the chunk whose value won.

        Mirrors ``SeriesSource.resolve``: chunks in journal order, the later one of a step wins,
        points a later incarnation replaced are skipped.
        """
        when: dict[int, float] = {}
        for span in sorted(group, key=lambda s: s.id):
            (sb,) = self.db.execute("SELECT steps FROM chunks WHERE id=?", (span.id,)).fetchone()
            cut = src.cuts.get(span.incarnation)
            for s in decode_steps(sb, span.n):
                if cut is None or s < cut:
                    when[s] = span.ts
        return array("d", [when[s] for s in steps])

    def step_at(self, key: str, ts: float, rank: int = MAIN_RANK) -> int | None:
        """The furthest step series (``key``, ``rank``) had stored by time ``ts`` (``None``: none yet).

        Places a moment (an event) on the step axis of a plot.
        """
        src = self.source(key, rank)
        if src is None:
            return None
        if self.reader.summarized:
            sql = "SELECT MAX(step_max) FROM chunks WHERE key_id=(SELECT id FROM keys WHERE key=?) AND rank=? AND ts<=?"
            (top,) = retry_busy(lambda: self.db.execute(sql, (key, rank, ts)).fetchone())
            return None if top is None else int(top)
        return max((s.hi for s in src.spans() if s.ts <= ts), default=None)
