"""Rows in a rank's ring (:mod:`.ring`): a ``log()`` call's numbers at a step, as one record each.

A row is the values of one *frame* (a tuple of keys, in the order the call gave them) at one step.
Its record's body is ``u32 frame id | u32 stamp | i64 step | f64 value x len(keys)``; the frame's keys
are named once, in the ring's *names file* beside it (``<ring>.names``), before the first row that
uses the id. The names live outside the ring because the ring's bytes are freed as soon as their
rows are committed: a reader that starts again from a journal's position, long after a frame's
first row, still finds its keys. The names file is append-only, each entry ``u32 length | u32
crc32 | msgpack [id, [key, ...]]``; a kill mid-append leaves a torn last entry, which no row uses
(the row is written after it) and which the reader ignores.

A row's *stamp* is when it was written: the machine's ``CLOCK_MONOTONIC`` in units of 2**20 ns
(~1 ms), modulo 2**32 (:func:`stamp`; 0 says nothing). The aggregator reads a ring on the same
machine, so the same clock tells it how long ago each row was written (:func:`ages_s`): a rank's
progress is dated when it logged, not when a drain (every 100 ms to 1 s) happened to read it, which
is what tells a straggler that logs 80 ms after the others from them.

The rank's :class:`RowWriter` is :mod:`coordinator.client.ringlog`'s, the aggregator's
:class:`RowReader` :mod:`coordinator.aggregator.rings`' (``Settings.rings``); measured by
``benchmarks/ring_calls.py`` and ``benchmarks/shared_rings.py``.
"""

from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import msgpack
import numpy as np

from coordinator.transport import wire
from coordinator.transport.ring import HEADER_BYTES, Framing, RingDamaged, RingReader, RingWriter
from coordinator.transport.ringscan import span_table

__all__ = ["STAMP_SHIFT", "RowReader", "RowWriter", "Rows", "ages_s", "names_path", "row_batches", "stamp"]

_HEAD = 16
"""A row's body before its values: the frame id, the stamp, the step."""
STAMP_SHIFT = 20
"""A stamp counts ``CLOCK_MONOTONIC`` nanoseconds >> this (units of ~1.05 ms)."""
_STAMP_MASK = 0xFFFFFFFF
_NAME_HEAD = struct.Struct("<II")
_MAX_NAMES_ENTRY = 1 << 26

Rows = dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Rows read back, by frame: (steps, int64 of n), (values, float64 of n x len(keys)) and (stamps,
uint32 of n), in write order."""

_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Some of a frame's rows in a pass: (steps, values, stamps, each row's place in the pass)."""


def _joined(got: list[_Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's parts of a pass as one (steps, values, stamps)."""
    if len(got) == 1:
        return got[0][0], got[0][1], got[0][2]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), np.concatenate([g[2] for g in got])


def _copied(reader: RingReader, pos: np.ndarray, size: int) -> np.ndarray:
    """Copies of the whole records at ``pos`` (positions read, not yet released; ``size`` bytes each), one row of
    u64 words a record: one slice where they lie back to back in the map, else one gather."""
    at = HEADER_BYTES + (pos & (reader.capacity - 1))
    words = np.frombuffer(reader.map, dtype="<u8")
    try:
        if int(at[-1] - at[0]) == (len(at) - 1) * size:  # one run, or runs back to back
            return words[at[0] // 8 : at[-1] // 8 + size // 8].reshape(len(at), size // 8).copy()
        gathered: np.ndarray = words[(at // 8)[:, None] + np.arange(size // 8)]
        return gathered
    finally:
        del words  # nothing may keep the map exported: the reader closes it


def stamp() -> int:
    """A row's stamp for now (see the module's docstring)."""
    return time.monotonic_ns() >> STAMP_SHIFT & _STAMP_MASK


def ages_s(stamps: np.ndarray, mark: int | None = None) -> np.ndarray:
    """Seconds since each of ``stamps`` (read on this machine) at ``mark`` (a stamp; default: now), 0.0 for
    a stamp of 0 (none)."""
    ages = ((stamp() if mark is None else mark) - stamps.astype(np.int64)) & _STAMP_MASK
    return np.where(stamps == 0, 0.0, ages * (2.0**STAMP_SHIFT / 1e9))


def names_path(ring: Path) -> Path:
    """The names file of the ring at ``ring``."""
    return ring.with_name(ring.name + ".names")


class RowWriter:
    """Writes rows into a ring, naming each frame the first time one of its rows goes in.

    One thread writes (the training thread, under the run's lock).
    """

    def __init__(self, ring: RingWriter) -> None:
        self.ring = ring
        self._frames: dict[tuple[str, ...], tuple[int, Framing]] = {}
        self._names = os.open(names_path(ring.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)

    def row(self, keys: tuple[str, ...], step: int, values: Iterable[float]) -> bool:
        """Write ``values`` (one a key, in the order of ``keys``) at ``step``; False when the ring has no room.

        Raises:
            ValueError: the row is larger than the ring takes in one record, or has no key.
            struct.error: a value is not a number, or there are not ``len(keys)`` of them (nothing
                is published then).
            OSError: the names file could not be written (a new frame on a full disk).
        """
        f = self._frames.get(keys)
        if f is None:
            f = self._name(keys)
        return self.ring.pack_row(f[1], (f[0], stamp(), step), values)

    def frame(self, keys: tuple[str, ...]) -> tuple[int, Framing]:
        """``keys``' frame id and its rows' framing, naming the frame first if it is new (a caller that keeps
        them writes its rows with ``ring.pack_row(framing, (fid, stamp(), step), values)``, one lookup fewer a row).

        Raises:
            ValueError, OSError: as :meth:`row`.
        """
        return self._frames.get(keys) or self._name(keys)

    def _name(self, keys: tuple[str, ...]) -> tuple[int, Framing]:
        """Give ``keys`` the next frame id and append its entry to the names file (before any row uses it)."""
        if not keys:
            raise ValueError("a row needs at least one key")
        s = struct.Struct(f"<IIq{len(keys)}d")
        if s.size > self.ring.largest:
            raise ValueError(f"a row of {len(keys)} keys is larger than the ring takes ({self.ring.largest} bytes)")
        fid = len(self._frames)
        body = msgpack.packb([fid, list(keys)])
        entry = _NAME_HEAD.pack(len(body), zlib.crc32(body)) + body
        end = os.lseek(self._names, 0, os.SEEK_END)
        try:
            if os.write(self._names, entry) != len(entry):  # a short write: the disk or a limit is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(names_path(self.ring.path)))
        except OSError:
            os.ftruncate(self._names, end)  # no torn entry left for a later one to sit behind
            raise
        f = self._frames[keys] = (fid, self.ring.framing(s))
        return f

    def close(self) -> None:
        """Close the names file and the ring (marking it closed: nothing more comes)."""
        os.close(self._names)
        self.ring.close()


class RowReader:
    """Reads the rows a :class:`RowWriter` put in a ring, grouped by frame, from the reader's cursor."""

    def __init__(self, reader: RingReader) -> None:
        self.reader = reader
        self.frames: dict[int, tuple[str, ...]] = {}
        self._names_read = 0

    def read(self, *, final: bool = False) -> Rows:
        """The rows published past the cursor, by frame, each key's points in write order (the cursor moves past
        them).

        The records are found in one C call where built (:func:`.ringscan.span_table`), and decoded with numpy,
        all the pass's records of one size at once (:meth:`_take`): a pass costs about as much per size as
        one row, whether its rows came in runs of one frame, of one-key frames (scalars logged one by one),
        or of calls that alternate sizes (a dict, then an ``append()``, at every step: decoded run by run,
        these cost ~20 µs a row; :mod:`benchmarks.ring_read`).

        Frames come back side by side, so frames that share a key (a dict, then an ``append()`` of one of its
        keys; two dicts with a key in common, as the frameworks' training and validation dicts share
        ``epoch``) would lose that key's order between them: those frames come back split by the frames that
        hold each key, the keys that the same frames hold as one frame, their points from all of those frames
        in the order they were written. The training dict then comes back as one frame without ``epoch``,
        ``epoch`` alone, and the validation dict without it (one frame per key, as before, made every key of
        the dict go point by point in the aggregator). A pass takes every row published (stopping at a clash
        instead made one pass a row where such frames alternate: the aggregator fell behind a rank logging
        them flat out).

        Raises:
            RingDamaged: a record is not a row of a named frame, or (see :meth:`RingReader.spans`)
                does not read whole although the writer is gone. Nothing of the pass is taken then.
        """
        parts: dict[int, list[_Part]] = {}
        start = self.reader.cursor
        try:
            table = span_table(self.reader, final=final)  # runs of one size: body length, position, count
            n, pos, count = table[:, 0], table[:, 1], table[:, 2]
            bad = np.flatnonzero((n < _HEAD) | ((n - _HEAD) % 8 != 0))
            if len(bad):
                raise RingDamaged(f"{self.reader.path}: the record at {pos[bad[0]]} is {n[bad[0]]} bytes, not a row")
            places = np.cumsum(count) - count  # each run's first row's place in the pass
            sizes, first = np.unique(n, return_index=True)
            for size in sizes[np.argsort(first)].tolist():  # in the order each size first came
                runs = n == size
                self._take(size, pos[runs], count[runs], places[runs], parts)
        except RingDamaged:
            self.reader.cursor = start  # nothing of this pass is taken: the rows before the damage stay
            raise
        owners: dict[str, list[int]] = {}
        for fid in parts:
            for key in self.frames[fid]:
                owners.setdefault(key, []).append(fid)
        tangled = {fid for fids in owners.values() if len(fids) > 1 for fid in fids}
        rows: Rows = {}
        for fid, got in parts.items():
            if fid not in tangled:
                rows[self.frames[fid]] = _joined(got)
        if tangled:
            shares: dict[tuple[int, ...], list[str]] = {}  # the keys of tangled frames, by the frames that hold them
            for key, holders in owners.items():
                if holders[0] in tangled:  # every frame with this key is, as each shares a key with another
                    shares.setdefault(tuple(holders), []).append(key)
            for fids, keys in shares.items():
                rows[tuple(keys)] = self._shared(keys, fids, parts)
        return rows

    def _shared(
        self, keys: list[str], fids: tuple[int, ...], parts: dict[int, list[_Part]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points of ``keys``, which frames ``fids`` of a pass all hold (and no other frame of it), in write
        order: (steps, values n x len(keys), stamps)."""
        got: list[_Part] = []
        for fid in fids:
            at = {k: i for i, k in enumerate(self.frames[fid])}
            cols = [at[k] for k in keys]
            got.extend((p[0], p[1][:, cols], p[2], p[3]) for p in parts[fid])
        if len(got) == 1:  # one frame's own keys: its rows are in write order
            return got[0][0], got[0][1], got[0][2]
        order = np.argsort(np.concatenate([g[3] for g in got]), kind="stable")
        steps = np.concatenate([g[0] for g in got])[order]
        values = np.concatenate([g[1] for g in got])[order]
        return steps, values, np.concatenate([g[2] for g in got])[order]

    def _take(
        self, n: int, positions: np.ndarray, counts: np.ndarray, places: np.ndarray, parts: dict[int, list[_Part]]
    ) -> None:
        """Decode the pass's rows of body length ``n`` (runs of ``counts`` records at ``positions``, the first of
        each at ``places`` in the pass) into ``parts``, by frame, each row with its place in the pass."""
        size = n + 16
        k = (n - _HEAD) // 8
        dt = np.dtype(
            [
                ("edge", "<u8"),
                ("fid", "<u4"),
                ("stamp", "<u4"),
                ("step", "<i8"),
                ("values", "<f8", (k,)),
                ("tail", "<u8"),
            ]
        )
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        at = np.repeat(places, counts) + within
        pos = np.repeat(positions, counts) + within * size  # each row's position
        a = _copied(self.reader, pos, size).view(dt)[:, 0]
        fids, steps, values, stamps = a["fid"].copy(), a["step"].copy(), a["values"].copy(), a["stamp"].copy()
        uniq = np.unique(fids).tolist()
        for fid in uniq:
            self._keys(fid, k, fids, pos)
        if len(uniq) == 1:
            groups: list[tuple[int, _Part]] = [(uniq[0], (steps, values, stamps, at))]
        else:  # frames interleaved (scalars key by key): sorted by frame, each frame's rows kept in order
            order = np.argsort(fids, kind="stable")
            fids, steps, values, stamps, at = fids[order], steps[order], values[order], stamps[order], at[order]
            cuts = [0, *(np.flatnonzero(np.diff(fids)) + 1).tolist(), len(fids)]
            groups = [
                (int(fids[lo]), (steps[lo:hi], values[lo:hi], stamps[lo:hi], at[lo:hi])) for lo, hi in pairwise(cuts)
            ]
        for fid, part in groups:
            parts.setdefault(fid, []).append(part)

    def _keys(self, fid: int, k: int, fids: np.ndarray, pos: np.ndarray) -> tuple[str, ...]:
        """Frame ``fid``'s keys (the names file read again for a new one), checked to be ``k`` (the rows of
        frames ``fids``, at positions ``pos``, have ``k`` values)."""
        keys = self.frames.get(fid)
        if keys is None:
            self._read_names()
            keys = self.frames.get(fid)
        if keys is None or len(keys) != k:
            at = int(pos[np.argmax(fids == fid)])
            why = (
                f"of frame {fid}, which no name names" if keys is None else f"{8 * k + _HEAD} bytes, not frame {fid}'s"
            )
            raise RingDamaged(f"{self.reader.path}: the row at {at} is {why}")
        return keys

    def _read_names(self) -> None:
        """Read the names file's entries past those read so far (a torn last entry waits for the next pass)."""
        with open(names_path(self.reader.path), "rb") as f:
            f.seek(self._names_read)
            data = f.read()
        at = 0
        while at + _NAME_HEAD.size <= len(data):
            n, crc = _NAME_HEAD.unpack_from(data, at)
            body = data[at + _NAME_HEAD.size : at + _NAME_HEAD.size + n]
            if n > _MAX_NAMES_ENTRY or len(body) < n or zlib.crc32(body) != crc:
                break
            fid, keys = msgpack.unpackb(body)
            self.frames[fid] = tuple(keys)
            at += _NAME_HEAD.size + n
        self._names_read += at

    def close(self) -> None:
        """Close the ring's reading end."""
        self.reader.close()


def row_batches(rows: Rows, cap: int, ts: float) -> list[bytes]:
    """Rows read from a ring as batch payloads of at most ``cap`` points each (or one row, if larger).

    Each frame's rows go as blocks, as a sender's cut of a frame sends them, so that the aggregator
    (or a node's relay forwarding them) takes a ring's rows as it takes a rank's batches.
    """
    out: list[bytes] = []
    blocks: list[wire.BlockItem] = []
    n = 0
    for keys, (steps, values, _) in rows.items():
        k = len(keys)
        lo = 0
        while lo < len(steps):
            if n and n + k > cap:
                out.append(wire.encode_chunks([], [], ts, blocks=blocks))
                blocks, n = [], 0
            hi = min(len(steps), lo + max(1, (cap - n) // k))
            blocks.append((keys, steps[lo:hi].astype("<i8").tobytes(), values[lo:hi].astype("<f8").tobytes()))
            n += (hi - lo) * k
            lo = hi
    if blocks:
        out.append(wire.encode_chunks([], [], ts, blocks=blocks))
    return out
