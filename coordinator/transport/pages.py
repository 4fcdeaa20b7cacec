"""Pages for large payloads: maps of our own, reused when they can be, never a megabyte freed holding the GIL.

A megabyte from ``malloc`` (``numpy.empty``) comes from the sender thread's arena. Freeing it
holds the GIL, and when freed blocks pile up at the arena's top one ``free`` gives them all back
to the system: a ``madvise`` of 10-15 MiB took 0.5 ms on the development VM, the sender's longest
stretch at full load (docs/performance.md round 28). A fresh anonymous map has the opposite
cost: its pages fault in, zeroed, while the payload is copied into it, holding the GIL (and
CPython 3.11 holds it through ``mmap`` with ``MAP_POPULATE`` and ``madvise`` too).

So a payload of up to :data:`CAPACITY` bytes is written into a map taken from a small pool, as a
numpy array over it, and the map goes back to the pool when that array dies: when the batch is
acknowledged (or written to disk and dropped) and ZeroMQ has let go of its zero-copy view, since
every view of the array keeps it alive. At most :data:`KEEP` maps wait in the pool; one past that,
or a payload larger than :data:`CAPACITY` (in its own map), is unmapped when it goes, and
CPython unmaps outside the GIL. A paced rank reuses the same few maps; a rank logging flat out
has ~25 payloads alive at its peaks (window, held batches, sends), so most of its maps are new
(138 of 191 in 6 s) and fault in during the copy: what it gains is the frees.
"""

from __future__ import annotations

import mmap
import weakref
from collections import deque

import numpy as np

__all__ = ["CAPACITY", "KEEP", "PagePool", "take"]

CAPACITY = 1536 * 1024
"""Bytes of one pooled map: a full batch at the default ``max_batch_points`` (65,536 points of
one key, ~1 MiB) fits, with room for its keys and headers. Only the pages a payload touches are
resident."""

KEEP = 4
"""Maps the pool keeps while none is in use: a rank holds at most this many idle (6 MiB of
address space, ~4 MiB resident after full batches)."""


class PagePool:
    """Maps of :attr:`capacity` bytes handed out as numpy arrays and taken back when the array dies.

    An array may die on any thread (the sender's, on an ACK; pyzmq's garbage collector's, once a
    zero-copy send is done), and inside a garbage collection that runs within :meth:`take`
    itself: no lock (which would deadlock there); each step is one operation on a deque or a
    dict, atomic under the GIL, and two arrays dying at once can leave at most one map past
    :attr:`keep` in the pool.
    """

    def __init__(self, capacity: int = CAPACITY, keep: int = KEEP) -> None:
        self.capacity = capacity
        self.keep = keep
        self._idle: deque[mmap.mmap] = deque()
        self._out: dict[int, tuple[weakref.ref[np.ndarray], mmap.mmap]] = {}
        """id of a weak reference (arrays are not hashable) -> the reference (alive for its callback) and the map."""
        self.made = 0
        """Maps made for the pool (the rest of :meth:`take`'s calls reused one)."""
        self.unpooled = 0
        """Payloads larger than :attr:`capacity`, each in a map of its own."""

    def take(self, n: int) -> np.ndarray:
        """A writable array of ``n`` uninitialised bytes, in pages of a pooled map when ``n`` fits."""
        if n > self.capacity:
            self.unpooled += 1
            return np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8)
        try:
            m = self._idle.pop()
        except IndexError:
            m = mmap.mmap(-1, self.capacity)
            self.made += 1
        a = np.frombuffer(m, dtype=np.uint8, count=n)
        r = weakref.ref(a, self._returned)
        self._out[id(r)] = r, m
        return a

    def _returned(self, ref: weakref.ref[np.ndarray]) -> None:
        """``ref``'s array died: its map waits for the next payload, or goes (unmapped outside the GIL)."""
        _, m = self._out.pop(id(ref))
        if len(self._idle) < self.keep:
            self._idle.append(m)

    @property
    def idle(self) -> int:
        """Maps waiting in the pool."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Pooled maps under a live array."""
        return len(self._out)


_POOL = PagePool()


def take(n: int) -> np.ndarray:
    """A writable array of ``n`` uninitialised bytes from the process's pool (:class:`PagePool`)."""
    return _POOL.take(n)
