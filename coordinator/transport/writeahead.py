"""The spool as a write-ahead log: every batch goes to disk before it is sent.

A failed write (disk full, I/O error) is reported once per pause and keeps the batch in memory;
writes then pause for a second, so a broken disk is not hammered on every flush.
"""

from __future__ import annotations

import logging

from coordinator.errors import SinkError
from coordinator.transport import wire
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.spool import SegmentedSpool

__all__ = ["WriteAhead"]

_log = logging.getLogger(__name__)
_PAUSE_AFTER_FAILURE_S = 1.0


class WriteAhead:
    """Writes numbered batches to the rank's spool (sender thread)."""

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

    def paused(self, now: float) -> bool:
        """True for a while after a failed write: batches then stay in memory only."""
        return now < self._retry_at

    def write(self, b: OutBatch, now: float) -> None:
        """Append ``b`` to the spool and set ``b.loc``; on failure ``b.loc`` stays None (reported)."""
        if self.paused(now):
            return
        try:
            b.loc = self.spool.append(wire.BATCH, b.seq, b.envelope, b.payload or b"")
        except SinkError as e:
            # Keep the batch in memory: nothing is lost, but the user must hear about the disk.
            self._retry_at = now + _PAUSE_AFTER_FAILURE_S
            self._buf.fail(SinkError(f"rank {self._rank}: {e}; batches stay in memory until it is fixed"))
            _log.error("rank %d: %s", self._rank, e)
