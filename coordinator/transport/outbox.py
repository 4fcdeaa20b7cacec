"""Backpressure: where cut batches wait while the window is full, per policy (spool, block, drop_oldest).

* ``spool``: batches are cut and wait on disk (the write-ahead spool); the buffer blocks only once
  the spool is full. While the spool cannot be written, they wait in memory, bounded. While
  batches wait, only full batches (``min_cut_points``) are cut, so the waiting list (a few bytes
  per batch in memory) stays bounded by the spool's size however long the aggregator is away.
* ``block``: nothing is cut until the window has room; the data waits in the buffer and
  ``log()`` blocks once that is full.
* ``drop_oldest``: batches are always cut; the oldest waiting ones are dropped past the bound,
  and every dropped point is counted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

from coordinator.settings import Backpressure
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.writeahead import WriteAhead

__all__ = ["Outbox"]

_log = logging.getLogger(__name__)


class Outbox:
    """Cut batches waiting for a send slot, oldest first (sender thread)."""

    def __init__(
        self,
        *,
        policy: Backpressure,
        wal: WriteAhead | None,
        max_points: int,
        rank: int,
        buf: Buffer,
        min_cut_points: int = 1,
    ) -> None:
        """Args:
        policy: the backpressure policy.
        wal: the rank's write-ahead spool, if it has one.
        max_points: points that may wait in memory (block: none wait; drop_oldest: then drop).
        rank: this rank (for messages).
        buf: where dropped points are counted.
        min_cut_points: while batches wait on disk, the buffer is cut only once it holds this
            many points (or a flush was asked for); at most the buffer's bound.
        """
        self._policy = policy
        self._wal = wal
        self._max_points = max_points
        self._rank = rank
        self._buf = buf
        self._queue: deque[OutBatch] = deque()
        self.points = 0
        """Points waiting (in memory or on disk only)."""
        self.spooled = 0
        """Batches that waited on disk only."""
        self._warned_full = False
        self._min_cut = max(1, min(min_cut_points, buf.max_points))

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[OutBatch]:
        """The waiting batches, oldest first."""
        return iter(self._queue)

    def head(self) -> OutBatch | None:
        """The oldest waiting batch."""
        return self._queue[0] if self._queue else None

    def may_cut(self, now: float) -> bool:
        """Whether a batch that cannot be sent now may be cut, keeping memory and disk within bounds."""
        if self._policy == "drop_oldest":
            return True
        if self._policy == "block" or self._wal is None:
            return False  # the data waits in the buffer; log() blocks once it is full
        if self._wal.paused(now):  # the spool just failed: hold batches in memory, bounded
            return self.points < self._max_points
        spool = self._wal.spool
        if spool.full():
            if not self._warned_full:
                self._warned_full = True
                _log.warning(
                    "rank %d: spool %s is full (%d bytes); log() will block when the buffer fills",
                    self._rank,
                    spool.dir,
                    spool.size_bytes,
                )
            return False
        b = self._buf
        return not self._queue or b.pending >= self._min_cut or b.flush_requested

    def hold(self, b: OutBatch) -> None:
        """Queue ``b`` behind the others; one written ahead waits on disk only."""
        if b.loc is not None:
            b.payload = None  # on disk: do not hold it in memory too
            self.spooled += 1
        self._queue.append(b)
        self.points += b.points

    def pop(self) -> OutBatch:
        """Take the oldest waiting batch (there must be one)."""
        b = self._queue.popleft()
        self.points -= b.points
        return b

    def drop_oldest(self) -> None:
        """Policy drop_oldest: drop the oldest waiting batches past the bound (counted in the buffer)."""
        while self.points > self._max_points and self._queue:
            b = self.pop()
            self._buf.dropped(b.points)
            _log.warning(
                "rank %d: dropped batch %d (%d points) under backpressure policy drop_oldest",
                self._rank,
                b.seq,
                b.points,
            )
