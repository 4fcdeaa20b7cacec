"""A rank's ring: variable-length records in a mapped file that outlives the process that writes it.

With ``Settings.rings`` (docs/performance.md, rounds 42-44) a rank's training thread appends each
row to a file in the node's shared memory (:mod:`coordinator.client.ringlog`), and the aggregator
on that node takes them out (:mod:`coordinator.aggregator.rings`). A SIGKILL does not take a
mapped file's pages, so a killed rank loses no record it published; nothing in the rank has to
wake to get its points out.

Layout, little-endian. The file is a 256-byte header and a data area of ``capacity`` bytes (a power
of two). The header holds ``MAGIC``, the version, the capacity and the writer's pid, and two
counters, each alone in its 64-byte line: ``written`` (bytes published, stored only by the
writer) and ``released`` (bytes the reader is done with, stored only by the reader). Both count
from the file's creation and never go back, so a position names one record for good and a
journal can keep it. A record at position ``p`` (a multiple of 8) sits at ``p % capacity`` in the
data area and never wraps::

    u32 length | u32 tag | body (length bytes) | zeros to a multiple of 8 | u32 tag | u32 length

where ``tag`` is ``(p >> 3) & 0xFFFFFFFF``. A record that would cross the data area's end is put
at its start instead, after a skip mark (length ``SKIP``) at ``p``. The writer stores a record's
bytes, then ``written``; the reader reads ``written``, then the records below it, and stores
``released`` only when it is done with them (after the commit that holds them), which is when
their bytes may be written again. Each side stores one counter and reads the other's, so neither
takes a lock; one writer and one reader at a time.

Memory order: x86 keeps stores in order, so a record is whole once ``written`` covers it. Where
stores may be reordered (the interpreter has no release store), the tag and length at both ends
let the reader tell a record whose end is not visible yet: it stops there and reads it on its next
pass. A record whose two ends disagree once the writer is gone is damage, and raises.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "SKIP",
    "Framing",
    "RingDamaged",
    "RingReader",
    "RingWriter",
    "read_header",
]

MAGIC = b"CRNG"
VERSION = 1
HEADER_BYTES = 256
SKIP = 0xFFFFFFFF
"""A record length that means "the rest of the data area is unused: go on at its start"."""
_META = struct.Struct("<4sHxxQI")
"""magic | version | capacity | writer pid, at offset 0."""
_WRITTEN_AT = 64
_RELEASED_AT = 128
_CLOSED_AT = 192
"""A u32, 1 once the writer closed its end cleanly."""
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_EDGE = struct.Struct("<II")
_EDGE_BYTES = 2 * _EDGE.size
_MIN_CAPACITY = 4096
_MAX_CAPACITY = 1 << 34
"""A tag is 32 bits of a position over 8, so below 2**35 bytes the record of the lap before at the
same offset never has this lap's tag."""
_PADS = tuple(bytes(i) for i in range(8))

Framing = tuple[Callable[..., None], int, int]
"""What packs a whole record around a body struct (:meth:`RingWriter.framing`): the bound
``pack_into`` of the record's struct, the record's size, the body's."""


class RingDamaged(ValueError):
    """A ring's file is not a ring, or holds a record whose two ends disagree."""


def _record_bytes(length: int) -> int:
    """Bytes a record of a ``length``-byte body takes: its two edges and the body padded to 8."""
    return _EDGE_BYTES + ((length + 7) & ~7)


def _map(path: Path, size: int, *, create: bool) -> tuple[mmap.mmap, int]:
    """Map the ring's file; with ``create``, make it with all its pages allocated first. Returns the map
    and the file's descriptor, kept open with a shared ``flock`` until :meth:`_Ring.close`.

    Allocating up front is what makes a full ``/dev/shm`` an ``OSError`` here: a store into a
    mapped page that tmpfs cannot back later would kill the process with SIGBUS instead. Both ends
    map every page at once (``MAP_POPULATE``, ~1 ms for 16 MiB): the first store into each page of
    a fresh mapping would fault, and a paced training step's calls took those faults at their p99. A file
    this call made and could not finish is removed. The lock says a process (its writer, or a
    reader) still has the ring: one no process holds was left by a job that ended without taking
    it away (:func:`coordinator.transport.ringplace.left_rings`). The writer takes it before the
    file has its header, so a ring with a header and no lock has nobody.
    """
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if create:
            os.posix_fallocate(fd, 0, size)
        elif os.fstat(fd).st_size < size:
            raise RingDamaged(f"{path}: {os.fstat(fd).st_size} bytes, shorter than a ring's header")
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE), fd
    except BaseException:
        os.close(fd)
        if create:
            path.unlink()
        raise


def read_header(fd: int) -> tuple[int, int, int, int, bool] | None:
    """A ring's header read from its open file: (capacity, writer pid, written, released, writer closed), or
    None where the file is not a ring of this version (or not one yet: its writer has not stamped it)."""
    head = os.pread(fd, HEADER_BYTES, 0)
    if len(head) < HEADER_BYTES:
        return None
    magic, version, capacity, pid = _META.unpack_from(head)
    if magic != MAGIC or version != VERSION:
        return None
    (written,) = _U64.unpack_from(head, _WRITTEN_AT)
    (released,) = _U64.unpack_from(head, _RELEASED_AT)
    (closed,) = _U32.unpack_from(head, _CLOSED_AT)
    return capacity, pid, written, released, bool(closed)


def _framed(s: struct.Struct) -> struct.Struct:
    """A struct that packs a whole record around ``s``'s body: its head, the body, zeros to 8, its tail."""
    if not s.format.startswith("<"):
        raise ValueError(f"a record's struct must be little-endian ('<'), not {s.format!r}")
    pad = -s.size & 7
    return struct.Struct(f"<II{s.format[1:]}{pad}xII")


class _Ring:
    """What both ends share: the map, the capacity and the two counters."""

    def __init__(self, path: Path, mapped: tuple[mmap.mmap, int], capacity: int) -> None:
        self.path = path
        self.map, self._fd = mapped
        self.capacity = capacity
        self._mask = capacity - 1
        self._view = memoryview(self.map)
        self._written = self._view[_WRITTEN_AT : _WRITTEN_AT + 8].cast("Q")
        self._released = self._view[_RELEASED_AT : _RELEASED_AT + 8].cast("Q")
        self._closed = self._view[_CLOSED_AT : _CLOSED_AT + 4].cast("I")

    @property
    def written(self) -> int:
        """Bytes the writer has published since the ring was made."""
        return int(self._written[0])

    @property
    def released(self) -> int:
        """Bytes the reader is done with since the ring was made."""
        return int(self._released[0])

    @property
    def writer_closed(self) -> bool:
        """Whether the writer closed its end: nothing more will be written."""
        return bool(self._closed[0])

    def close(self) -> None:
        """Let the views, the map and the file's lock go (the file stays: its records are the point).

        Raises:
            BufferError: a view of a record from :meth:`RingReader.records` is still held.
        """
        for v in (self._written, self._released, self._closed, self._view):
            v.release()
        self.map.close()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class RingWriter(_Ring):
    """The writing end: one thread appends records, each published as soon as it is whole.

    Args:
        path: the ring's file; made here, and refused if it exists (it may hold records no
            reader has taken yet).
        capacity: bytes of the data area, a power of two of at least 4096.
    """

    def __init__(self, path: Path, capacity: int) -> None:
        if capacity < _MIN_CAPACITY or capacity > _MAX_CAPACITY or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two from {_MIN_CAPACITY} to {_MAX_CAPACITY}, not {capacity}")
        super().__init__(path, _map(path, HEADER_BYTES + capacity, create=True), capacity)
        _META.pack_into(self.map, 0, MAGIC, VERSION, capacity, os.getpid())
        self._pos = 0
        self._free_to = capacity
        """Positions below this are free to write (``released + capacity``, read again only when short)."""
        self._room, self._base = capacity, HEADER_BYTES
        """A record that ends at or below ``_room`` goes at ``_base`` + its position with no other check: the smaller
        of ``_free_to`` and the end of the lap of the last claim (:meth:`_claim`), and that lap's map offset."""
        self.largest = capacity // 4
        """The largest body a record may carry: a quarter of the ring, so that one never waits on itself."""
        self.tally = 0
        """The ``weight`` of every record :meth:`pack_row` published (a rank's ring: its points)."""
        self._framed: dict[struct.Struct, Framing] = {}
        """Per body struct: the bound ``pack_into`` of its whole record's struct, the record's size, the body's."""

    def space(self) -> int:
        """Bytes that may be written now without waiting for the reader."""
        self._free_to = self.released + self.capacity
        return self._free_to - self._pos

    def put(self, body: bytes | bytearray | memoryview) -> bool:
        """Append one record holding ``body``; False, with nothing written, when the ring has no room.

        Raises:
            ValueError: ``body`` is larger than :attr:`largest`.
        """
        n = len(body)
        at = self._claim(n)
        if at < 0:
            return False
        self.map[at + _EDGE.size : at + _EDGE.size + n] = body
        self._seal(at, n)
        return True

    def pack(self, s: struct.Struct, *values: object) -> bool:
        """Append one record whose body is ``s.pack(*values)``; False when there is no room.

        Raises:
            ValueError: ``s`` is not little-endian (``<``), or its body is larger than :attr:`largest`.
        """
        return self.pack_row(self.framing(s), values, ())

    def framing(self, s: struct.Struct) -> Framing:
        """What :meth:`pack_row` packs a record of body ``s`` with (made once, then kept).

        Raises:
            ValueError: ``s`` is not little-endian (``<``), or its body is larger than :attr:`largest`.
        """
        f = self._framed.get(s)
        if f is None:
            if s.size > self.largest:
                raise ValueError(f"a record of {s.size} bytes is larger than a quarter of the ring ({self.largest})")
            whole = _framed(s)
            f = self._framed[s] = (whole.pack_into, whole.size, s.size)
        return f

    def pack_row(self, framing: Framing, head: tuple[object, ...], rest: Iterable[object], weight: int = 0) -> bool:
        """Append one record whose body is ``s.pack(*head, *rest)`` for the ``s`` of ``framing`` (a row:
        its step, then a dict's values, expanded once into the call); False when there is no room.
        ``weight`` is added to :attr:`tally` as the record is published, with no call between that a
        signal's exception could land on: a count of what the records carry that is right however a
        caller is interrupted.

        The record is packed whole, its edges with its body, by one ``pack_into`` of the struct
        :meth:`framing` made: the hot path, ~1 µs above ``s.pack`` alone for a 100-value row. (A
        ``rest`` that is a tuple expands fastest: a one-value dict's view costs ~0.1 µs more.)
        """
        pack_into, size, body = framing
        pos = self._pos
        end = pos + size
        if end > self._room:
            if self._claim(body) < 0:
                return False
            pos = self._pos
            end = pos + size
        tag = (pos >> 3) & 0xFFFFFFFF
        pack_into(self.map, self._base + pos, body, tag, *head, *rest, tag, body)
        self._pos = end
        self._written[0] = end
        self.tally += weight
        return True

    def pack_scalar(self, framing: Framing, fid: int, stamp: int, step: int, value: object) -> bool:
        """:meth:`pack_row` of a one-value row (``s.pack(fid, stamp, step, value)``, weight 1), without its
        argument tuples: ~0.15 µs of a scalar's ~1 µs call."""
        pack_into, size, body = framing
        pos = self._pos
        end = pos + size
        if end > self._room:
            return self.pack_row(framing, (fid, stamp, step), (value,), 1)
        tag = (pos >> 3) & 0xFFFFFFFF
        pack_into(self.map, self._base + pos, body, tag, fid, stamp, step, value, tag, body)
        self._pos = end
        self._written[0] = end
        self.tally += 1
        return True

    def _claim(self, n: int) -> int:
        """Where in the map the record of an ``n``-byte body goes (after any skip mark), or -1 when it
        does not fit before the reader's release."""
        if n > self.largest:
            raise ValueError(f"a record of {n} bytes is larger than a quarter of the ring ({self.largest})")
        need = _record_bytes(n)
        pos = self._pos
        offset = pos & self._mask
        skip = self.capacity - offset if offset + need > self.capacity else 0
        if pos + skip + need > self._free_to and skip + need > self.space():
            return -1
        if skip:
            _EDGE.pack_into(self.map, HEADER_BYTES + offset, SKIP, (pos >> 3) & 0xFFFFFFFF)
            pos += skip
            self._pos = pos
        lap = pos & ~self._mask
        self._room = min(self._free_to, lap + self.capacity)
        self._base = HEADER_BYTES - lap
        return HEADER_BYTES + (pos & self._mask)

    def _seal(self, at: int, n: int) -> None:
        """Write the record's edges and zero padding at map offset ``at``, then publish it."""
        pos = self._pos
        tag = (pos >> 3) & 0xFFFFFFFF
        size = _record_bytes(n)
        pad = size - _EDGE_BYTES - n
        end = at + _EDGE.size + n
        if pad:
            self.map[end : end + pad] = _PADS[pad]
        _EDGE.pack_into(self.map, end + pad, tag, n)
        _EDGE.pack_into(self.map, at, n, tag)
        self._pos = pos + size
        self._written[0] = pos + size

    def close(self, mark: bool = True) -> None:
        """Mark the ring closed (nothing more comes: a reader may remove it once it has taken the rest); with
        ``mark`` False, only let go of the map and the file's lock (a forked child's copy of the writer)."""
        if mark:
            self._closed[0] = 1
        super().close()


class RingReader(_Ring):
    """The reading end: takes the records published since its last pass, frees them when told.

    Args:
        path: a ring's file, made by a :class:`RingWriter`.
        start: the position to read from (a journal's kept position after a restart); by default
            the ring's ``released``, the first record no reader was done with.

    Raises:
        RingDamaged: the file is not a ring of this version, or ``start`` is outside what it holds.
    """

    def __init__(self, path: Path, start: int | None = None) -> None:
        with open(path, "rb") as f:
            head = f.read(_META.size)
        if len(head) < _META.size:
            raise RingDamaged(f"{path}: {len(head)} bytes, shorter than a ring's header")
        magic, version, capacity, self.writer_pid = _META.unpack(head)
        if magic != MAGIC or version != VERSION or capacity < _MIN_CAPACITY or capacity & (capacity - 1):
            raise RingDamaged(f"{path}: not a version-{VERSION} ring (magic {magic!r}, version {version})")
        super().__init__(path, _map(path, HEADER_BYTES + capacity, create=False), capacity)
        self.cursor = self.released if start is None else start
        """The position of the next record to read."""
        if not self.released <= self.cursor <= self.written or self.cursor & 7:
            raise RingDamaged(f"{path}: position {self.cursor} is outside {self.released}..{self.written}")

    def records(self, *, final: bool = False) -> Iterator[tuple[int, memoryview]]:
        """Each record past :attr:`cursor` as (its position, a view of its body valid until :meth:`release` frees
        it), moving the cursor as :meth:`spans` does (which checks them: ``final`` and the errors are its)."""
        for n, first, count in self.spans(final=final):
            size, at = _record_bytes(n), HEADER_BYTES + (first & self._mask) + _EDGE.size
            for i in range(count):
                yield first + i * size, self._view[at + i * size : at + i * size + n]

    def runs(self, *, final: bool = False) -> Iterator[tuple[int, int, memoryview]]:
        """:meth:`spans`, each run as (body length, count, a view of its records valid until :meth:`release`)."""
        for n, pos, count in self.spans(final=final):
            at = HEADER_BYTES + (pos & self._mask)
            yield n, count, self._view[at : at + count * _record_bytes(n)]

    def spans(self, *, final: bool = False) -> Iterator[tuple[int, int, int]]:
        """The records past :attr:`cursor` in runs of equal body length, each checked whole: (body length, the
        first's position, count), moving the cursor past each run. A run never wraps: its records are
        ``count * (16 + length padded to 8)`` bytes at map offset ``HEADER_BYTES + position % capacity``.

        For a reader that decodes many small records with numpy (:mod:`.ringrows`). A run's first 8 records
        are checked one by one (~0.3 µs each: calls of alternating kinds make runs of one record, where a
        numpy probe cost ~10 µs), the rest as arrays in growing probes (32, 128, ... records). Stops at a
        record whose far end is not visible yet (see the module's memory order), unless the writer is gone:
        ``final`` (the caller knows its process ended) or a closed ring.

        Raises:
            RingDamaged: a record does not read whole although the writer is gone.
        """
        written, mask, edge, m = self.written, self._mask, _EDGE.unpack_from, self.map
        while self.cursor < written:
            pos = self.cursor
            at = HEADER_BYTES + (offset := pos & mask)
            n, tag = edge(m, at)
            if tag != (pos >> 3) & 0xFFFFFFFF:
                self._damaged(pos, f"its tag is {tag}, not {(pos >> 3) & 0xFFFFFFFF}", final)
                return
            if n == SKIP:
                self.cursor = pos + self.capacity - offset
                continue
            size = _record_bytes(n)
            if n > self.capacity // 4 or pos + size > written:
                self._damaged(pos, f"its length {n} runs past the {written} bytes written", final)
                return
            limit, count = min(written - pos, self.capacity - offset) // size, 0
            while count < limit and count < 8:
                t = ((pos >> 3) + count * (size >> 3)) & 0xFFFFFFFF
                if edge(m, at + count * size) != (n, t) or edge(m, at + count * size + size - 8) != (t, n):
                    break
                count += 1
            if count == 0:
                self._damaged(pos, "its two ends disagree", final)
                return
            if count == 8 < limit:
                count += self._run(at + 8 * size, pos + 8 * size, n, size, limit - 8)
            self.cursor = pos + count * size
            yield n, pos, count

    def _run(self, at: int, pos: int, n: int, size: int, limit: int) -> int:
        """How many whole records of body length ``n`` (``size`` bytes) follow map offset ``at`` (position ``pos``)."""
        k, probe, words = 0, 32, size // 4
        while k < limit:
            m = min(probe, limit - k)
            w = np.frombuffer(self.map, dtype="<u4", count=m * words, offset=at + k * size).reshape(m, words)
            tags = ((np.arange(k, k + m, dtype=np.uint64) * (size >> 3) + (pos >> 3)) & 0xFFFFFFFF).astype(np.uint32)
            ok = (w[:, 0] == n) & (w[:, 1] == tags) & (w[:, -2] == tags) & (w[:, -1] == n)
            del w
            if not ok.all():
                return k + int(np.argmin(ok))
            k += m
            probe *= 4
        return k

    def _damaged(self, pos: int, why: str, final: bool) -> None:
        """A record at ``pos`` does not read whole: damage once the writer is gone, not visible yet before."""
        if final or self.writer_closed:
            raise RingDamaged(f"{self.path}: the record at {pos} is damaged: {why}")

    def release(self, upto: int) -> None:
        """Free every byte below position ``upto`` (the records a commit now holds) for the writer.

        Raises:
            ValueError: ``upto`` is behind what was released or past what was read.
        """
        if not self.released <= upto <= self.cursor:
            raise ValueError(f"release to {upto}: outside {self.released}..{self.cursor} (released..read)")
        self._released[0] = upto

    @property
    def drained(self) -> bool:
        """Whether the writer closed and every record it published was released: the file may go."""
        return self.writer_closed and self.released == self.written
