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

A rank's batch unacknowledged after its ack deadline is written ahead to its spool
(:func:`~coordinator.transport.pipeline.ack_deadline`, 200 ms or the flush interval if longer),
well past the longest window.
"""

from __future__ import annotations

import math

__all__ = ["BUSY_WINDOW_S", "LIGHT_BYTES", "LIGHT_EARLY_S", "LIGHT_WINDOW_S", "URGENT_WINDOW_S", "CommitWindow"]

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


class CommitWindow:
    """The window now open: its start (the last commit), what it has read, whether a non-ACK reply is due."""

    __slots__ = ("bytes", "opened", "urgent")

    def __init__(self) -> None:
        self.opened = 0.0
        """Monotonic time of the last commit: the window runs from it."""
        self.bytes = 0
        """Batch bytes read since then."""
        self.urgent = False
        """A reply other than an ACK is due."""

    @property
    def length(self) -> float:
        """How long this window stays open, from :attr:`opened`."""
        if self.urgent:
            return URGENT_WINDOW_S
        return LIGHT_WINDOW_S if self.bytes < LIGHT_BYTES else BUSY_WINDOW_S

    def open_at(self, now: float, *, read: bool = False) -> bool:
        """The window is still open at monotonic time ``now``: what was read may wait.

        ``read``: this round read a batch. A light window then closes from :data:`LIGHT_EARLY_S`
        on, so its commit takes the wake-up that read the batch rather than one of its own.
        """
        age = now - self.opened
        if read and age >= LIGHT_EARLY_S and not self.urgent and self.bytes < LIGHT_BYTES:
            return False
        return age < self.length

    def timeout_ms(self, now: float) -> int:
        """Milliseconds from ``now`` to the window's end (0 once it ended), rounded up."""
        return max(0, math.ceil((self.opened + self.length - now) * 1000))

    def committed(self, now: float) -> None:
        """A commit at monotonic ``now`` closed the window; the next opens."""
        self.opened = now
        self.bytes = 0
