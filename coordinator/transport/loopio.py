"""The sender loop's socket-facing steps: waiting for the next wake-up, reading the replies, sending.

All of them run once per flush on a paced rank, on a cold CPU (the training thread ran in
between), so their fixed cost counts per logged point; they are kept to the fewest calls and syscalls:

* A quiet wait (no reply awaited, see :func:`~coordinator.transport.urgency.listening`) watches
  the wake-up pipe only, with one ``select.poll`` call: ``zmq.Poller`` would add its Python and a
  first non-blocking pass of ``zmq_poll`` (one more syscall). A listening wait watches the socket
  too, and needs ``zmq_poll`` for that.
* Replies are read while a zero-timeout ``zmq_poll`` of the socket says one is queued, instead of
  receiving until a non-blocking receive raises ``zmq.Again``: the check costs the same mailbox
  poll that the failing receive made, without building and raising an exception every wake-up.
  ``zmq_poll`` releases the GIL while libzmq works (the socket's ``EVENTS`` read with
  ``getsockopt`` keeps it): the first check after a quiet wait processes every command the I/O
  thread queued since the last one, 30-60 µs on a cold CPU, which was the longest piece of the
  sender's longest GIL stretches (measured with ``benchmarks.gil_holds``).
* Flags are plain ints: pyzmq's constants are ``IntFlag`` members, and every ``|`` or ``&`` on
  one runs ``enum``'s Python (``send_multipart`` does ``zmq.SNDMORE | flags`` per frame). A
  message's frames are sent as ``send_multipart`` sends them, one ``send`` each; ZeroMQ checks
  the high-water mark at the first frame only, so a message goes whole or not at all.
* Frames of 64 KiB and more (a batch of a few thousand points and up) go without a copy: libzmq
  reads them in place and calls pyzmq back when it is done, through pyzmq's garbage-collector
  thread, which pyzmq starts (with a context and a socket of its own) inside the first such
  send: 265-340 µs holding the GIL, the longest stretch of a rank logging flat out (round 28 of
  docs/performance.md). :class:`LoopIO` starts it when it is made, at the sender's start-up.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator, Sequence

import zmq

__all__ = ["LoopIO", "has_message", "start_zero_copy"]

_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_NOWAIT = int(zmq.NOBLOCK)
_MORE_NOWAIT = int(zmq.SNDMORE) | _NOWAIT


def _nothing() -> None:
    """The default ``woke`` of :class:`LoopIO`."""


def has_message(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is queued on ``sock`` now (its ``EVENTS``, read with plain ints).

    Cheaper than a receive that raises ``zmq.Again`` when nothing is there; the aggregator's
    socket loop asks it too.
    """
    events = sock.get(_EVENTS)  # an int for this option (typed int | bytes)
    return isinstance(events, int) and bool(events & _POLLIN)


def start_zero_copy() -> None:
    """Have pyzmq start what every zero-copy send needs (its garbage-collector thread) now.

    A one-byte frame made without a copy does it, and is dropped at once. The thread stays for
    the process (pyzmq stops it at exit) and sleeps on a socket until a send's frame is freed.
    """
    zmq.Frame(b"\0", copy=False)


class LoopIO:
    """The sender thread's wait (wake-up pipe, and the socket when listening), reply reads and sends."""

    def __init__(
        self, sock: zmq.Socket[bytes], wake_fd: int, woke: Callable[[], None] = _nothing, timer_fd: int | None = None
    ) -> None:
        """Args:
        sock: the sender's DEALER socket (used by the sender thread only).
        wake_fd: the read end of the sender's wake-up pipe.
        woke: called as soon as a wait's blocking poll returns (the GIL just taken back), before
            anything else releases it: the sender's GIL slicer starts its stretch there.
        timer_fd: a timer that also wakes the wait (the copies' :mod:`~coordinator.transport.timerfd`),
            reported as the pipe is; its reader clears it.
        """
        self._woke = woke
        self._sock = sock
        self._wake_fd = wake_fd
        self._listen = zmq.Poller()
        self._listen.register(sock, zmq.POLLIN)
        self._listen.register(wake_fd, zmq.POLLIN)
        self._quiet = select.poll()
        self._quiet.register(wake_fd, select.POLLIN)
        self._timer_fd = timer_fd
        if timer_fd is not None:
            self._listen.register(timer_fd, zmq.POLLIN)
            self._quiet.register(timer_fd, select.POLLIN)
        self._readable = [(sock, _POLLIN)]
        start_zero_copy()

    def wait(self, timeout_ms: int, *, listen: bool, doze: bool = False) -> tuple[bool, bool]:
        """Block up to ``timeout_ms`` for a wake-up (and, when ``listen``, a reply).

        ``doze``: a dozing sender's quiet wait, whose timeout (its heartbeat) mostly finds nothing to do. One
        that ends by its timeout does not call ``woke`` (the caller does if it does more than wait again): on
        a cold CPU the slicer's start, which reads the training thread's CPU clock, took about half of the ~150 µs
        the GIL was held from the poll's return to the look at the socket (``benchmarks.gil_holds``, at the default).

        Returns:
            (woken: the pipe, or the timer, is readable; replies: a reply is queued on the socket). A quiet
            wait looks at the socket once the pipe's poll returns, for the replies queued
            meanwhile, first thing: the look releases the GIL (see the module's notes), so
            the Python run between the poll's return and the next release stays short.
        """
        if not listen:
            woken = bool(self._quiet.poll(timeout_ms))
            if woken or not doze:
                self._woke()
            return woken, self.queued()
        events = dict(self._listen.poll(timeout_ms))
        self._woke()
        return self._wake_fd in events or self._timer_fd in events, self._sock in events

    def queued(self) -> bool:
        """Whether a reply is queued on the socket now (a zero-timeout ``zmq_poll``: the GIL is released while
        libzmq reads its mailbox)."""
        return bool(zmq.zmq_poll(self._readable, 0))

    def replies(self) -> Iterator[list[bytes]]:
        """The replies queued on the socket now, oldest first, each read as it is yielded.

        Called when :meth:`wait` found the socket readable: it receives first and looks again
        after each reply.
        """
        sock = self._sock
        items = self._readable
        while True:
            try:
                frames = sock.recv_multipart(_NOWAIT)
            except zmq.Again:
                return  # nothing queued (a reply already read, or a wait that was wrong)
            yield frames
            if not zmq.zmq_poll(items, 0):  # releases the GIL while libzmq reads its mailbox
                return

    def send(self, frames: Sequence[bytes | memoryview]) -> bool:
        """Queue one message of ``frames`` without blocking; False when the send queue is full (nothing queued)."""
        sock = self._sock
        try:
            for f in frames[:-1]:
                sock.send(f, _MORE_NOWAIT, copy=False)
            sock.send(frames[-1], _NOWAIT, copy=False)
        except zmq.Again:
            return False
        return True
