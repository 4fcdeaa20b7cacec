"""Durable local queue of wire messages: an append-only file of checksummed records.

Record layout: ``u32 length | u32 crc32 | msgpack [kind, seq, envelope, payload]`` (little
endian). A torn or corrupt tail (a crash mid-write) is detected by length/CRC, reported with
the number of bytes cut, and truncated; everything before it is intact.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from coordinator._defaults import MAX_FRAME_BYTES
from coordinator.errors import SinkError

__all__ = ["SpoolRecord", "SpoolWriter", "read_spool"]

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

    def append(self, kind: int, seq: int, envelope: bytes, payload: bytes) -> None:
        """Write one record (all of it, or raise).

        Raises:
            SinkError: the write failed (disk full, I/O error); the record is not in the spool.
        """
        body = msgpack.packb([kind, seq, envelope, payload], use_bin_type=True)
        rec = _HEAD.pack(len(body), zlib.crc32(body)) + body
        try:
            pos = self._f.tell()
            try:
                self._f.write(rec)
                if self.fsync:
                    os.fsync(self._f.fileno())
            except OSError:
                # Never leave half a record behind: a reader would stop at it.
                self._f.truncate(pos)
                raise
        except OSError as e:
            raise SinkError(f"spool {self.path}: write failed: {e}") from e
        self.records += 1

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
                except Exception as e:  # noqa: BLE001 - corrupt despite the CRC: treat like a torn tail
                    bad = f"undecodable record ({type(e).__name__})"
                else:
                    yield SpoolRecord(kind, seq, env, payload)
                    pos += _HEAD.size + n
                    continue
        _log.warning("spool %s: %s at byte %d; %d bytes after it ignored%s", p, bad, pos,
                     len(data) - pos, " and truncated" if repair else "")  # fmt: skip
        if repair:
            with open(p, "r+b") as f:
                f.truncate(pos)
        return
