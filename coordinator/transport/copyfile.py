"""A rank's copy file (:mod:`.copies`): a mapped file of records, reused from one generation to the next.

Record layout, little-endian: ``u32 length | u32 crc32 | msgpack body``; a body is
``[ROWS, gen, [[id, steps, values], ...], [[id, key or [keys]], ...]]`` (each id is named in the
first record of the generation that uses it; a frame's values are step-major, one row of
``len(keys)`` values per step) or ``[CUT, gen, first_seq, last_seq]``. Zeros (the file's unused
allocation), a record of another generation (the one before it in the same file) or a torn
record (the kill came mid-copy) end a generation (:mod:`.copyread` reads them back).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

__all__ = ["CUT", "HEAD", "PREFIX", "ROWS", "ZERO_HEAD", "CopyFile", "copy_path"]

ROWS = 0
CUT = 1
HEAD = struct.Struct("<II")
"""A record's header: its body's length and CRC-32."""
ZERO_HEAD = bytes(HEAD.size)
"""What follows a file's last record."""
PREFIX = "copy-"
_MAP_BYTES = 256 * 1024
"""A file is first allocated and mapped this large (then doubled as needed); what no record used
stays zero."""


def copy_path(directory: Path, slot: int) -> Path:
    """Copy file ``slot`` (0 or 1: a generation's number modulo 2) of a rank's spool directory."""
    return directory / f"{PREFIX}{slot}"


class CopyFile:
    """One of a rank's two copy files, mapped; which generation it holds and where its next record goes."""

    __slots__ = ("gen", "map", "path", "pos")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: mmap.mmap | None = None
        self.pos = 0
        self.gen = -1

    def start(self, gen: int) -> None:
        """Take the file for generation ``gen``: its records start again at 0, where a zero header ends them."""
        m = self.map if self.map is not None else self._grow(HEAD.size)
        m[0 : HEAD.size] = ZERO_HEAD
        self.gen, self.pos = gen, 0

    def write(self, body: bytes) -> None:
        """Append one record (mapping, or growing, the file first when it has no room).

        The bytes after the last record are always a zero header, so the records of an earlier
        generation in the file, or of an earlier attempt at this one, are never read as its own:
        the new end's header is zeroed first, then the body, then the record's own header goes
        over the old end's zeros. The file's blocks are allocated before it is mapped, so a full
        disk is an ``OSError`` here, never a ``SIGBUS`` on a store into the map.
        """
        n = HEAD.size + len(body)
        m = self.map
        if m is None or self.pos + n + HEAD.size > len(m):
            m = self._grow(self.pos + n + HEAD.size)
        pos = self.pos
        m[pos + n : pos + n + HEAD.size] = ZERO_HEAD
        m[pos + HEAD.size : pos + n] = body
        m[pos : pos + HEAD.size] = HEAD.pack(len(body), zlib.crc32(body))
        self.pos = pos + n

    def _grow(self, need: int) -> mmap.mmap:
        size = max(_MAP_BYTES, 1 << (need - 1).bit_length())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            m = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.close()
        self.map = m
        return m

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
