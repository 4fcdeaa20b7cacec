"""A rank's batches from cut to ack: cut, sent while the window has room, else held; spooled when late.

The sender thread drives it (flush every interval, pump, acks and resends from the replies) and
gives it the socket through ``send``. Offline, every batch goes to the spool instead.

The spool is for backpressure and crashes, not for what the aggregator (a separate process)
acknowledges in time: a batch sent to a welcomed aggregator is written ahead only once it is
still unacknowledged ``defer_s`` after it was sent, or at once when it cannot be sent (not
welcomed, window full, batches held), when it must be sent again, and on close. It is written
with every unacknowledged batch numbered before it (:meth:`WriteAhead.write_through`), so the
spool stays in sequence order. At a steady load every ack arrives in time and the spool is never
written nor truncated; an ack of a batch never written costs no spool work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain

from coordinator.errors import DeliveryError
from coordinator.settings import Backpressure
from coordinator.transport.batches import Cutter, OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from coordinator.transport.offline import OfflineSpooler
from coordinator.transport.outbox import Outbox
from coordinator.transport.window import Window
from coordinator.transport.writeahead import WriteAhead

__all__ = ["ACK_DEADLINE_MIN_S", "Pipeline", "ack_deadline"]

_log = logging.getLogger(__name__)

ACK_DEADLINE_MIN_S = 0.2
"""When acks arrive: at a light load the aggregator commits, then acks, every 100 ms
(:mod:`~coordinator.aggregator.commitwindow`), so an ack reaches the sender up to some 110 ms
after the send; a paced sender reads it when it next wakes to flush: at the default 50 ms flush
the second or the third flush after the send (100 or 150 ms)."""


def ack_deadline(flush_interval_s: float) -> float:
    """How long a batch in flight may stay unacknowledged before it is written ahead.

    The sender checks after reading the acks of each wake-up, so the deadline is past the wake-up
    by which an ack has arrived: at the default 50 ms flush the fourth after the send (200 ms), with
    a flush interval of 200 ms or more the first.
    """
    return max(flush_interval_s, ACK_DEADLINE_MIN_S)


def _no_pause() -> None:
    """The default ``pause``: nothing to yield to."""


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
        copies: Copies | None = None,
        rank: int,
        send: Callable[[Sequence[bytes | memoryview], float], bool],
        pause: Callable[[], None] | None = None,
        defer_s: float = 0.0,
    ) -> None:
        """Args:
        buf: the run's buffer (cut from, and told of acknowledged progress).
        cutter, window, outbox: the stages a batch passes through.
        wal: the write-ahead spool, if the rank has one.
        offline: the offline spooler of a rank without an aggregator.
        copies: the copies of the uncut generation between flushes (:mod:`.copies`; needs ``wal``):
            every cut is then written ahead before it is sent.
        policy: the backpressure policy.
        rank: this rank (for messages).
        send: puts a batch's frames on the wire at a monotonic time; False when the send queue
            is full (the batch is then tried again later).
        pause: called before each batch's send (the sender's GIL slicer), not after the last one
            (the sender's wait then releases the GIL anyway); None: never pause.
        defer_s: a batch in flight is written ahead once unacknowledged this long after its send
            (0: at the first :meth:`pump` after it).
        """
        self._buf = buf
        self._cutter = cutter
        self._window = window
        self._outbox = outbox
        self._wal = wal
        self.offline = offline
        self.copies = copies
        self._policy = policy
        self._rank = rank
        self._send = send
        self._pause = pause if pause is not None else _no_pause
        self._defer_s = defer_s
        self._welcomed = False
        self.cut_batches = 0
        self.replayed_batches = 0
        self.resent_batches = 0
        self.rejected_points = 0
        self._resend_next: int | None = None
        """A resend the full send queue cut short goes on from this batch number."""
        self._resend_before = 0.0

    @property
    def welcomed(self) -> bool:
        """The aggregator accepted this sender's HELLO: batches may go out."""
        return self._welcomed

    @welcomed.setter
    def welcomed(self, value: bool) -> None:
        # A new HELLO (a reconnect, a restarted aggregator): what is in flight may be lost there.
        self._welcomed = value
        if not value:
            self._write_window(self._window.last_seq, time.monotonic())

    @property
    def idle(self) -> bool:
        """True when the last flush found no metric points."""
        return self._cutter.idle

    @property
    def held(self) -> bool:
        """True when batches wait for room in the window (backpressure) or for the first WELCOME."""
        return bool(self._outbox)

    @property
    def settled(self) -> bool:
        """Welcomed, and nothing in flight, held or being resent: no timer of the pipeline runs."""
        return self._welcomed and not self._window and not self._outbox and self._resend_next is None

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet acknowledged."""
        return len(self._window)

    @property
    def last_seq(self) -> int:
        """Number of the newest batch numbered (0: none yet)."""
        return self._window.last_seq

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
        if self.copies is None:
            batches = self._cutter.cut(self._buf)
        else:
            cut_at = self.copies.now()
            try:
                batches = self._cutter.cut(self._buf)
                if batches:
                    self._write_cut(batches, now)
            finally:  # the next generation's copies wait for this (a failure: the run fails loudly)
                self.copies.cut_done(self._cutter.cut_gen, cut_at)
        self._buf.recount(sum(b.points for b in batches))
        if not batches:
            if not self._window and not self._outbox:
                self._buf.progress(self._cutter.cut_gen, 0)
            return
        for b in batches:
            self._pause()  # after the cut's encoding and between two batches, not after the last: see pump
            if self._wal is not None and not b.seq:
                self._window.number(b)  # it may be written ahead: numbered before it can be
            self.cut_batches += 1
            self._store(b, now)
        if self._policy == "drop_oldest":
            self._outbox.drop_oldest()
            self._buf.progress(self._acked_gen(), 0)

    @property
    def timer_fd(self) -> int | None:
        """The copies' timer, for the sender's wait: it fires when the training thread copied nothing for a while."""
        return self.copies.timer.fd if self.copies is not None else None

    def copy(self) -> bool:
        """A wake-up without a flush: the copies' timer may have fired (:meth:`Copies.backstop`); False: cut instead."""
        return self.copies is None or self.copies.backstop()

    def _write_cut(self, batches: list[OutBatch], now: float) -> None:
        """With copies: number a cut's batches, say so in its copy file, write them ahead; then the copy goes.

        A kill before the batches are on disk leaves the copy file, with their numbers: recovery
        then finds whether the spool holds them. Written in number order: those in flight, those
        held (one whose write failed is tried again first), then the cut's.
        """
        assert self.copies is not None and self._wal is not None
        for b in batches:
            self._window.number(b)
        self.copies.cut(self._cutter.cut_gen, batches[0].seq, batches[-1].seq)
        if self._wal.write_through(self._unacked(batches), batches[-1].seq, now):
            self.copies.spooled(self._wal.through)

    def _unacked(self, new: Iterable[OutBatch]) -> Iterator[OutBatch]:
        """Every unacknowledged batch in number order, ``new`` (numbered last) at the end: for a write-ahead."""
        return chain(self._window.batches.values(), self._outbox, new)

    def _may_cut(self, now: float) -> bool:
        """Whether taking the buffer now keeps memory and disk within their bounds."""
        if self.offline is not None:
            return True
        if self.welcomed and self._window.room(self._buf.pending) and not self._outbox:
            return True  # straight to the wire
        return self._outbox.may_cut(now)

    def _store(self, b: OutBatch, now: float) -> None:
        """Send ``b``, or write it ahead (when there is a spool) and hold it."""
        if self.offline is not None:
            self.offline.store(b, now)
            return
        if self._outbox or not self._window.room(b.points) or not self.welcomed or not self._send_batch(b, now):
            if self._wal is not None:  # it waits on disk, behind every unacknowledged batch before it
                self._wal.write_through(self._unacked((b,)), b.seq, now)
            self._outbox.hold(b)

    def _send_batch(self, b: OutBatch, now: float) -> bool:
        """Send ``b`` and put it in flight; False (``b`` unchanged) when the send queue is full."""
        numbered = not b.seq
        if numbered:
            self._window.number(b)
        replayed = b.payload is None
        if replayed:
            assert self._wal is not None and b.loc is not None
            b.payload = self._wal.spool.read_payload(b.loc, b.seq)
        assert b.payload is not None
        if not self._send([b.envelope, b.payload], now):
            if numbered:  # unnumber it: a batch dropped while waiting must leave no gap
                self._window.unnumber(b)
            if replayed:
                b.payload = None  # it waits on disk, not in memory
            return False
        if replayed:
            self.replayed_batches += 1
        self._window.add(b, now)
        _log.debug("rank %d: BATCH %d (%d points)", self._rank, b.seq, b.points)
        return True

    def pump(self, now: float) -> None:
        """Write ahead what is unacknowledged past the deadline, finish a resend cut short, then send held batches."""
        if self._wal is not None and self._window:
            self._write_overdue(now)
        if self._resend_next is not None:
            self.resend_from(self._resend_next, now, sent_before=self._resend_before)
            if self._resend_next is not None:
                return  # the send queue is still full
        while self.welcomed:
            b = self._outbox.head()
            if b is None or not self._window.room(b.points):
                return
            # Before each batch, not after: the sender's wait after the last one releases the GIL
            # anyway, and a pause there costs a yield (~20 µs of CPU) every flush for nothing.
            self._pause()
            if not self._send_batch(b, now):
                return
            self._outbox.pop()

    def _write_overdue(self, now: float) -> None:
        """Write ahead the batches in flight still unacknowledged ``defer_s`` after their send."""
        assert self._wal is not None
        through = self._wal.through
        for b in reversed(self._window.batches.values()):  # newest first: usually none, or all written
            if b.seq <= through:
                return
            if now - b.sent_at >= self._defer_s:
                self._write_window(b.seq, now)
                return

    def _write_window(self, seq: int, now: float) -> None:
        """Write ahead every unacknowledged batch numbered up to ``seq`` not on disk yet (in order; held ones too)."""
        if self._wal is not None:
            self._wal.write_through(self._unacked(()), seq, now)

    def write_unacked(self) -> None:
        """Write ahead everything in flight (the run closes: what is not acknowledged stays on disk).

        The copy files go then, but the uncut generation's while points stay in the buffer (the
        last cut was refused: backpressure): it is all that holds them.
        """
        self._write_window(self._window.last_seq, time.monotonic())
        if self.copies is not None and self._wal is not None:
            self.copies.spooled(self._wal.through)
            self.copies.close(keep_uncut=self._buf.pending > 0)

    def _acked_gen(self) -> int:
        return self._window.acked_gen(self._outbox.head(), self._cutter.cut_gen)

    def ack(self, seq: int) -> None:
        """Batch ``seq`` is durable at the aggregator (a repeated ack is ignored)."""
        b = self._window.pop(seq)
        if b is None:
            return  # an ack for a resend that was already acknowledged
        self._buf.progress(self._acked_gen(), b.points)
        if self._wal is not None and self._wal.spool.size_bytes:  # nothing on disk (the usual case): no spool work
            self._wal.spool.acked_through(self._window.first_unacked(self._outbox.head()) - 1)
        _log.debug("rank %d: ACK %d", self._rank, seq)

    def ack_below(self, seq: int) -> None:
        """Every batch in flight numbered below ``seq`` is durable."""
        for s in self._window.seqs_below(seq):
            self.ack(s)

    def ack_through(self, mark: int) -> None:
        """Every batch in flight numbered up to ``mark`` is durable (an ACK's mark; usually none is left)."""
        oldest = self._window.oldest()
        if oldest is not None and oldest.seq <= mark:
            self.ack_below(mark + 1)

    def resend_from(self, seq: int, now: float, *, sent_before: float | None = None) -> None:
        """Send again every batch in flight numbered ``seq`` or later (and last sent before ``sent_before``).

        When the send queue fills up, the rest follows from :meth:`pump`.
        """
        before = now if sent_before is None else sent_before
        self._resend_next = None
        resend = self._window.to_resend(seq, before)
        if resend:  # lost once on the way: on disk before they go again (the deadline counts from the first send)
            self._write_window(resend[-1].seq, now)
        for b in resend:
            assert b.payload is not None
            if not self._send([b.envelope, b.payload], now):
                self._resend_next, self._resend_before = b.seq, before
                return
            b.sent_at = now
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
