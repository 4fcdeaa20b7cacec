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
or a payload larger than :data:`CAPACITY` (in its own map), is unmapped when it goes, outside
the GIL. A paced rank reuses the same few maps; a rank logging flat out
has ~25 payloads alive at its peaks (window, held batches, sends), so most of its maps are new
(138 of 191 in 6 s).

A page a payload touches for the first time faults in, zeroed by the kernel: about 1.4 µs a page
on the development VM, 50-150 µs for a 128 KiB slice of the copy, holding the GIL (the sender's
longest stretches at full load after round 28). So the pool faults in the pages a payload will
use, the first time a map is used that far, before handing it out: ``madvise`` with
``MADV_POPULATE_WRITE`` (Linux 5.14), called through :mod:`ctypes`, which releases the GIL for
the call (CPython's own ``mmap.madvise`` does not). The faults cost what they cost in the copy;
the GIL is free meanwhile. Where the call is refused (another kernel or system), pages fault in
during the copy, as before. The same call with ``MADV_DONTNEED`` (:func:`give_back`) hands back
the pages of a dead array's buffer right before it is freed: the sender's cut does it for its
long arrays, so their frees have nothing left to return holding the GIL.

The maps themselves are made and unmapped by libc's ``mmap`` and ``munmap`` through :mod:`ctypes`
too (:class:`_Map`), with the GIL released: CPython 3.11's :mod:`mmap` module holds it while the
kernel makes a map, and in a sender at full load that call waited 30-90 µs for the process's
memory lock (page faults and unmaps of other threads), a third of the sender's longest
stretches (docs/performance.md round 31). Where libc's functions cannot be called, the
:mod:`mmap` module makes them, as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CAPACITY", "KEEP", "PagePool", "give_back", "populate", "take"]

CAPACITY = 1536 * 1024
"""Bytes of one pooled map: a full batch at the default ``max_batch_points`` (65,536 points of
one key, ~1 MiB) fits, with room for its keys and headers. Only the pages a payload touches are
resident."""

KEEP = 4
"""Maps the pool keeps while none is in use: a rank holds at most this many idle (6 MiB of
address space, ~4 MiB resident after full batches)."""


_MADV_DONTNEED = 4
"""``madvise``'s advice that drops a range's pages (an anonymous range reads as zeros afterwards)."""
_MADV_POPULATE_WRITE = 23
"""``madvise``'s advice that faults a range in writable (Linux 5.14; ``asm-generic/mman-common.h``)."""


def _libc(name: str, argtypes: list[Any], restype: Any) -> Callable[..., Any] | None:
    """libc's function ``name`` through :mod:`ctypes` (a call that releases the GIL); None where there is none."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # no C library to load, or no such function in it
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    result: Callable[..., Any] = fn
    return result


_MADVISE = _libc("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int)
_MMAP = _libc(
    "mmap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long], ctypes.c_void_p
)
_MUNMAP = _libc("munmap", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value
_FLAGS = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
"""The map's flags, those of the :mod:`mmap` module's anonymous maps (a shared one is never merged
with its neighbours: each stays a map of its own in ``/proc/self/smaps``)."""
_REFUSED: set[int] = set()
"""Advices the system refused (an old kernel, another system): not asked again."""


def _advise(address: int, length: int, advice: int) -> bool:
    """``madvise(address, length, advice)`` with the GIL released; False: not done (nothing raised).

    A refusal of the advice itself (``EINVAL``, ``ENOSYS``, ``EPERM``) turns it off for the
    process; any other failure leaves the pages to the allocator and the page faults, as without it.
    """
    if _MADVISE is None or advice in _REFUSED:
        return False
    if _MADVISE(address, length, advice) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        _REFUSED.add(advice)
    return False


def populate(a: np.ndarray, start: int = 0) -> bool:
    """Fault in the pages under ``a[start:]`` (a writable byte array over a map), the GIL released.

    ``start`` is rounded down to its page (``a`` starts on one). False: not done, because
    ``madvise`` or the advice is missing (before Linux 5.14: the pages then fault in when
    written) or the call failed for this range.
    """
    if start >= a.nbytes:
        return False
    lo = start - start % mmap.PAGESIZE
    return _advise(a.ctypes.data + lo, a.nbytes - lo, _MADV_POPULATE_WRITE)


def give_back(address: int, nbytes: int) -> bool:
    """Hand the whole pages inside ``[address, address + nbytes)`` back to the system, the GIL released.

    For the buffer of a dead array, right before it is freed: the free then has no pages left to
    return (a megabyte freed holding the GIL: 30-500 µs, see the module's notes). Only pages
    wholly inside the buffer go: the partial pages at its ends, which may hold the allocator's
    own words about the block and its neighbours, stay. Those pages read as zeros afterwards:
    nothing may read the buffer again. False: not done (no ``madvise``, or no whole page
    inside); the free then returns the pages itself.
    """
    page = mmap.PAGESIZE
    lo = -(-address // page) * page
    hi = (address + nbytes) // page * page
    return hi > lo and _advise(lo, hi - lo, _MADV_DONTNEED)


class _Span:
    """The first ``n`` bytes of a :class:`_Map` as numpy sees an array's memory: the base of
    :meth:`_Map.array`'s arrays, which keeps the map alive as long as any of them (a view's base
    is the array it was made from)."""

    __slots__ = ("__array_interface__", "_map")

    def __init__(self, m: _Map, n: int) -> None:
        self._map = m
        self.__array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (m.address, False), "version": 3}


class _Map:
    """One anonymous map of :attr:`size` bytes, made and unmapped with the GIL released where libc allows.

    Like an :class:`mmap.mmap`, it is unmapped when its last reference goes: the pool's, or that
    of an array over it (:class:`_Span`).
    """

    __slots__ = ("_mm", "_unmap", "address", "size")

    def __init__(self, size: int) -> None:
        """Make the map.

        Raises:
            OSError: the system refused it (out of memory or address space).
        """
        self.size = size
        self.address = 0
        self._unmap = _MUNMAP  # kept: a map may outlive the module's globals at interpreter exit
        self._mm: mmap.mmap | None = None
        if _MMAP is None or _MUNMAP is None:
            self._mm = mmap.mmap(-1, size)
            return
        address = _MMAP(None, size, mmap.PROT_READ | mmap.PROT_WRITE, _FLAGS, -1, 0)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            raise OSError(code, f"mmap of {size} bytes: {os.strerror(code)}")
        self.address = address

    def array(self, n: int) -> np.ndarray:
        """A writable byte array over the map's first ``n`` bytes (it keeps the map alive)."""
        if self._mm is not None:
            return np.frombuffer(self._mm, dtype=np.uint8, count=n)
        return np.asarray(_Span(self, n))

    def __del__(self) -> None:
        """Unmap a libc map, the GIL released (an :mod:`mmap` one unmaps itself, outside it too).

        Raises:
            OSError: ``munmap`` failed (reported as an unraisable exception; the map stays).
        """
        if self.address and self._unmap is not None and self._unmap(self.address, self.size) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"munmap of {self.size} bytes: {os.strerror(code)}")


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
        self._idle: deque[tuple[_Map, int]] = deque()
        """Maps waiting, each with the bytes of it already faulted in."""
        self._out: dict[int, tuple[weakref.ref[np.ndarray], _Map, int]] = {}
        """id of a weak reference (arrays are not hashable) -> the reference (alive for its callback),
        the map and the bytes of it faulted in."""
        self.made = 0
        """Maps made for the pool (the rest of :meth:`take`'s calls reused one)."""
        self.unpooled = 0
        """Payloads larger than :attr:`capacity`, each in a map of its own."""
        self.populated = 0
        """Takes whose new pages were faulted in before the write (:func:`populate`)."""

    def take(self, n: int) -> np.ndarray:
        """A writable array of ``n`` uninitialised bytes, in pages of a pooled map when ``n`` fits."""
        if n > self.capacity:
            self.unpooled += 1
            big = _Map(n).array(n)
            populate(big)
            return big
        try:
            m, ready = self._idle.pop()
        except IndexError:
            m, ready = _Map(self.capacity), 0
            self.made += 1
        a = m.array(n)
        if n > ready and populate(a, ready):
            ready = n
            self.populated += 1
        r = weakref.ref(a, self._returned)
        self._out[id(r)] = r, m, ready
        return a

    def _returned(self, ref: weakref.ref[np.ndarray]) -> None:
        """``ref``'s array died: its map waits for the next payload, or goes (unmapped outside the GIL)."""
        _, m, ready = self._out.pop(id(ref))
        if len(self._idle) < self.keep:
            self._idle.append((m, ready))

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
