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
from coordinator.journal.records import MAIN_RANK, RunInfo, StoredChunk

__all__ = ["JournalReader"]

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


class JournalReader:
    """Read queries over one run's database.

    Thread-safety: belongs to one thread, like the connection it reads.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        """Read through ``db``, an open connection to the ``run.db`` at ``path``."""
        self._db = db
        self.path = path

    # ---------------------------------------------------------------- run, meta, fields

    def meta(self, key: str) -> str | None:
        """A value of the meta table (``schema``, ``config``, ``counters``)."""
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

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

    def conflicts(self) -> list[dict[str, Any]]:
        """Every recorded conflicting field write."""
        return [
            {"path": p, "rank": r, "type": t, "value": msgpack.unpackb(v), "kept_rank": k, "ts": ts}
            for p, r, t, v, k, ts in self._db.execute(
                "SELECT path, rank, type, value, kept_rank, ts FROM conflicts ORDER BY id"
            )
        ]

    # ---------------------------------------------------------------- senders and history

    def senders(self) -> list[dict[str, Any]]:
        """Per (rank, incarnation): high-water mark, counts, liveness state."""
        sql = f"SELECT {', '.join(_SENDER_COLUMNS)} FROM senders ORDER BY rank, first_seen"  # noqa: S608 - constant column names
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
        """Metric key -> reduction policy."""
        return dict(self._db.execute("SELECT key, policy FROM keys ORDER BY key"))

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

    def rank_points(self, key: str) -> dict[int, tuple[list[int], list[float]]]:
        """Per rank (not the main series): its resolved (steps, values) of ``key`` in logging order."""
        out: dict[int, tuple[list[int], list[float]]] = {}
        for r in self._ranks_of(key):
            pts = self._rank_points(key, r)
            out[r] = ([s for s, _ in pts], [v for _, v in pts])
        return out

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

    def rank_incarnations(self, key: str, rank: int) -> list[tuple[int, float, int | None]]:
        """(incarnation, first batch time, first step) of one rank's ``key``, in start order.

        The lineage :func:`coordinator.core.incarnations.replaced_from` reads; ``None`` as first
        step for an incarnation that stored no point of the key.
        """
        started: dict[int, float] = {}
        first: dict[int, int] = {}
        for sb, _, _, ts, inc in self._chunks(key, rank):
            started[inc] = min(ts, started.get(inc, ts))
            steps = _from_le("q", sb)
            if steps:
                lo = min(steps)
                first[inc] = min(lo, first.get(inc, lo))
        return [(i, started[i], first.get(i)) for i in start_order(started)]

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
            by_inc.setdefault(inc, []).extend(zip(_from_le("q", sb), _from_le("d", vb), strict=True))
            started[inc] = min(ts, started.get(inc, ts))
        if len(by_inc) == 1:
            return next(iter(by_inc.values()))
        return resolve([by_inc[i] for i in start_order(started)])

    def _main(self, key: str) -> list[tuple[int, float, int]]:
        latest: dict[int, tuple[float, int]] = {}
        for sb, vb, cb, _, _ in self._chunks(key, MAIN_RANK):
            steps = _from_le("q", sb)
            counts = _from_le("i", cb) if cb is not None else array("i", [1] * len(steps))
            for s, v, c in zip(steps, _from_le("d", vb), counts, strict=True):
                latest[s] = (v, c)
        return [(s, v, c) for s, (v, c) in sorted(latest.items())]

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
                    out.append(StoredChunk(cid, key, rank, inc, ts, _from_le("q", sb), _from_le("d", vb)))
                    total += n
        finally:
            cur.close()  # ends the implicit read so the writer can checkpoint the WAL
        return out

    def points_after(self, cursor: int) -> tuple[int, int]:
        """(chunks, points) committed with ``id > cursor``: what a forwarder still has to send."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM chunks WHERE id > ?", (cursor,)).fetchone()
        return int(row[0]), int(row[1])
