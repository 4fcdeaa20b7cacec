"""A rank's batches from cut to ack: cut, written ahead, sent while the window has room, else held.

The sender thread drives it (flush every interval, pump, acks and resends from the replies) and
gives it the socket through ``send``. Offline, every batch goes to the spool instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator.errors import DeliveryError
from coordinator.settings import Backpressure
from coordinator.transport.batches import Cutter, OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.offline import OfflineSpooler
from coordinator.transport.outbox import Outbox
from coordinator.transport.window import Window
from coordinator.transport.writeahead import WriteAhead

__all__ = ["Pipeline"]

_log = logging.getLogger(__name__)


class Pipeline:
    """Routes each cut batch: to the wire, to the outbox (per backpressure policy), or offline to the spool."""

    def __init__(
        self,
        *,
        buf: Buffer,
        cutter: Cutter,
        window: Window,
        outbox: Outbox,
        wal: WriteAhead | None,
        offline: OfflineSpooler | None,
        policy: Backpressure,
        rank: int,
        send: Callable[[list[bytes], float], None],
    ) -> None:
        """Args:
        buf: the run's buffer (cut from, and told of acknowledged progress).
        cutter, window, outbox: the stages a batch passes through.
        wal: the write-ahead spool, if the rank has one.
        offline: the offline spooler of a rank without an aggregator.
        policy: the backpressure policy.
        rank: this rank (for messages).
        send: puts a batch's frames on the wire at a monotonic time.
        """
        self._buf = buf
        self._cutter = cutter
        self._window = window
        self._outbox = outbox
        self._wal = wal
        self.offline = offline
        self._policy = policy
        self._rank = rank
        self._send = send
        self.welcomed = False
        """The aggregator accepted this sender's HELLO: batches may go out."""
        self.cut_batches = 0
        self.replayed_batches = 0
        self.resent_batches = 0
        self.rejected_points = 0

    @property
    def idle(self) -> bool:
        """True when the last flush found no metric points."""
        return self._cutter.idle

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet acknowledged."""
        return len(self._window)

    def counters(self) -> dict[str, int]:
        """Delivery counters (sent with the rank's BYE, shown in the run's report)."""
        lost = self.rejected_points + (self.offline.lost_points if self.offline is not None else 0)
        return {
            "cut_batches": self.cut_batches,
            "spooled_batches": self._outbox.spooled,
            "replayed_batches": self.replayed_batches,
            "resent_batches": self.resent_batches,
            "lost_points": lost,
        }

    def flush(self, now: float) -> None:
        """Cut the buffer, when bounds allow, and send, hold or spool its batches."""
        if not self._may_cut(now):
            return
        batches = self._cutter.cut(self._buf)
        if not batches:
            if not self._window and not self._outbox:
                self._buf.progress(self._cutter.cut_gen, 0)
            return
        for b in batches:
            if self._wal is not None:
                self._window.number(b)  # the spool is write-ahead: numbered before it is written
            self.cut_batches += 1
            self._store(b, now)
        if self._policy == "drop_oldest":
            self._outbox.drop_oldest()
            self._buf.progress(self._acked_gen(), 0)

    def _may_cut(self, now: float) -> bool:
        """Whether taking the buffer now keeps memory and disk within their bounds."""
        if self.offline is not None:
            return True
        if self.welcomed and self._window.room(self._buf.pending) and not self._outbox:
            return True  # straight to the wire
        return self._outbox.may_cut(now)

    def _store(self, b: OutBatch, now: float) -> None:
        """Write-ahead to the spool (when there is one), then send or hold."""
        if self.offline is not None:
            self.offline.store(b, now)
            return
        if self._wal is not None:
            self._wal.write(b, now)
        if self._outbox or not self._window.room(b.points) or not self.welcomed:
            self._outbox.hold(b)
        else:
            self._send_batch(b, now)

    def _send_batch(self, b: OutBatch, now: float) -> None:
        if not b.seq:
            self._window.number(b)
        if b.payload is None:
            assert self._wal is not None and b.loc is not None
            b.payload = self._wal.spool.read(b.loc).payload
            self.replayed_batches += 1
        self._send([b.envelope, b.payload], now)
        self._window.add(b, now)
        _log.debug("rank %d: BATCH %d (%d points)", self._rank, b.seq, b.points)

    def pump(self, now: float) -> None:
        """Move batches from the outbox into the window while it has room."""
        while self.welcomed:
            b = self._outbox.head()
            if b is None or not self._window.room(b.points):
                return
            self._send_batch(self._outbox.pop(), now)

    def _acked_gen(self) -> int:
        return self._window.acked_gen(self._outbox.head(), self._cutter.cut_gen)

    def ack(self, seq: int) -> None:
        """Batch ``seq`` is durable at the aggregator (a repeated ack is ignored)."""
        b = self._window.pop(seq)
        if b is None:
            return  # an ack for a resend that was already acknowledged
        self._buf.progress(self._acked_gen(), b.points)
        if self._wal is not None:
            self._wal.spool.acked_through(self._window.first_unacked(self._outbox.head()) - 1)
        _log.debug("rank %d: ACK %d", self._rank, seq)

    def ack_below(self, seq: int) -> None:
        """Every batch in flight numbered below ``seq`` is durable."""
        for s in self._window.seqs_below(seq):
            self.ack(s)

    def resend_from(self, seq: int, now: float) -> None:
        """Send again every batch in flight numbered ``seq`` or later."""
        for frames in self._window.resend(seq, now):
            self._send(frames, now)
            self.resent_batches += 1

    def overdue(self, now: float, timeout_s: float) -> bool:
        """True when the batch longest in flight was sent more than ``timeout_s`` ago."""
        oldest = self._window.oldest()
        return oldest is not None and now - oldest.sent_at > timeout_s

    def is_in_flight(self, seq: int) -> bool:
        """Whether batch ``seq`` was sent and is not yet acknowledged."""
        return seq in self._window.batches

    def reject(self, seq: int, msg: str) -> None:
        """The aggregator refused batch ``seq`` (in flight): its points are lost, and reported."""
        b = self._window.pop(seq)
        assert b is not None
        lost = DeliveryError(f"the aggregator rejected batch {seq} ({b.points} points): {msg}", lost_points=b.points)
        _log.error("%s", lost)
        self.rejected_points += b.points
        self._buf.fail(lost, lost_points=b.points)
        self._buf.progress(self._acked_gen(), 0)
