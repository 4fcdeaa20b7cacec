"""The journal's read side: series, fields, senders and events, and the forwarders' journal order.

Every query a reader needs, over one open connection; :class:`~coordinator.journal.store.LocalStore`
adds the writes on top. Reads never block the writer (WAL).
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from coordinator.core.columns import from_le as _from_le
from coordinator.core.incarnations import resolve, start_order
from coordinator.core.values import FieldValue
from coordinator.errors import SinkError
from coordinator.journal.paging import Page, SeriesSource, Stats
from coordinator.journal.records import MAIN_RANK, RunInfo, StoredChunk
from coordinator.journal.schema import schema_of
from coordinator.journal.staging import staged_points as _staged_points
from coordinator.journal.stepblobs import decode_steps
from coordinator.journal.textreads import TextReads
from coordinator.journal.texts import TEXT_POLICY

__all__ = ["MAX_PAGE_POINTS", "JournalReader"]

MAX_PAGE_POINTS = 1_000_000
"""The most points one page of a series holds (16 bytes each: 16 MB)."""

_SENDER_COLUMNS = (
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


class JournalReader(TextReads):
    """Read queries over one run's database (text series: :class:`~coordinator.journal.textreads.TextReads`).

    Thread-safety: belongs to one thread, like the connection it reads.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        """Read through ``db``, an open connection to the ``run.db`` at ``path``."""
        self._db = db
        self.path = path
        version = schema_of(db)
        self.summarized = version >= 2
        """The store has per-chunk summaries (schema 2); a read-only schema 1 store has not."""
        self.has_texts = version >= 3
        """The store has the ``texts`` table (schema 3); a read-only older store has no text series."""
        self.has_staged = version >= 4
        """The store has the staging log of rank points (schema 4); an older store stages nothing."""

    # ---------------------------------------------------------------- run, meta, fields

    def meta(self, key: str) -> str | None:
        """A value of the meta table (``schema``, ``config``, ``counters``)."""
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def metas(self, prefix: str) -> dict[str, str]:
        """The meta values whose keys start with ``prefix``, by key."""
        rows = self._db.execute("SELECT k, v FROM meta WHERE substr(k, 1, ?) = ?", (len(prefix), prefix)).fetchall()
        return {str(k): str(v) for k, v in rows}

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

    def field(self, path: str) -> FieldValue | None:
        """One field's (type tag, value), or ``None`` when it is not set."""
        row = self._db.execute("SELECT type, value FROM fields WHERE path=?", (path,)).fetchone()
        return None if row is None else (row[0], msgpack.unpackb(row[1]))

    def field_writers(self) -> dict[str, int]:
        """Path -> rank whose value is stored."""
        return dict(self._db.execute("SELECT path, rank FROM fields"))

    def conflicts(self) -> list[dict[str, Any]]:
        """Every recorded conflicting field write."""
        return [
            {"path": p, "rank": r, "type": t, "value": msgpack.unpackb(v), "kept_rank": k, "ts": ts}
            for p, r, t, v, k, ts in self._db.execute(
                "SELECT path, rank, type, value, kept_rank, ts FROM conflicts ORDER BY id"
            )
        ]

    def staged_points(self) -> int:
        """Rank points committed to the staging log but not yet chunk rows, which the series reads do not see.

        A live run's aggregator writes them as chunks about every two seconds (sooner when a rank
        reads); a crashed run's are written by the next writer that opens it (``coordinator
        sync``, a restarted aggregator). See :mod:`coordinator.journal.staging`.
        """
        return _staged_points(self._db) if self.has_staged else 0

    # ---------------------------------------------------------------- senders and history

    def senders(self) -> list[dict[str, Any]]:
        """Per (rank, incarnation): high-water mark, counts, liveness state."""
        sql = f"SELECT {', '.join(_SENDER_COLUMNS)} FROM senders ORDER BY rank, first_seen"  # constant column names
        return [dict(zip(_SENDER_COLUMNS, row, strict=True)) for row in self._db.execute(sql)]

    def high_water_marks(self) -> dict[tuple[int, int], int]:
        """(rank, incarnation) -> last committed batch number."""
        return {(r, i): s for r, i, s in self._db.execute("SELECT rank, incarnation, last_seq FROM senders")}

    def events(self) -> list[tuple[float, str, int | None, str]]:
        """The run's history (joins, goodbyes, losses, conflicts) in order."""
        return list(self._db.execute("SELECT ts, kind, rank, detail FROM events ORDER BY id"))

    def multi_incarnation_ranks(self) -> set[int]:
        """Ranks that had more than one incarnation (elastic restarts)."""
        return {r for (r,) in self._db.execute("SELECT rank FROM senders GROUP BY rank HAVING COUNT(*) > 1")}

    # ---------------------------------------------------------------- series

    def key_policies(self) -> dict[str, str]:
        """Metric key -> reduction policy (numeric series only; text series: :meth:`text_keys`)."""
        return dict(self._db.execute("SELECT key, policy FROM keys WHERE policy != ? ORDER BY key", (TEXT_POLICY,)))

    def values(self, key: str, rank: int = MAIN_RANK) -> list[tuple[int, float]]:
        """A whole series as (step, value) pairs in step order (small series; else :meth:`values_page`).

        Args:
            key: the metric key.
            rank: a rank's own points (each step once, with the latest value it was logged with;
                steps re-logged by a restarted incarnation replace the stale ones), or
                ``MAIN_RANK`` for the reduced series (a step re-emitted after a restart replaces
                the earlier value).
        """
        out: list[tuple[int, float]] = []
        for page in self.iter_values(key, rank):
            out.extend(zip(page.steps, page.values, strict=True))
        return out

    def values_page(self, key: str, rank: int = MAIN_RANK, after: int = -1, limit: int = MAX_PAGE_POINTS) -> Page:
        """At most ``limit`` points of a series with step ``> after``, in step order, read chunk by chunk.

        Memory: the page plus one chunk (or one group of chunks whose step ranges overlap), never
        the whole series. ``Page.next`` is the ``after`` of the next page (``None``: no more).

        Raises:
            TypeError: a wrong argument type.
            ValueError: ``limit`` outside 1..:data:`MAX_PAGE_POINTS`.
        """
        if type(key) is not str or type(rank) is not int or type(after) is not int or type(limit) is not int:
            raise TypeError("values_page(key: str, rank: int, after: int, limit: int)")
        if not 0 < limit <= MAX_PAGE_POINTS:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_POINTS}, got {limit}")
        src = self._source(key, rank)
        if src is None:
            return Page(array("q"), array("d"), None)
        return src.page(after, limit)

    def iter_values(
        self, key: str, rank: int = MAIN_RANK, after: int = -1, page_points: int = 65_536
    ) -> Iterator[Page]:
        """The series with step ``> after`` as consecutive pages of at most ``page_points`` points."""
        while True:
            page = self.values_page(key, rank, after, page_points)
            if page.steps:
                yield page
            if page.next is None:
                return
            after = page.next

    def series_stats(self, key: str, rank: int = MAIN_RANK) -> Stats:
        """Count, first and last (step, value), min and max of a series, from the chunk summaries."""
        src = self._source(key, rank)
        return Stats(0, None, None, None, None) if src is None else src.stats()

    def last_step(self, key: str, rank: int = MAIN_RANK) -> int | None:
        """The last current step of a series (``None``: it has no point)."""
        src = self._source(key, rank)
        return None if src is None else src.last_step()

    def last_point(self, key: str, rank: int = MAIN_RANK) -> tuple[int, float] | None:
        """The last current (step, value) of a series."""
        src = self._source(key, rank)
        last = None if src is None else src.last_step()
        if src is None or last is None:
            return None
        page = src.page(last - 1, 1)
        return (page.steps[0], page.values[0]) if page.steps else None

    def last_steps(self, rank: int) -> dict[str, int]:
        """Key -> the last step ``rank`` stored for it, over all its incarnations (for WELCOME's ``last_steps``)."""
        out: dict[str, int] = {}
        keys = list(
            self._db.execute("SELECT DISTINCT k.key FROM chunks c JOIN keys k ON k.id=c.key_id WHERE c.rank=?", (rank,))
        )
        for (key,) in keys:
            last = self.last_step(key, rank)
            if last is not None:
                out[key] = last
        out.update(self.text_last_steps(rank))
        return out

    def rank_points(self, key: str) -> dict[int, tuple[list[int], list[float]]]:
        """Per rank (not the main series): its resolved (steps, values) of ``key`` in logging order.

        Loads every point of the key: for small series and tests; readers of a large series
        page it (:meth:`values_page`).
        """
        out: dict[int, tuple[list[int], list[float]]] = {}
        for r in self._ranks_of(key):
            pts = self._rank_points(key, r)
            out[r] = ([s for s, _ in pts], [v for _, v in pts])
        return out

    def contributors(self, key: str) -> list[tuple[int, int]]:
        """(step, number of ranks that contributed) for each point of the main series."""
        return [(s, c) for s, _, c in self._main(key)]

    def series_summary(self) -> list[dict[str, Any]]:
        """Per key: the main series' count, last point, min and max; per rank its count (no full scan)."""
        out: list[dict[str, Any]] = []
        for key, policy in self.key_policies().items():
            main = self.series_stats(key)
            out.append(
                {
                    "key": key,
                    "policy": policy,
                    "points": main.points,
                    "first": main.first,
                    "last": main.last,
                    "min": main.min,
                    "max": main.max,
                    "per_rank": {r: self.series_stats(key, r).points for r in self._ranks_of(key)},
                }
            )
        return out

    def rank_incarnations(self, key: str, rank: int) -> list[tuple[int, float, int | None]]:
        """(incarnation, first batch time, first step) of one rank's ``key``, in start order.

        The lineage :func:`coordinator.core.incarnations.replaced_from` reads; ``None`` as first
        step for an incarnation that stored no point of the key.
        """
        src = self._source(key, rank)
        return [] if src is None else src.lineage()

    def _source(self, key: str, rank: int) -> SeriesSource | None:
        row = self._db.execute("SELECT id FROM keys WHERE key=?", (key,)).fetchone()
        return None if row is None else SeriesSource(self._db, row[0], rank, summarized=self.summarized)

    def _ranks_of(self, key: str) -> list[int]:
        sql = "SELECT DISTINCT rank FROM chunks c JOIN keys k ON k.id=c.key_id WHERE k.key=? AND rank>=0 ORDER BY rank"
        return [r for (r,) in self._db.execute(sql, (key,))]

    def _chunks(self, key: str, rank: int) -> Iterator[tuple[bytes, bytes, bytes | None, float, int]]:
        yield from self._db.execute(
            "SELECT c.steps, c.vals, c.counts, c.ts, c.incarnation FROM chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE k.key = ? AND c.rank = ? ORDER BY c.id",
            (key, rank),
        )

    def _rank_points(self, key: str, rank: int) -> list[tuple[int, float]]:
        """One rank's points in logging order, with elastic restarts resolved (core.incarnations)."""
        by_inc: dict[int, list[tuple[int, float]]] = {}
        started: dict[int, float] = {}
        for sb, vb, _, ts, inc in self._chunks(key, rank):
            by_inc.setdefault(inc, []).extend(zip(decode_steps(sb, len(vb) // 8), _from_le("d", vb), strict=True))
            started[inc] = min(ts, started.get(inc, ts))
        if len(by_inc) == 1:
            return next(iter(by_inc.values()))
        return resolve([by_inc[i] for i in start_order(started)])

    def _main(self, key: str) -> list[tuple[int, float, int]]:
        latest: dict[int, tuple[float, int]] = {}
        for sb, vb, cb, _, _ in self._chunks(key, MAIN_RANK):
            steps = decode_steps(sb, len(vb) // 8)
            counts = _from_le("i", cb) if cb is not None else array("i", [1] * len(steps))
            for s, v, c in zip(steps, _from_le("d", vb), counts, strict=True):
                latest[s] = (v, c)
        return [(s, v, c) for s, (v, c) in sorted(latest.items())]

    def restore_view(self, key: str) -> tuple[tuple[int, float] | None, list[tuple[Any, ...]]]:
        """What a restarted aggregator rebuilds ``key`` from, without reading every point (schema 2).

        Returns:
            The last main-series chunk's last (step, value) (``None``: nothing emitted), and per
            rank chunk in journal order ``(rank, incarnation, ts, step_min, step_max, step_last,
            steps, values)``, where steps and values (arrays) are read only for chunks reaching
            past that last emitted step (``None`` otherwise).
        """
        row = self._db.execute(
            "SELECT c.step_last, c.vals FROM chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE k.key = ? AND c.rank = ? ORDER BY c.id DESC LIMIT 1",
            (key, MAIN_RANK),
        ).fetchone()
        main = None if row is None or row[0] is None else (int(row[0]), _from_le("d", row[1])[-1])
        after = -1 if main is None else main[0]
        rows = self._db.execute(
            "SELECT c.rank, c.incarnation, c.ts, c.step_min, c.step_max, c.step_last, "
            "CASE WHEN c.step_max > ? THEN c.steps END, CASE WHEN c.step_max > ? THEN c.vals END "
            "FROM chunks c JOIN keys k ON k.id = c.key_id WHERE k.key = ? AND c.rank >= 0 AND c.n > 0 ORDER BY c.id",
            (after, after, key),
        )
        out = [
            (
                r,
                i,
                ts,
                lo,
                hi,
                last,
                None if sb is None or vb is None else decode_steps(sb, len(vb) // 8),
                None if vb is None else _from_le("d", vb),
            )
            for r, i, ts, lo, hi, last, sb, vb in rows
        ]
        return main, out

    # ---------------------------------------------------------------- journal order (forwarders)

    def max_chunk_id(self) -> int:
        """The journal's current end: the id of the last committed chunk (0 when empty)."""
        row = self._db.execute("SELECT MAX(id) FROM chunks").fetchone()
        return int(row[0] or 0)

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
                    out.append(StoredChunk(cid, key, rank, inc, ts, decode_steps(sb, n), _from_le("d", vb)))
                    total += n
        finally:
            cur.close()  # ends the implicit read so the writer can checkpoint the WAL
        return out

    def points_after(self, cursor: int) -> tuple[int, int]:
        """(chunks, points) committed with ``id > cursor``: what a forwarder still has to send."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM chunks WHERE id > ?", (cursor,)).fetchone()
        return int(row[0]), int(row[1])
