"""How the aggregator's loop waits for its next round: per message, or napping through a commit window.

A paced job's ranks each send a batch every flush interval (50 ms), at phases of their own, and the
loop commits (and acks) once per 50 ms window. Reading each batch as it arrives woke the loop
once per rank and window, and on a cold CPU a wake-up costs about as much as the batch's work.
Once a batch of the window is in, the loop naps instead: it leaves the socket unread until the
window's end, then reads what came meanwhile in one round, warm. The acks leave at the same time
as before (the window's end), so a rank sees no difference.

A nap is only taken where a request can end it: the ranks ring the bell
(:mod:`coordinator.transport.bell`) after a HELLO, STATE, QUERY or BYE, and a ring ends the nap
and every later one until the next commit, so ``wait()``, ``sync()`` and ``fetch()`` keep their
short window. Without a bell (TCP, across nodes) the loop reads every message as it arrives. A
window that has taken more than :data:`NAP_BYTES` is not napped through either: a loaded
aggregator reads as the data comes, so its work is spread over the window instead of queued
behind it.
"""

from __future__ import annotations

import logging

import zmq

from coordinator.transport.bell import Bell, bell_path

__all__ = ["NAP_BYTES", "LoopWait"]

_log = logging.getLogger("coordinator.aggregator")

NAP_BYTES = 256 * 1024
"""Batch bytes read in a commit window above which the loop no longer naps through the rest of it.
A paced 4-rank job of 100-key dicts sends about 30 KB a window; a loaded one, megabytes."""


class LoopWait:
    """The loop's poll: the ROUTER socket, the query reader's answers and the bell."""

    def __init__(self, sock: zmq.Socket[bytes], answers: zmq.Socket[bytes], endpoint: str) -> None:
        """Bind the bell beside an ``ipc://`` endpoint (none for TCP, or if it cannot be bound: no naps)."""
        self._sock = sock
        self._answers = answers
        self.bell: Bell | None = None
        path = bell_path(endpoint)
        if path is not None:
            try:
                self.bell = Bell(path)
            except OSError as e:
                _log.warning("no bell at %s (%s): the loop reads every message as it arrives", path, e)
        self._all = zmq.Poller()
        self._all.register(sock, zmq.POLLIN)
        self._all.register(answers, zmq.POLLIN)
        self._nap = zmq.Poller()
        self._nap.register(answers, zmq.POLLIN)
        if self.bell is not None:
            self._all.register(self.bell.fileno(), zmq.POLLIN)
            self._nap.register(self.bell.fileno(), zmq.POLLIN)
        self._rung = False
        self._window_bytes = 0
        self.naps = 0
        """Naps taken (for tests)."""

    def may_nap(self) -> bool:
        """Whether the rest of this commit window may be napped through: a bell, no ring, little taken."""
        return self.bell is not None and not self._rung and self._window_bytes < NAP_BYTES

    def wait(self, timeout_ms: int, *, nap: bool) -> tuple[bool, bool]:
        """Poll for up to ``timeout_ms``; returns (read the socket now, the reader has answers).

        Napping, the socket is read when the nap ends (timed out, or the bell rang); otherwise
        when it has a message.
        """
        poller = self._nap if nap else self._all
        if nap:
            self.naps += 1
        events = dict(poller.poll(timeout_ms))
        rang = False
        if self.bell is not None and self.bell.fileno() in events:
            self.bell.drain()
            self._rung = rang = True
        answers = self._answers in events
        if nap:
            return rang or not events, answers
        return self._sock in events, answers

    def took(self, nbytes: int) -> None:
        """A round read ``nbytes`` of messages."""
        self._window_bytes += nbytes

    def committed(self) -> None:
        """A commit closed the window: the next may be napped through again."""
        self._rung = False
        self._window_bytes = 0

    def close(self) -> None:
        """Remove the bell."""
        if self.bell is not None:
            self.bell.close()
