"""Durable local queue of wire messages: an append-only file of checksummed records.

Record layout: ``u32 length | u32 crc32 | msgpack [kind, seq, envelope, payload]`` (little
endian). A torn or corrupt tail (a crash mid-write) is detected by length/CRC, reported with
the number of bytes cut, and truncated; everything before it is intact.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.errors import SinkError
from coordinator.transport import pages
from coordinator.transport.plain import list_head

__all__ = ["SegmentedSpool", "SpoolRecord", "SpoolWriter", "read_spool", "spool_records"]

_log = logging.getLogger(__name__)
_HEAD = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled message."""

    kind: int
    seq: int
    envelope: bytes
    payload: bytes


class SpoolWriter:
    """Appends records to one spool file (one writer; the sender thread)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        """Open ``path`` for appending, creating its 0700 directory.

        Raises:
            SinkError: the file cannot be created.
        """
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            raise SinkError(f"cannot open spool {self.path}: {e}") from e
        self._f = os.fdopen(fd, "ab", buffering=0)
        self.records = 0
        try:
            self.size = os.fstat(fd).st_size
            """Bytes in the file: the next record's offset (kept here, not asked of the OS on every write)."""
        except OSError as e:
            self._f.close()
            raise SinkError(f"cannot open spool {self.path}: {e}") from e

    def append(self, kind: int, seq: int, envelope: bytes, payload: bytes | memoryview) -> None:
        """Write one record (all of it, or raise).

        Raises:
            SinkError: the write failed (disk full, I/O error); the record is not in the spool.
        """
        # The body is ``packb([kind, seq, envelope, payload])``, written as its head and the payload
        # itself: a full batch's megabyte is neither packed nor joined to its head (two copies into
        # fresh pages holding the GIL); the checksum and the write release it.
        start = list_head([kind, seq, envelope], len(payload))
        size = len(start) + len(payload)
        parts = [_HEAD.pack(size, zlib.crc32(payload, zlib.crc32(start))), start, payload]
        pos = self.size
        try:
            try:
                n = os.writev(self._f.fileno(), parts)
                if n != _HEAD.size + size:
                    raise OSError(f"short write ({n} of {_HEAD.size + size} bytes)")
                if self.fsync:
                    os.fsync(self._f.fileno())
            except OSError:
                # Never leave half a record behind: a reader would stop at it.
                self._f.truncate(pos)
                raise
        except OSError as e:
            raise SinkError(f"spool {self.path}: write failed: {e}") from e
        self.size = pos + _HEAD.size + size
        self.records += 1

    def truncate(self) -> int:
        """Drop every record (all acknowledged); returns the bytes freed.

        Raises:
            SinkError: the file cannot be truncated.
        """
        try:
            self._f.truncate(0)  # O_APPEND: the next write lands at the (new) end, no seek needed
        except OSError as e:
            raise SinkError(f"spool {self.path}: truncate failed: {e}") from e
        size, self.size = self.size, 0
        self.records = 0
        return size

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if not self._f.closed:
            os.fsync(self._f.fileno())
            self._f.close()


def read_spool(path: str | os.PathLike[str], *, repair: bool = False) -> Iterator[SpoolRecord]:
    """Yield every intact record of a spool file, in order.

    A torn or corrupt tail ends the iteration with a warning naming the bytes skipped; with
    ``repair=True`` the file is truncated there.
    """
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        bad = None
        if len(data) - pos < _HEAD.size:
            bad = "torn header"
        else:
            n, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size : pos + _HEAD.size + n]
            if n > MAX_FRAME_BYTES * 2 or len(body) != n:
                bad = "torn record"
            elif zlib.crc32(body) != crc:
                bad = "checksum mismatch"
            else:
                try:
                    kind, seq, env, payload = msgpack.unpackb(body, raw=False, strict_map_key=True)
                except (ValueError, TypeError, msgpack.UnpackException) as e:  # corrupt despite the CRC: a torn tail
                    bad = f"undecodable record ({type(e).__name__})"
                else:
                    yield SpoolRecord(kind, seq, env, payload)
                    pos += _HEAD.size + n
                    continue
        _log.warning(
            "spool %s: %s at byte %d; %d bytes after it ignored%s",
            p,
            bad,
            pos,
            len(data) - pos,
            " and truncated" if repair else "",
        )
        if repair:
            with open(p, "r+b") as f:
                f.truncate(pos)
        return


def _read_body(f: io.RawIOBase, n: int) -> bytes | memoryview:
    """The next ``n`` bytes of ``f`` (fewer at its end); a large body read into pooled pages, the GIL released.

    ``f.read`` would return a new bytes object, and decoding the record would copy the payload
    out of it once more, holding the GIL: 0.3-0.5 ms on the sender thread at full load, where
    held batches come back from the spool to be sent (docs/performance.md round 28). Here the
    kernel copies the body into a map of :mod:`~coordinator.transport.pages` during the read,
    outside the GIL, and the payload stays where it landed.
    """
    if n <= _MAP_BYTES:
        data = b""
        while len(data) < n:  # an unbuffered read may return less than asked before the end
            more = f.read(n - len(data))
            if not more:
                break
            data += more
        return data
    body = pages.take(n).data
    got = 0
    while got < n:
        k = f.readinto(body[got:])
        if not k:
            break
        got += k
    return body if got == n else body[:got]


def _record(body: bytes | memoryview) -> tuple[int, int, bytes, bytes | memoryview]:
    """A checked record's kind, sequence number, envelope and payload; a payload past :data:`_MAP_BYTES` is a view.

    The body is ``[kind, seq, envelope, payload]`` as msgpack (:meth:`SpoolWriter.append`): the
    first three are decoded, the payload's bin header read, and the payload left in place, as a
    read-only view of ``body``. Any other layout is decoded whole, which raises on what is wrong.
    """
    if len(body) > _MAP_BYTES:
        head = msgpack.Unpacker(raw=False, max_buffer_size=_HEAD_PEEK)
        head.feed(body[:_HEAD_PEEK])
        try:
            parts = head.read_array_header(), head.unpack(), head.unpack(), head.unpack()
        except (ValueError, msgpack.UnpackException):  # OutOfData too: a head longer than the peek
            parts = None
        if parts is not None and parts[0] == 4:
            size, at = _bin_size(body, head.tell())
            if at + size == len(body):
                return parts[1], parts[2], parts[3], memoryview(body)[at:].toreadonly()
    kind, seq, env, payload = msgpack.unpackb(body, raw=False)
    return kind, seq, env, payload


def _bin_size(body: bytes | memoryview, at: int) -> tuple[int, int]:
    """The length of the msgpack bin at ``body[at]`` and where its bytes start; (-1, 0) when it is not a bin."""
    width = _BIN_WIDTHS.get(body[at], 0)
    if not width:
        return -1, 0
    return int.from_bytes(body[at + 1 : at + 1 + width], "big"), at + 1 + width


_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""msgpack's bin8, bin16 and bin32 tags: the bytes of the length that follows each."""

_MAP_BYTES = 128 * 1024
"""A record larger than this is read into pooled pages, its payload a view of them (see :func:`_read_body`)."""

_HEAD_PEEK = 4096
"""Bytes of a record's body that hold its kind, sequence number, envelope and the payload's bin header."""


class SegmentedSpool:
    """A sender's write-ahead spool: the batches not acknowledged in time, or held back, in sequence order.

    Records live in segment files named by their first sequence number; a segment is deleted
    once every batch in it is acknowledged. What remains after a crash is what was not
    acknowledged and had been written (:mod:`.pipeline` says when), and ``coordinator sync`` (or
    the aggregator) delivers it later; the aggregator's high-water marks drop anything that had
    in fact arrived.
    """

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int, max_bytes: int) -> None:
        """Create the 0700 directory.

        Raises:
            SinkError: it cannot be created.
        """
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise SinkError(f"cannot create spool directory {self.dir}: {e}") from e
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._segments: list[tuple[int, Path, int]] = []  # (first seq, path, last seq)
        self._writer: SpoolWriter | None = None
        self._size = 0

    @property
    def size_bytes(self) -> int:
        """Bytes currently held on disk."""
        return self._size

    def full(self) -> bool:
        """True when the spool holds ``max_bytes`` or more."""
        return self._size >= self.max_bytes

    def append(self, kind: int, seq: int, envelope: bytes, payload: bytes | memoryview) -> tuple[Path, int]:
        """Append one record; returns its location (segment, byte offset).

        Raises:
            SinkError: the write failed (disk full); the spool is unchanged.
        """
        if self._writer is None or self._writer_bytes() >= self.segment_bytes:
            self._roll(seq)
        assert self._writer is not None
        offset = self._writer_bytes()
        self._writer.append(kind, seq, envelope, payload)
        first, path, _ = self._segments[-1]
        self._segments[-1] = (first, path, seq)
        self._size += self._writer_bytes() - offset
        return path, offset

    def _writer_bytes(self) -> int:
        assert self._writer is not None
        return self._writer.size

    def _roll(self, seq: int) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.dir / f"{seq:016d}.seg"
        self._writer = SpoolWriter(path)
        self._segments.append((seq, path, seq - 1))

    def read_payload(self, loc: tuple[Path, int], seq: int) -> bytes | memoryview:
        """The payload of batch ``seq``, read back from ``loc``; a large one is a view of what was read, not a copy.

        Raises:
            SinkError: the record is missing or corrupt, or holds another batch.
        """
        path, offset = loc
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                n, crc = _HEAD.unpack(f.read(_HEAD.size))
                if n > MAX_FRAME_BYTES * 2:
                    raise SinkError(f"spool {path}: record at byte {offset} is corrupt (length {n})")
                body = _read_body(f, n)
        except (OSError, struct.error) as e:
            raise SinkError(f"spool {path}: cannot read the record at byte {offset}: {e}") from e
        if len(body) != n or zlib.crc32(body) != crc:
            raise SinkError(f"spool {path}: record at byte {offset} is corrupt")
        _, got, _, payload = _record(body)
        if got != seq:
            raise SinkError(f"spool {path}: the record at byte {offset} holds batch {got}, not {seq}")
        return payload

    def acked_through(self, seq: int) -> None:
        """Every batch up to ``seq`` is acknowledged: delete the segments that hold only those.

        The open segment, once all of it is acknowledged (at a steady load, on almost every
        ack), is emptied and kept open instead: truncating it costs one syscall, where closing
        (with its fsync), unlinking and creating the next file cost several. Its name (its first
        sequence number when it was created) stays below every later record's, so the segments
        still read back in sequence order.
        """
        while self._segments and self._segments[0][2] <= seq:
            first, path, last = self._segments[0]
            if self._writer is not None and path == self._writer.path:
                if last >= first:
                    self._size -= self._writer.truncate()
                    self._segments[0] = (first, path, first - 1)
                return  # the open segment is now empty
            self._segments.pop(0)
            try:
                self._size -= path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass  # removed already (a concurrent `coordinator sync`); nothing left to free

    def close(self, *, remove_if_empty: bool = True) -> None:
        """Close the open segment; remove the directory if nothing is left in it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if remove_if_empty:
            for first, path, last in list(self._segments):
                if last < first and path.exists() and path.stat().st_size == 0:
                    path.unlink()
                    self._segments.remove((first, path, last))
            try:
                self.dir.rmdir()
            except OSError:
                pass  # not empty: unacknowledged batches stay for `coordinator sync`


def spool_records(directory: str | os.PathLike[str]) -> Iterator[SpoolRecord]:
    """Every intact record of a spool directory's segments, in sequence order."""
    for seg in sorted(Path(directory).glob("*.seg")):
        yield from read_spool(seg)
