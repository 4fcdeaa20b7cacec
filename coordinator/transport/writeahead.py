"""The spool as a write-ahead log: every batch not acknowledged in time goes to disk, in order.

The pipeline (:mod:`.pipeline`) decides when: a batch the aggregator acknowledges within the
deadline never touches the disk; one that cannot be sent, or is still unacknowledged past the
deadline, is written with every unacknowledged batch numbered before it, so the spool's records
stay in sequence order. :attr:`WriteAhead.through` remembers how far that goes.

A failed write (disk full, I/O error) is reported once per pause and keeps the batch in memory;
writes then pause for a second, so a broken disk is not hammered on every flush.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from coordinator.errors import SinkError
from coordinator.transport import wire
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.spool import SegmentedSpool

__all__ = ["WriteAhead"]

_log = logging.getLogger(__name__)
_PAUSE_AFTER_FAILURE_S = 1.0


class WriteAhead:
    """Writes numbered batches to the rank's spool (sender thread), and how far in sequence it got."""

    def __init__(self, spool: SegmentedSpool, *, rank: int, buf: Buffer) -> None:
        """Args:
        spool: the rank's spool.
        rank: this rank (for messages).
        buf: where a failed write is reported.
        """
        self.spool = spool
        self._rank = rank
        self._buf = buf
        self._retry_at = 0.0
        self.through = 0
        """Every batch numbered up to this one that is not acknowledged is on disk (the pipeline's mark)."""
        self.writes = 0
        """Batches written (a measure of the spool work, for tests and benchmarks)."""

    def paused(self, now: float) -> bool:
        """True for a while after a failed write: batches then stay in memory only."""
        return now < self._retry_at

    def write(self, b: OutBatch, now: float) -> None:
        """Append ``b`` to the spool and set ``b.loc``; on failure ``b.loc`` stays None (reported)."""
        if self.paused(now):
            return
        try:
            b.loc = self.spool.append(wire.BATCH, b.seq, b.envelope, b.payload or b"")
            self.writes += 1
        except SinkError as e:
            # Keep the batch in memory: nothing is lost, but the user must hear about the disk.
            self._retry_at = now + _PAUSE_AFTER_FAILURE_S
            self._buf.fail(SinkError(f"rank {self._rank}: {e}; batches stay in memory until it is fixed"))
            _log.error("rank %d: %s", self._rank, e)

    def write_through(self, batches: Iterable[OutBatch], seq: int, now: float) -> bool:
        """Write those of ``batches`` numbered above :attr:`through` and up to ``seq`` that are not on disk yet.

        Args:
            batches: unacknowledged batches in sequence order (the window's, then the one to hold).
            seq: the last number to write.
            now: monotonic time (for the pause after a failure).

        Returns:
            False when a write failed or writes are paused: the rest is tried at the next call.
        """
        for b in batches:
            if b.seq > seq:
                break
            if b.seq <= self.through:
                continue
            if b.loc is None:
                self.write(b, now)
                if b.loc is None:
                    return False
            self.through = b.seq
        return True
