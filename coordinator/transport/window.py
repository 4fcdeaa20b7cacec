"""The in-flight window: batch numbering, batches sent and not yet acknowledged, and acks.

Batches are numbered in the order they will reach the aggregator, which stores each number once
and asks for a resend from the first gap. The window is bounded in batches and in points, so a
rank holds at most ``max_buffer_points`` buffered plus as many in flight in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from coordinator.transport.batches import OutBatch

__all__ = ["Window"]


class Window:
    """Numbers batches and keeps those in flight, oldest first, until they are acknowledged."""

    def __init__(self, *, max_batches: int, max_points: int, envelope: Callable[[int], bytes]) -> None:
        """Args:
        max_batches: batches in flight at most.
        max_points: points in flight at most (one batch of any size may always go).
        envelope: the BATCH envelope of a sequence number.
        """
        self._max_batches = max_batches
        self._max_points = max_points
        self._envelope = envelope
        self.last_seq = 0
        """The last sequence number given."""
        self.batches: OrderedDict[int, OutBatch] = OrderedDict()
        """Sent, not yet acknowledged, by sequence number (payload in memory)."""
        self.points = 0

    def __len__(self) -> int:
        return len(self.batches)

    def number(self, b: OutBatch) -> None:
        """Give ``b`` the next sequence number and its envelope.

        Without a spool this happens only when it is sent, so batches dropped under
        ``drop_oldest`` leave no gap for the aggregator to wait on.
        """
        self.last_seq += 1
        b.seq = self.last_seq
        b.envelope = self._envelope(b.seq)

    def unnumber(self, b: OutBatch) -> None:
        """Take back the number just given to ``b`` (it could not be sent)."""
        assert b.seq == self.last_seq, "only the last number given can be taken back"
        self.last_seq -= 1
        b.seq = 0
        b.envelope = b""

    def room(self, extra: int) -> bool:
        """Whether ``extra`` more points may go in flight."""
        return len(self.batches) < self._max_batches and (not self.batches or self.points + extra <= self._max_points)

    def add(self, b: OutBatch, now: float) -> None:
        """Record ``b`` as sent at ``now``."""
        b.sent_at = now
        self.batches[b.seq] = b
        self.points += b.points

    def pop(self, seq: int) -> OutBatch | None:
        """Remove batch ``seq`` (acknowledged or rejected); None if it is not in flight."""
        b = self.batches.pop(seq, None)
        if b is not None:
            self.points -= b.points
        return b

    def seqs_below(self, seq: int) -> list[int]:
        """Numbers in flight below ``seq`` (the aggregator has them already)."""
        return [s for s in self.batches if s < seq]

    def to_resend(self, from_seq: int, sent_before: float) -> list[OutBatch]:
        """The batches in flight numbered ``from_seq`` or later and last sent before ``sent_before``."""
        return [
            b for b in self.batches.values() if b.seq >= from_seq and b.sent_at <= sent_before and b.payload is not None
        ]

    def oldest(self) -> OutBatch | None:
        """The batch longest in flight."""
        return next(iter(self.batches.values())) if self.batches else None

    def acked_gen(self, queued: OutBatch | None, cut_gen: int) -> int:
        """The last buffer generation acknowledged in full.

        Args:
            queued: the oldest batch cut but not yet sent, if any.
            cut_gen: the last generation cut (fully acknowledged when nothing is outstanding).
        """
        oldest = self.oldest() or queued
        return cut_gen if oldest is None else oldest.gen - 1

    def first_unacked(self, queued: OutBatch | None) -> int:
        """The lowest sequence number not yet acknowledged (``queued``: as in :meth:`acked_gen`)."""
        if self.batches:
            return next(iter(self.batches))
        if queued is not None:
            return queued.seq
        return self.last_seq + 1
