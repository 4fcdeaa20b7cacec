"""The aggregator's doorbell: a rank that sends a request rings it, so a napping aggregator reads it at once.

A paced aggregator does not read its socket for each rank's batch as it arrives: once a batch of
a commit window is in, it naps until the window's end and reads the rest together (one wake-up a
window instead of one per rank; ``aggregator/server.py``). A request (HELLO, STATE, QUERY, BYE)
must not wait for that: ``wait()``, ``sync()`` and ``fetch()`` are answered within the short
window. So the rank rings the bell after it sends one, and the aggregator watches the bell while
it naps; the request itself still travels on the rank's socket, in order with its batches.

The bell is a Unix datagram socket next to the aggregator's ``ipc://`` socket, in the same 0700
directory: only the job's own processes can ring it. A datagram carries nothing but the ring. An
aggregator bound on TCP (across nodes) has no bell and does not nap. A ring that finds no bell (an
aggregator gone or restarting) is counted and otherwise ignored: the request is not lost, it is
answered at the end of the commit window.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

__all__ = ["Bell", "Ringer", "bell_path"]

_log = logging.getLogger(__name__)

_IPC = "ipc://"
_DRAIN_MAX = 256
"""Datagrams read per wake-up at most: a flood of rings cannot hold the loop."""
_ABSENT = frozenset((errno.ENOENT, errno.ECONNREFUSED))
"""No bell at the path: the aggregator is gone, restarting, or bound without one."""


def bell_path(endpoint: str) -> str | None:
    """The bell of the aggregator at ``endpoint``: ``DIR/agg.bell`` beside ``ipc://DIR/agg.sock``.

    None for TCP, and for an ipc path that is relative (the ranks' and the aggregator's working
    directories may differ) or abstract (``@name``).
    """
    if not endpoint.startswith(_IPC + "/"):
        return None
    sock = Path(endpoint[len(_IPC) :])
    return str(sock.with_name(sock.stem + ".bell"))


class Bell:
    """The aggregator's end: a bound, non-blocking datagram socket its loop polls while it naps."""

    def __init__(self, path: str) -> None:
        """Bind the bell at ``path`` (a stale file of a dead aggregator is replaced).

        Raises:
            OSError: the path cannot be bound (the caller then serves without napping).
        """
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if os.path.exists(path):
                os.unlink(path)  # left by an aggregator of this job that died; its directory is ours
            self._sock.bind(path)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.rings = 0
        """Datagrams read (for tests and the loop's debug log)."""

    def fileno(self) -> int:
        """The descriptor to poll for a ring."""
        return self._sock.fileno()

    def drain(self) -> int:
        """Read the queued rings (up to :data:`_DRAIN_MAX`); returns how many."""
        n = 0
        while n < _DRAIN_MAX:
            try:
                self._sock.recv(16)
            except BlockingIOError:
                break
            n += 1
        self.rings += n
        return n

    def close(self) -> None:
        """Close the socket and remove its file."""
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            _log.debug("bell %s was already removed", self.path)


class Ringer:
    """A rank's end: rings the bell of the aggregator at an endpoint; the socket is made at the first ring."""

    def __init__(self, endpoint: str) -> None:
        self.path = bell_path(endpoint)
        self._sock: socket.socket | None = None
        self.missed = 0
        """Rings that found no bell (counted; the request is answered at the window's end instead)."""

    def ring(self) -> None:
        """Ring once, without blocking.

        A full queue means the bell is rung already; a missing bell is counted in :attr:`missed`.
        Any other error is logged as a warning and ends the ringing: requests are then answered at
        the end of the commit window, as across nodes.
        """
        if self.path is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(b"!", self.path)
        except BlockingIOError:
            return  # rings are queued that the aggregator has not read: it is being woken already
        except OSError as e:
            if e.errno in _ABSENT:
                self.missed += 1
                _log.debug("no bell at %s (%s): the request waits for the commit window", self.path, e)
                return
            _log.warning("cannot ring the bell at %s (%s): requests wait for the commit window", self.path, e)
            self.path = None
            self.close()

    def close(self) -> None:
        """Close the socket, if a ring made one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
