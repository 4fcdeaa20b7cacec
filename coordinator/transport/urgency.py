"""When a sender needs its acks soon: it then wakes up for each reply, and asks for the short commit window.

At a steady paced load nobody waits for an ack: the sender reads them when it wakes up to flush,
and the aggregator commits once per light window (100 ms,
:mod:`~coordinator.aggregator.commitwindow`). Someone waits when ``wait()`` is blocked, a full
buffer blocks ``log()``, or batches are held for room in the in-flight window; then the loop
listens (wakes for every reply) and hurries (a PING behind its batches, which the aggregator
answers within its 10 ms window, with the mark that acknowledges them), once per new batch: empty
cuts while it waits send nothing.
"""

from __future__ import annotations

from coordinator.transport.buffer import Buffer
from coordinator.transport.pipeline import Pipeline

__all__ = ["LISTEN_IN_FLIGHT", "Hurry", "listening", "waited_for"]

LISTEN_IN_FLIGHT = 6
"""Batches in flight from which the loop wakes up for every reply (a busy rank: acks free the window).

A paced rank has up to three in flight at its flushes (a light window covers two flushes)."""


def waited_for(buf: Buffer, pipe: Pipeline) -> bool:
    """Someone waits for this sender's acks: ``wait()``, a full buffer, batches held for window room."""
    return buf.awaiting > 0 or buf.pending >= buf.max_points or pipe.held


def listening(buf: Buffer, pipe: Pipeline, request_due: bool) -> bool:
    """Whether the loop should wake up for each reply as it arrives.

    It must while a reply is awaited: the first WELCOME, a request's answer (``request_due``: sent
    or still unsent), the ack a ``wait()`` or a full buffer waits for, room in the window for held
    batches, many batches in flight. Otherwise (a paced rank with a batch or two in flight) the
    acks are read when the loop wakes up to flush: one wake-up per flush instead of two, which is
    about a tenth of the sender's CPU at 50 steps/s. An ack read up to a flush interval late
    delays only the in-flight count (the write-ahead deadline, ``ack_deadline``, allows for it).
    """
    return not pipe.welcomed or request_due or waited_for(buf, pipe) or pipe.in_flight >= LISTEN_IN_FLIGHT


class Hurry:
    """Says when to send the aggregator a PING that shortens its commit window.

    Once per newest batch in flight, and only once a reply came after the last one: an aggregator
    that is behind (frozen, or slow to read) would otherwise find a PING per flush queued before
    the probe HELLO that the send queue's control slack is kept for.
    """

    __slots__ = ("_at", "_seq")

    def __init__(self) -> None:
        self._seq = -1
        """The newest batch when the last PING went out: later ones need one of their own."""
        self._at = 0.0
        """Monotonic time of the last PING."""

    def due(self, buf: Buffer, pipe: Pipeline, now: float, last_reply_at: float) -> bool:
        """True (and noted) when batches are in flight, someone waits for them, no PING followed the
        newest, and the last PING was answered (``last_reply_at``: monotonic time of the last reply)."""
        if self._seq == pipe.last_seq or not pipe.in_flight or not waited_for(buf, pipe):
            return False
        if last_reply_at < self._at:
            return False
        self._seq, self._at = pipe.last_seq, now
        return True
