"""The aggregator's group commit window: how long what was read may wait for its commit (and its replies).

One commit, and one round of replies, covers everything read within a window. Most of a paced
round's cost is per round, not per point (waking up, the transaction, the acks: see
docs/performance.md), so a light load gets a long window and a busy one a shorter one:

* a reply other than an ACK is due (a query, ``sync()``, ``wait()``'s STATE, a HELLO, a BYE, a
  rank's PING): 10 ms. A rank that waits for its acks (``wait()``, a full buffer) sends a PING
  behind its batch for this (:class:`~coordinator.transport.urgency.Hurry`);
* only ACKs are due and the window has read under 256 KiB: 100 ms. Four ranks logging 100 metrics
  at 50 steps/s read about 40 KB in it: one commit covers two flushes of every rank.
  A batch read 75 ms or more into it closes it at once: the ranks flush together on a 50 ms
  grid, so the second flush after a commit arrives a moment before its 100 ms run out, and the
  commit rides on the wake-up that reads it instead of waking the loop again a moment later
  (with a longer interval, a large job's, every window is past this when the next flush arrives:
  the round that reads it commits at once, and what comes in after it waits for the next window);
* more: 50 ms, the flush interval. At a million points a second the window reaches 256 KiB in a
  few milliseconds, so the acks' latency there (goal 5: 1024 senders, ack p99) does not move.

The ranks' batches of one flush arrive over a few milliseconds (each sender wakes on its own, the
machine busy with training), so the batch that closes a light window is often the first of its
flush. At the 50 ms grid the rest of that flush rides on the next window's commit. With a flush
interval past the 100 ms window (``flush_interval_s=0.5``, a large job's) it would be committed on
its own, a wake-up 100 ms after the flush on a CPU the training processes had; so a light window
that ran out before a batch came waits for the rest of that batch's flush
(:meth:`CommitWindow.read_from`): for the senders whose batches the last such commit took, up to
:data:`STRAGGLE_S`, and commits on the round that reads the last of them (docs/performance.md,
round 34). A sender that stopped flushing costs one wait: that commit takes the senders it read as
the next flush's.

A rank's batch unacknowledged after its ack deadline is written ahead to its spool
(:func:`~coordinator.transport.pipeline.ack_deadline`, 200 ms or the flush interval if longer),
well past the longest window.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

__all__ = [
    "BUSY_WINDOW_S",
    "LIGHT_BYTES",
    "LIGHT_EARLY_S",
    "LIGHT_WINDOW_S",
    "STRAGGLE_S",
    "URGENT_WINDOW_S",
    "CommitWindow",
]

URGENT_WINDOW_S = 0.01
"""Window while a reply other than an ACK is due."""
LIGHT_WINDOW_S = 0.1
"""Window while only ACKs are due and less than :data:`LIGHT_BYTES` was read."""
LIGHT_EARLY_S = 0.075
"""From this long into a light window, a round that read a batch closes it (three halves of the
ranks' 50 ms flush interval: the flush after next closes it, the next one does not)."""
BUSY_WINDOW_S = 0.05
"""Window while only ACKs are due and :data:`LIGHT_BYTES` or more was read."""
LIGHT_BYTES = 256 * 1024
"""Bytes read in a window below which it is light."""
STRAGGLE_S = 0.01
"""Longest a light window that ran out waits, from the first batch of a flush, for the other batches
of that flush (on the development VM they arrive within 1-5 ms of the first)."""


class CommitWindow:
    """The window now open: its start (the last commit), what it has read, whether a non-ACK reply is due."""

    __slots__ = ("_closing", "_expected", "_flush", "_round", "bytes", "opened", "urgent")

    def __init__(self) -> None:
        self.opened = 0.0
        """Monotonic time of the last commit: the window runs from it."""
        self.bytes = 0
        """Batch bytes read since then."""
        self.urgent = False
        """A reply other than an ACK is due."""
        self._round: set[Hashable] = set()
        """Senders whose batches were read since the last :meth:`open_at`."""
        self._closing: float | None = None
        """When a batch would have closed this light window: it waits for the rest of that flush."""
        self._flush: set[Hashable] = set()
        """Senders read since :attr:`_closing`: the flush the commit waits for, so far."""
        self._expected: frozenset[Hashable] = frozenset()
        """Senders whose batches the last commit that waited for a flush took: whom the next one waits for."""

    @property
    def light(self) -> bool:
        """Only ACKs are due and less than :data:`LIGHT_BYTES` was read: the long window."""
        return not self.urgent and self.bytes < LIGHT_BYTES

    @property
    def length(self) -> float:
        """How long this window stays open, from :attr:`opened`."""
        if self.urgent:
            return URGENT_WINDOW_S
        return LIGHT_WINDOW_S if self.bytes < LIGHT_BYTES else BUSY_WINDOW_S

    def read_from(self, sender: Hashable) -> None:
        """A batch of ``sender`` (its rank and incarnation) was read in this round."""
        self._round.add(sender)

    def open_at(self, now: float, *, read: bool = False) -> bool:
        """The window is still open at monotonic time ``now``: what was read may wait.

        ``read``: this round read a batch. A light window then closes from :data:`LIGHT_EARLY_S`
        on (and past its length), so its commit takes the wake-up that read the batch rather than
        one of its own; it first waits up to :data:`STRAGGLE_S` for the rest of that batch's flush.
        """
        got, self._round = self._round, set()
        light = self.light
        if self._closing is None:
            age = now - self.opened
            if age < self.length and not (read and light and age >= LIGHT_EARLY_S):
                return True
            # Its end (a timeout), an urgent or busy window, or the ranks' flush after next on the 50 ms
            # grid (the rest of that flush rides on the next window): commit now. A light window that
            # ran out before a batch came (the ranks flush less often) waits for the rest of the flush.
            if not (read and light and age >= self.length):
                return False
            self._closing = now
        self._flush |= got
        if not light or self._expected <= self._flush:  # someone waits now, or the whole flush is in
            return False
        return now < self._closing + STRAGGLE_S

    def timeout_ms(self, now: float) -> int:
        """Milliseconds from ``now`` to the window's end (0 once it ended), rounded up."""
        end = self._closing + STRAGGLE_S if self._closing is not None and self.light else self.opened + self.length
        return max(0, math.ceil((end - now) * 1000))

    def committed(self, now: float) -> None:
        """A commit at monotonic ``now`` closed the window; the next opens."""
        if self._closing is not None:
            self._expected = frozenset(self._flush)
        self._closing = None
        self._flush = set()
        self._round = set()
        self.opened = now
        self.bytes = 0
