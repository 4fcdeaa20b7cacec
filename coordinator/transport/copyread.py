"""Reading a rank's copy files back (:mod:`.copies`): the generations they hold, as the batches they go in as.

Recovery (:mod:`~coordinator.aggregator.recovery`) reads them after the rank's spool, decides by
batch number which generations the spool did not cover, records in a file the numbers it goes
in as before it does (:func:`mark_replayed`: a second replay then skips it), and ingests its
points as the sender's next batches (:func:`copy_batches`).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.core.columns import Column, from_le
from coordinator.core.numbering import explicit, number_steps
from coordinator.errors import ProtocolError
from coordinator.transport import wire
from coordinator.transport.copyfile import CUT, HEAD, PREFIX, ROWS, ZERO_HEAD
from coordinator.transport.plain import packb, unpack

__all__ = ["CopiedGeneration", "copy_batches", "mark_replayed", "read_copies"]

_log = logging.getLogger(__name__)

_MAX_RECORD_BYTES = 1 << 31


@dataclass(slots=True)
class CopiedGeneration:
    """What one copy file holds: a generation's copied rows per key, in call order, and how it was cut."""

    gen: int
    path: Path
    columns: dict[str, Column] = field(default_factory=dict)
    seqs: tuple[int, int] | None = None
    """The batch numbers it was cut as (None: never cut)."""
    torn: int = 0
    """Bytes from a torn or corrupt record on (the kill came mid-copy), skipped."""
    end: int = 0
    """Where its records end."""

    @property
    def points(self) -> int:
        return sum(len(s) for s, _ in self.columns.values())


def read_copies(directory: str | os.PathLike[str]) -> list[CopiedGeneration]:
    """The generations the copy files of a rank's spool directory hold, oldest first (an empty file: none)."""
    found = [_read(p) for p in sorted(Path(directory).glob(f"{PREFIX}*"))]
    return sorted((g for g in found if g is not None), key=lambda g: g.gen)


def _take(
    rec: Any, g: CopiedGeneration, names: dict[int, Any], bases: dict[str, int], parts: dict[str, list[Column]]
) -> None:
    """One decoded record into ``g`` (a cut) or ``parts`` (rows, per key in order); raises on a malformed one.

    A column's name comes with its key's last step before the generation (``bases``), a frame's
    with each of its keys' once it has rows logged without a step: where the -1 steps are
    numbered from.
    """
    if rec[0] == CUT:
        g.seqs = (int(rec[2]), int(rec[3]))
        return
    if rec[0] != ROWS:
        raise ValueError(f"record of kind {rec[0]!r}")
    for named in rec[3]:
        name = names[int(named[0])] = named[1]
        if len(named) > 2 and isinstance(name, list):  # a frame's keys, each with its last step
            bases.update(zip(map(str, name), map(int, named[2]), strict=True))
        elif len(named) > 2:
            bases[str(name)] = int(named[2])
    for i, sb, vb in rec[2]:
        name = names[i]
        steps: array[int] = from_le("q", sb)
        values: array[float] = from_le("d", vb)
        if isinstance(name, list):  # a frame's rows: each key's values every len(keys)-th
            w = len(name)
            if len(values) != w * len(steps):
                raise ValueError(f"a frame of {w} keys with {len(steps)} steps and {len(values)} values")
            if not explicit(steps) and not bases.keys() >= set(map(str, name)):
                raise ValueError(f"steps to number in a frame of {w} keys, named without their last steps")
            for j, k in enumerate(name):
                parts.setdefault(str(k), []).append((steps, values[j::w]))
        elif len(values) != len(steps):
            raise ValueError(f"a column with {len(steps)} steps and {len(values)} values")
        elif str(name) not in bases and steps and min(steps) < 0:
            raise ValueError(f"steps to number in the column {name!r}, named without its last step")
        else:
            parts.setdefault(str(name), []).append((steps, values))


def _read(path: Path) -> CopiedGeneration | None:
    """The generation of a copy file's first record and its records after it; None: no record."""
    data = path.read_bytes()
    g: CopiedGeneration | None = None
    names: dict[int, Any] = {}
    bases: dict[str, int] = {}
    parts: dict[str, list[Column]] = {}
    pos = torn = 0
    while len(data) - pos >= HEAD.size:
        n, crc = HEAD.unpack_from(data, pos)
        if n == 0:
            break  # the zero header after the last record
        body = data[pos + HEAD.size : pos + HEAD.size + n]
        if len(body) != n or zlib.crc32(body) != crc:
            torn = len(data) - pos
            break
        try:
            rec = unpack(body, _MAX_RECORD_BYTES)
            if g is None:
                g = CopiedGeneration(int(rec[1]), path)
            elif rec[1] != g.gen:
                break  # an earlier generation's record in the same file, cut off by a zero header that a kill undid
            _take(rec, g, names, bases, parts)
        except (ProtocolError, KeyError, TypeError, ValueError, IndexError) as e:
            _log.error("copy file %s: a malformed record at byte %d (%s); the rest is skipped", path, pos, e)
            torn = len(data) - pos
            break
        pos += HEAD.size + n
    if g is None:
        return None
    g.end, g.torn = pos, torn
    for k, ps in parts.items():
        st: array[int] = array("q")
        vs: array[float] = array("d")
        for s, v in ps:
            st.extend(s)
            vs.extend(v)
        if k in bases:
            number_steps(st, bases[k])  # the points logged without a step, as the sender numbers them
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
    record = HEAD.pack(len(body), zlib.crc32(body)) + body
    fd = os.open(c.path, os.O_WRONLY)
    try:
        os.pwrite(fd, record + ZERO_HEAD, c.end)  # after its last record, and a zero header after it
        os.fsync(fd)
    finally:
        os.close(fd)
    c.seqs = (first_seq, last_seq)
    c.end += len(record)
