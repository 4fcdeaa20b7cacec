"""Rank points committed to the staging log and held in memory until they are written as chunks.

Each commit round's rank points (one piece per key, rank and incarnation) are committed as one
row of the journal's staging log (:mod:`coordinator.journal.staging`), in the transaction that
advances the senders' high-water marks, so an ACK still follows the commit of what it
acknowledges. The same pieces are kept here, one growing chunk per (key, rank, incarnation), and
*materialized* — written as ordinary chunk rows, the staged rows deleted, in one transaction —
every :data:`RANK_HOLD_S`, past :data:`RANK_HOLD_POINTS` points, or at once when a reply reads
rank chunks (see :mod:`coordinator.aggregator.server`). At a paced load that is one chunk row per
key and rank every two seconds instead of one per commit round. A block of keys a rank logged together
stays one block here, extended round by round, and is split per key only when it is written
(:class:`~coordinator.aggregator.pieces.Pieces`).
"""

from __future__ import annotations

import numpy as np

from coordinator.aggregator.pieces import Pieces
from coordinator.journal.records import StagedBlock
from coordinator.journal.store import ChunkRow

__all__ = [
    "RANK_HOLD_POINTS",
    "RANK_HOLD_S",
    "RANK_ROW_MIN_POINTS",
    "RANK_STAGE_MAX_POINTS",
    "RankHold",
    "write_at_once",
]

RANK_HOLD_S = 2.0
"""Longest time staged rank points are held before they are written as chunks (how late a
read-only reader of a live run may see them).

The write costs per row, one row per (key, rank, incarnation) however many steps it holds: at 1 s
a paced 4-rank, 100-key job wrote 400 rows a second, and that write was the largest part of its
aggregator's work (~5 ms of ~14 ms a second, hot, in process); at 2 s it is half. The main series,
which a live reader watches, is still held ~1 s (``outbox.HOLD_S``)."""
RANK_HOLD_POINTS = 250_000
"""Held rank points that make the hold write at once: bounds its memory (16 bytes a point, about
4 MB) and what a writer reads back from the staging log after a crash."""
RANK_STAGE_MAX_POINTS = 65_536
"""A round with this many rank points or more, in rows of :data:`RANK_ROW_MIN_POINTS` points or more
on average, is not staged: it is written as chunk rows at once, with what is held. Its rows are
large anyway (a few ranks logging flat out), and a staged copy would be written, then deleted
(SQLite frees every overflow page of its blob) and written again as chunks: at 10 keys per call
that was a third of the aggregator's time. A large round of many short series (a thousand
senders) is staged: that is what staging is for."""
RANK_ROW_MIN_POINTS = 256
"""Average points per (key, rank) series of a round from which its chunk rows count as large."""


def write_at_once(pieces: Pieces) -> bool:
    """Whether a round's rank ``pieces`` are written as chunk rows at once instead of staged (see above)."""
    n = pieces.points
    return n >= RANK_STAGE_MAX_POINTS and n >= RANK_ROW_MIN_POINTS * sum(map(len, pieces.owner.values()))


class RankHold:
    """Staged rank pieces not yet written as chunks, one growing chunk per (key, rank, incarnation).

    Not thread-safe: owned by the aggregator loop.
    """

    __slots__ = ("chunks", "since")

    def __init__(self) -> None:
        self.chunks = Pieces()
        self.since = 0.0
        """When the oldest held piece was staged (the caller's clock)."""

    def __bool__(self) -> bool:
        return bool(self.chunks)

    @property
    def points(self) -> int:
        """Rank points held."""
        return self.chunks.points

    def add(self, pieces: Pieces, now: float) -> None:
        """Hold ``pieces`` (a committed round's rank chunks and blocks) after what is held for their keys.

        The committed round's pieces are the hold's now (the outbox let them go).
        """
        if not self.chunks:
            self.since = now
        chunks = self.chunks
        pieces.settle()
        for p in pieces.items.values():
            if isinstance(p, StagedBlock):
                chunks.block(p)
            else:
                chunks.chunk(p)

    def due(self, now: float, extra: int = 0) -> bool:
        """True when the held pieces (plus ``extra`` points about to be staged) should be written now."""
        return bool(self.chunks) and (now - self.since >= RANK_HOLD_S or self.points + extra >= RANK_HOLD_POINTS)

    def materialized(self, pieces: Pieces) -> list[ChunkRow | StagedBlock]:
        """Everything held plus ``pieces``, one chunk or block per series, as the chunk rows to write.

        A block held and extended by ``pieces`` stays one block (the store writes a block's rows
        at once: :mod:`coordinator.journal.blockrows`). Leaves the hold as it is (a failed commit
        is retried with the same rows): what ``pieces`` extend is copied. Where a series is held
        in one form and comes in another (a key logged alone, then in a dict), everything is
        split into chunks (:meth:`rows_with`).
        """
        held = self.chunks
        pieces.settle()
        for ri, own in pieces.owner.items():
            hown = held.owner.get(ri)
            if hown and not all(hown.get(k, o) == o for k, o in own.items()):
                return list(self.rows_with(pieces))
        new = dict(pieces.items)
        out: list[ChunkRow | StagedBlock] = []
        # A held block's values are joined once, with its later pieces and what ``pieces`` add, into
        # the row's copy: settling the hold first and then copying again held every point twice
        # (RSS spikes of ~1.7 MB at each write in the 64-rank soak).
        tails = held.tails
        for sid, item in held.items.items():
            more = new.pop(sid, None)
            if isinstance(item, StagedBlock):
                parts = tails.get((item.keys, item.rank, item.incarnation), [])
                if isinstance(more, StagedBlock):
                    values = np.concatenate((item.values, *parts, more.values), axis=1)
                    item = StagedBlock(
                        item.keys, item.rank, item.incarnation, more.seq, item.ts, item.steps + more.steps, values
                    )
                elif parts:
                    values = np.concatenate((item.values, *parts), axis=1)
                    item = StagedBlock(item.keys, item.rank, item.incarnation, item.seq, item.ts, item.steps, values)
            elif isinstance(item, ChunkRow) and isinstance(more, ChunkRow):
                steps, vals = item.steps + more.steps, item.values + more.values
                item = ChunkRow(item.key, item.rank, item.incarnation, more.seq, item.ts, steps, vals)
            out.append(item)
        out += new.values()
        return out

    def rows_with(self, pieces: Pieces) -> list[ChunkRow]:
        """The chunk rows of everything held plus ``pieces``, one per (key, rank, incarnation).

        Leaves the hold as it is (a failed commit is retried with the same rows): a held chunk
        that ``pieces`` extend is copied.
        """
        out = {(c.key, c.rank, c.incarnation): c for c in self.chunks.rows()}
        for p in pieces.rows():
            k = (p.key, p.rank, p.incarnation)
            held = out.get(k)
            if held is None:
                out[k] = p
            else:
                out[k] = ChunkRow(
                    p.key, p.rank, p.incarnation, p.seq, held.ts, held.steps + p.steps, held.values + p.values
                )
        return list(out.values())

    def clear(self) -> None:
        """Forget everything held (its chunks were committed)."""
        self.chunks.clear()
