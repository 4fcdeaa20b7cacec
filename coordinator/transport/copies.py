"""Copies: the rows of the generation not yet cut, on disk every kill window between flushes.

The flush interval sets both what a paced job's logging costs (a flush is paid per wake-up of
the sender, its ZeroMQ thread and the aggregator, on cold caches) and what a SIGKILLed rank may
lose (the generation not yet cut). ``Settings.kill_window_s`` shorter than the flush interval
takes the two apart: between flushes, the sender thread wakes every kill window and appends the
rows logged since its last copy to a file of their generation in the rank's spool directory
(``copy-<generation>``; the page cache keeps what a killed process wrote, as it keeps the spool).
A copy is a few array slices and one ``write`` (~50 µs of CPU a wake-up in the paced job), a
flush an encoding, a send, acknowledgements, a commit.

Every cut is then written ahead to the spool before it is sent (:meth:`Copies.cut` first
records in the generation's copy file which batch numbers hold it), and the copy file goes once
those batches are on disk (:meth:`Copies.spooled`). Recovery (:mod:`~coordinator.aggregator.recovery`:
a lost rank's spool at the run's end, ``coordinator sync``) replays the spool first, then each
copy file the spool does not cover, as the sender's next batch (:func:`read_copies`):

* no cut record: the generation was never cut, nothing of it is in the spool: its rows go in;
* a cut record whose batches the aggregator now holds (up to its last number): skipped;
* one whose first batch it does not hold: the write-ahead never happened; its rows go in;
* one whose batches it holds only in part (a kill between two writes ahead of one cut of several
  batches): its rows cannot be told apart, so none go in; reported (an event, an error).

A copy takes only rows the sender would send as they are: frames (dicts at explicit steps) and
columns whose steps are all explicit. Anything else in the generation (a step the sender numbers,
a tensor not read yet, a field write, a text) makes :meth:`Copies.copy` refuse, and the sender
cuts instead, as every flush interval before: the kill window holds either way. A failed write
(full disk) is reported once a pause and the sender cuts instead, until a second has passed.

Record layout, little-endian: ``u32 length | u32 crc32 | msgpack body``; a body is
``[ROWS, gen, [[id, steps, values], ...], [[id, key or [keys]], ...]]`` (each id is named in the first
record of the file that uses it; a frame's values are step-major, one row of ``len(keys)`` values
per step) or ``[CUT, gen, first_seq, last_seq]``. A torn last record (the kill came mid-write)
ends the file.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.core.columns import Column, from_le, to_le
from coordinator.errors import ProtocolError, SinkError
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.frames import Frame
from coordinator.transport.plain import packb, unpack

__all__ = ["CUT", "ROWS", "CopiedGeneration", "Copies", "copy_batches", "mark_replayed", "read_copies"]

_log = logging.getLogger(__name__)

ROWS = 0
CUT = 1
_HEAD = struct.Struct("<II")
_PREFIX = "copy-"
_PAUSE_AFTER_FAILURE_S = 1.0
_MAX_RECORD_BYTES = 1 << 31
_NUMPY_MIN_ROWS = 64
"""New rows of a column past which their smallest step is found with numpy (a Python ``min``
builds an int per row)."""


def copy_path(directory: Path, gen: int) -> Path:
    """The copy file of generation ``gen`` in a rank's spool directory."""
    return directory / f"{_PREFIX}{gen:012d}"


class Copies:
    """The sender thread's copies of the generation not yet cut (every call with the buffer lock held, or its own)."""

    def __init__(
        self, directory: str | os.PathLike[str], buf: Buffer, *, rank: int, deferred: Callable[[], bool] | None = None
    ) -> None:
        """Args:
        directory: the rank's spool directory (created if missing).
        buf: the run's buffer (copied from; a failed write is reported there).
        rank: this rank (for messages).
        deferred: True while a tensor logged waits to be read (lock held): the sender must cut
            (the client's step numbering says; None: never).
        """
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buf = buf
        self._rank = rank
        self._deferred = deferred if deferred is not None else _never
        self._gen = -1
        """The generation the open file holds (-1: none)."""
        self._fd = -1
        self._done: dict[object, int] = {}
        """Frame key tuple or column key -> its rows of this generation already copied."""
        self._frames: dict[tuple[str, ...], Frame] = {}
        """The frames copied from in this generation (one gone within it was spilled into columns)."""
        self._ids: dict[object, int] = {}
        """Frame key tuple or column key -> its id in the open file."""
        self._cut: list[tuple[int, Path]] = []
        """(last batch number, copy file) of generations cut and not yet all on disk in the spool."""
        self._retry_at = 0.0
        self.copies = 0
        """Copies written (for tests and benchmarks)."""

    def copy(self) -> bool:
        """Copy the rows logged since the last copy; False: the generation holds what a copy cannot (cut instead)."""
        b = self._buf
        with b.lock:
            if b.fields or b.texts or self._deferred() or time.monotonic() < self._retry_at:
                return False
            if b.gen != self._gen:
                self._close()
                self._gen = b.gen
                self._done, self._frames = {}, {}
            rows = self._rows(b)
            if rows is None:
                return False
            entries, names = rows
            if not entries:
                return True
            return self._write(packb([ROWS, self._gen, entries, names]))

    def _rows(self, b: Buffer) -> tuple[list[list[object]], list[list[object]]] | None:
        """The new rows as record entries and the ids they name first; None: a column has a step to number."""
        done = self._done
        for kt, fr in list(self._frames.items()):
            if b.frames.get(kt) is not fr:  # spilled into columns: they start with the rows copied
                copied = done.pop(kt, 0)
                for k in kt:
                    done[k] = copied
                del self._frames[kt]
        new = [(k, c, done.get(k, 0)) for k, c in b.cols.items() if len(c[0]) > done.get(k, 0)]
        if any(_smallest(steps, a, len(steps)) < 0 for _, (steps, _), a in new):
            return None  # before any id is given: a record not written names none
        entries: list[list[object]] = []
        names: list[list[object]] = []
        for k, (steps, values), a in new:
            n = len(steps)
            entries.append([self._id(k, k, names), to_le(memoryview(steps)[a:n]), to_le(memoryview(values)[a:n])])
        for kt, fr in b.frames.items():
            n = len(fr.steps)
            a = done.get(kt, 0)
            if n > a:
                w = len(kt)
                entries.append(
                    [
                        self._id(kt, list(kt), names),
                        to_le(memoryview(fr.steps)[a:n]),
                        to_le(memoryview(fr.values)[a * w : n * w]),
                    ]
                )
                self._frames[kt] = fr
        # Counted only once the rows are sure to be written (a refusal above copies nothing).
        for k, (steps, _) in b.cols.items():
            done[k] = len(steps)
        for kt, fr in b.frames.items():
            if fr.steps:
                done[kt] = len(fr.steps)
        return entries, names

    def _id(self, k: object, name: object, names: list[list[object]]) -> int:
        """``k``'s id in the open file; a new one is named in ``names`` (this record's)."""
        i = self._ids.get(k)
        if i is None:
            i = self._ids[k] = len(self._ids)
            names.append([i, name])
        return i

    def _write(self, body: bytes) -> bool:
        """Append one record to the open generation's file (opened on its first); False: failed (reported)."""
        try:
            if self._fd < 0:
                # Truncated: a file of this generation left by a failed attempt is written again whole.
                self._fd = os.open(copy_path(self.dir, self._gen), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(self._fd, _HEAD.pack(len(body), zlib.crc32(body)) + body)
        except OSError as e:
            self._retry_at = time.monotonic() + _PAUSE_AFTER_FAILURE_S
            self._done, self._frames = {}, {}  # start the generation again in a new file at the next copy
            self._close(unlink=True)
            self._gen = -1
            err = SinkError(f"rank {self._rank}: a copy of the uncut points failed ({e}); the sender cuts instead")
            self._buf.errors.append(err)
            self._buf.cond.notify_all()
            _log.error("%s", err)
            return False
        self.copies += 1
        return True

    def _close(self, *, unlink: bool = False) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if unlink and self._gen >= 0:
            _remove(copy_path(self.dir, self._gen))
        self._ids = {}

    def cut(self, gen: int, first_seq: int, last_seq: int) -> None:
        """Generation ``gen`` was cut as batches ``first_seq..last_seq``, to be written ahead now (sender thread).

        Records that in its copy file, if it has one, before the batches go to the spool: a kill
        between the two leaves the file, and recovery then finds the batches by number.
        """
        with self._buf.lock:
            if gen != self._gen:
                return  # nothing of it was copied
            path = copy_path(self.dir, gen)
            ok = self._write(packb([CUT, gen, first_seq, last_seq]))
            self._close()
            self._gen = -1
        if ok:
            self._cut.append((last_seq, path))
        else:
            _remove(path)  # its batches are in memory, as without copies

    def spooled(self, through: int) -> None:
        """Every batch numbered up to ``through`` is on disk: the copy files of their generations go."""
        while self._cut and self._cut[0][0] <= through:
            _remove(self._cut.pop(0)[1])

    def close(self, *, keep_uncut: bool = False) -> None:
        """The run closed, its cuts written ahead (:meth:`spooled` called): the open file goes, unless ``keep_uncut``.

        A cut whose batches could not be written ahead keeps its file, as the uncut generation
        does while points stay in the buffer: each is then what holds those points on disk.
        """
        with self._buf.lock:
            self._close(unlink=not keep_uncut)
            self._gen = -1


def _remove(path: Path) -> None:
    """Remove a copy file no longer needed; one that cannot be is logged (its generation's next file truncates it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        _log.warning("could not remove the copy file %s: %s", path, e)


def _never() -> bool:
    """The default ``deferred``: no tensor waits."""
    return False


def _smallest(steps: array[int], a: int, n: int) -> int:
    """The smallest of ``steps[a:n]`` (-1: a step the sender numbers)."""
    if n - a < _NUMPY_MIN_ROWS:
        return min(steps[a:n])
    return int(np.frombuffer(steps, dtype=np.int64, count=n - a, offset=a * 8).min())


@dataclass(slots=True)
class CopiedGeneration:
    """What one copy file holds: a generation's copied rows per key, in call order, and how it was cut."""

    gen: int
    path: Path
    columns: dict[str, Column] = field(default_factory=dict)
    seqs: tuple[int, int] | None = None
    """The batch numbers it was cut as (None: never cut)."""
    torn: int = 0
    """Bytes of a torn or corrupt tail (the kill came mid-write), skipped."""

    @property
    def points(self) -> int:
        return sum(len(s) for s, _ in self.columns.values())


def read_copies(directory: str | os.PathLike[str]) -> list[CopiedGeneration]:
    """The copy files in a rank's spool directory, oldest generation first."""
    out = []
    for p in sorted(Path(directory).glob(f"{_PREFIX}*")):
        try:
            gen = int(p.name[len(_PREFIX) :])
        except ValueError:
            _log.warning("ignoring unexpected file %s", p)
            continue
        out.append(_read(p, gen))
    return out


def _take(rec: Any, g: CopiedGeneration, names: dict[int, Any], parts: dict[str, list[Column]]) -> None:
    """One decoded record into ``g`` (a cut) or ``parts`` (rows, per key in order); raises on a malformed one."""
    if rec[0] == CUT:
        g.seqs = (int(rec[2]), int(rec[3]))
        return
    if rec[0] != ROWS or rec[1] != g.gen:
        raise ValueError(f"record of kind {rec[0]!r}, generation {rec[1]!r}")
    names.update({int(i): v for i, v in rec[3]})
    for i, sb, vb in rec[2]:
        name = names[i]
        steps: array[int] = from_le("q", sb)
        values: array[float] = from_le("d", vb)
        if isinstance(name, list):  # a frame's rows: each key's values every len(keys)-th
            w = len(name)
            if len(values) != w * len(steps):
                raise ValueError(f"a frame of {w} keys with {len(steps)} steps and {len(values)} values")
            for j, k in enumerate(name):
                parts.setdefault(str(k), []).append((steps, values[j::w]))
        elif len(values) != len(steps):
            raise ValueError(f"a column with {len(steps)} steps and {len(values)} values")
        else:
            parts.setdefault(str(name), []).append((steps, values))


def _read(path: Path, gen: int) -> CopiedGeneration:
    data = path.read_bytes()
    g = CopiedGeneration(gen, path)
    names: dict[int, Any] = {}
    parts: dict[str, list[Column]] = {}
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEAD.size:
            break
        n, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + n]
        if len(body) != n or zlib.crc32(body) != crc:
            break
        try:
            _take(unpack(body, _MAX_RECORD_BYTES), g, names, parts)
        except (ProtocolError, KeyError, TypeError, ValueError, IndexError) as e:
            _log.error("copy file %s: a malformed record at byte %d (%s); the rest is skipped", path, pos, e)
            break
        pos += _HEAD.size + n
    g.torn = len(data) - pos
    for k, ps in parts.items():
        st: array[int] = array("q")
        vs: array[float] = array("d")
        for s, v in ps:
            st.extend(s)
            vs.extend(v)
        g.columns[k] = (st, vs)
    return g


def copy_batches(c: CopiedGeneration, cap: int) -> list[bytes]:
    """A copied generation's points as batch payloads of at most ``cap`` points each (a long column split)."""
    out: list[bytes] = []
    metrics: list[tuple[str, array[int], array[float]]] = []
    n = 0
    ts = time.time()
    for key, (steps, values) in c.columns.items():
        lo = 0
        while lo < len(steps):
            take = min(len(steps) - lo, cap - n)
            metrics.append((key, steps[lo : lo + take], values[lo : lo + take]))
            n += take
            lo += take
            if n == cap:
                out.append(wire.encode_batch(metrics, [], ts))
                metrics, n = [], 0
    if metrics:
        out.append(wire.encode_batch(metrics, [], ts))
    return out


def mark_replayed(c: CopiedGeneration, first_seq: int, last_seq: int) -> None:
    """Record in ``c``'s file that it goes in as batches ``first_seq..last_seq`` (recovery; before they do).

    Read again, the file then says which batches hold it, as a cut's record does: a second replay
    skips it once they are stored.
    """
    body = packb([CUT, c.gen, first_seq, last_seq])
    with open(c.path, "ab") as f:
        f.write(_HEAD.pack(len(body), zlib.crc32(body)) + body)
        f.flush()
        os.fsync(f.fileno())
    c.seqs = (first_seq, last_seq)
