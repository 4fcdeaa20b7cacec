"""The sender loop's socket-facing steps: waiting for the next wake-up, reading the replies, sending.

All of them run once per flush on a paced rank, on a cold CPU (the training thread ran in
between), so their fixed cost counts per logged point; they are kept to the fewest calls and syscalls:

* A quiet wait (no reply awaited, see ``SenderThread._listening``) watches the wake-up pipe only,
  with one ``select.poll`` call: ``zmq.Poller`` would add its Python and a first non-blocking
  pass of ``zmq_poll`` (one more syscall). A listening wait watches the socket too, and needs
  ``zmq_poll`` for that.
* Replies are read while the socket's ``EVENTS`` says one is queued, instead of receiving until
  a non-blocking receive raises ``zmq.Again``: the check costs the same mailbox poll that the
  failing receive made, without building and raising an exception every wake-up.
* Flags are plain ints: pyzmq's constants are ``IntFlag`` members, and every ``|`` or ``&`` on
  one runs ``enum``'s Python (``send_multipart`` does ``zmq.SNDMORE | flags`` per frame). A
  message's frames are sent as ``send_multipart`` sends them, one ``send`` each; ZeroMQ checks
  the high-water mark at the first frame only, so a message goes whole or not at all.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import zmq

__all__ = ["LoopIO", "has_message"]

_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_NOWAIT = int(zmq.NOBLOCK)
_MORE_NOWAIT = int(zmq.SNDMORE) | _NOWAIT


def has_message(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is queued on ``sock`` now (its ``EVENTS``, read with plain ints).

    Cheaper than a receive that raises ``zmq.Again`` when nothing is there; the aggregator's
    socket loop asks it too.
    """
    events = sock.get(_EVENTS)  # an int for this option (typed int | bytes)
    return isinstance(events, int) and bool(events & _POLLIN)


class LoopIO:
    """The sender thread's wait (wake-up pipe, and the socket when listening), reply reads and sends."""

    def __init__(self, sock: zmq.Socket[bytes], wake_fd: int) -> None:
        """Args:
        sock: the sender's DEALER socket (used by the sender thread only).
        wake_fd: the read end of the sender's wake-up pipe.
        """
        self._sock = sock
        self._wake_fd = wake_fd
        self._listen = zmq.Poller()
        self._listen.register(sock, zmq.POLLIN)
        self._listen.register(wake_fd, zmq.POLLIN)
        self._quiet = select.poll()
        self._quiet.register(wake_fd, select.POLLIN)

    def wait(self, timeout_ms: int, *, listen: bool) -> tuple[bool, bool]:
        """Block up to ``timeout_ms`` for a wake-up (and, when ``listen``, a reply).

        Returns:
            (woken: the pipe is readable, replies: the socket is readable, always False when quiet).
        """
        if not listen:
            return bool(self._quiet.poll(timeout_ms)), False
        events = dict(self._listen.poll(timeout_ms))
        return self._wake_fd in events, self._sock in events

    def replies(self) -> Iterator[list[bytes]]:
        """The replies queued on the socket now, oldest first, each read as it is yielded."""
        sock = self._sock
        while has_message(sock):
            try:
                frames = sock.recv_multipart(_NOWAIT)
            except zmq.Again:
                return  # EVENTS said readable, yet nothing came: nothing more to read now
            yield frames

    def send(self, frames: list[bytes]) -> bool:
        """Queue one message of ``frames`` without blocking; False when the send queue is full (nothing queued)."""
        sock = self._sock
        try:
            for f in frames[:-1]:
                sock.send(f, _MORE_NOWAIT, copy=False)
            sock.send(frames[-1], _NOWAIT, copy=False)
        except zmq.Again:
            return False
        return True
