"""When the sender thread wakes up: its flush timer, and the doze of an idle sender.

A sender with something to send flushes every flush interval. One whose last flushes found
nothing (:data:`QUIET_FLUSHES` in a row), with nothing in flight or awaited, *dozes*: it tells
the buffer (:meth:`Buffer.doze <coordinator.transport.buffer.Buffer.doze>`) that the next write
must wake it, and sleeps until that write or its heartbeat instead of waking every interval to
find nothing (an idle run's sender woke 20 times a second, at about 0.2 ms of CPU each). The
write that wakes it schedules the next flush, at most one interval after that write (a burst of
calls mostly goes out as one batch): the kill window (a SIGKILLed rank loses at most its
last flush interval) holds as when the timer runs. A write that did not wake it (a path that
bypassed the buffer's wake rule) is found at the next heartbeat and flushed at once.

Flushes fall on a *grid*: the multiples of the flush interval on the wall clock, taken once at
the sender's start and followed on the monotonic clock (:func:`wall_shift`; a later step of the
wall clock does not move it). The ranks of a node then flush together, and the aggregator finds
their batches in one wake-up instead of one each at scattered times (4 paced ranks: its CPU
13% lower, the job's about 3%; docs/performance.md, round 17); so do the nodes of a job, as
closely as their clocks agree (NTP: a millisecond or so), which keeps a node's ranks from
looking up to one interval late to the aggregator's straggler check (it times a step by when
the batch holding it arrived; the monotonic clocks of two nodes start at their boots, so a grid
on them alone put each node at its own phase of the interval). The next flush is the grid's
next point, never more than one interval after the last flush or after a write that woke a
doze, so the kill window holds; the first after a start or a doze may come sooner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from coordinator.transport.buffer import Buffer

__all__ = ["QUIET_FLUSHES", "Cadence", "wall_shift"]

QUIET_FLUSHES = 2
"""Flushes in a row that found nothing before the sender dozes. One is not enough: a rank logging
at 10 steps a second leaves every other 50 ms flush empty; dozing between its steps saved it no
wake-up and moved each batch to 50 ms after its write, and the aggregator of four such ranks then
used about a fifth more CPU (more SQLite transactions: 576 against 420 lock calls in 5 s)."""


def wall_shift(interval_s: float, wall: float | None = None, mono: float | None = None) -> float:
    """Where the wall clock's multiples of ``interval_s`` fall on the monotonic clock: a shift in [0, interval).

    A monotonic time ``t`` is on the grid when ``t + shift`` is a multiple of the interval, i.e.
    when the wall clock (``wall - mono + t``) is. ``wall``/``mono``: the two clocks read now
    (default: read here, one after the other: a few hundred ns apart).
    """
    if mono is None:
        mono = time.monotonic()
    if wall is None:
        wall = time.time()
    return (wall - mono) % interval_s


class Cadence:
    """The sender loop's next wake-up time, and whether it dozes (sender thread only)."""

    __slots__ = ("_buf", "_heartbeat", "_interval", "_quiet", "_shift", "dozing", "next_flush")

    def __init__(self, buf: Buffer, interval_s: float, heartbeat_s: float, now: float, *, shift: float = 0.0) -> None:
        """Args:
        buf: the run's buffer (its wake mark ends a doze).
        interval_s: the flush interval.
        heartbeat_s: the longest the sender stays silent (it sends a PING then).
        now: ``time.monotonic()``; the first flush is at most one interval later.
        shift: the grid is the monotonic times ``t`` where ``t + shift`` is a multiple of the
            interval (:func:`wall_shift`: the wall clock's multiples; 0: the monotonic clock's).
        """
        self._buf = buf
        self._interval = interval_s
        self._shift = shift
        self._heartbeat = heartbeat_s
        self.next_flush = self._grid(now)
        self.dozing = False
        self._quiet = 0  # flushes in a row that found nothing

    def _grid(self, now: float) -> float:
        """The grid's first point after ``now``: in (now, now + interval]."""
        shifted = now + self._shift
        t = (math.floor(shifted / self._interval) + 1) * self._interval - self._shift
        if t <= now:  # the quotient rounded down by an ulp
            t += self._interval
        return min(t, now + self._interval)  # the product rounded up by one

    def wake_at(self, last_send: float) -> float:
        """When the loop must wake at the latest: the next flush, or dozing, the next heartbeat."""
        return last_send + self._heartbeat if self.dozing else self.next_flush

    def flush_due(self, now: float, copy: Callable[[], bool] | None = None) -> bool:
        """After a wake-up: whether to flush now (the timer expired, a flush was asked for, a doze found a write).

        ``copy``: called on a wake-up that is no flush (:meth:`Pipeline.copy
        <coordinator.transport.pipeline.Pipeline.copy>`: the copies' timer may have fired);
        False (the generation holds what a copy cannot take) makes it one.
        """
        if self.dozing:
            if not self._buf.dozing:  # a write woke us: the next flush is at most an interval away
                self.dozing = False
                self.next_flush = self._grid(now)
            elif self._buf.has_writes:  # a write that did not wake us, found at a heartbeat
                self.dozing = False
                return True
            else:  # a heartbeat, a request, a reply: no timer runs while dozing
                return self._buf.flush_requested
        return now >= self.next_flush or self._buf.flush_requested or (copy is not None and not copy())

    def flushed(self, now: float, idle: bool) -> None:
        """A flush ran (its cut reset the buffer's wake mark); ``idle``: it found nothing. Next: the grid's next."""
        self.dozing = False
        self.next_flush = self._grid(now)
        self._quiet = self._quiet + 1 if idle else 0

    def settle(self, settled: bool) -> None:
        """End of a loop turn: doze after :data:`QUIET_FLUSHES` empty flushes, when nothing is awaited (``settled``)."""
        if not self.dozing and settled and self._quiet >= QUIET_FLUSHES:
            self.dozing = self._buf.doze()
