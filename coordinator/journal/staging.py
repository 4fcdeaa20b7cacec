"""The staging log of rank points: one ``staged`` row per commit round, later materialized as chunks.

A rank's own points are what an ``ACK`` stands on, so they are durable in the commit that precedes
it. Writing them as chunk rows costs a row (and two index entries) per key, rank and commit; at a
paced load that is thousands of small rows a second. Instead the aggregator writes the round's
points of every rank as ONE row of ``staged`` (schema 4), in the same transaction as the senders'
high-water marks, and keeps them in memory; every ~2 s (or when anything reads rank
chunks) it writes them as ordinary chunk rows, one per (key, rank, incarnation) however many rounds
they came in, and deletes the staged rows they came from, in one transaction.

A staged row's ``body`` is msgpack (never pickle): ``[1, [[key_id, rank, incarnation, seq,
ts, steps, values], ...]]`` with ``steps`` and ``values`` the little-endian int64 / float64 bytes
of a chunk; or, when the round holds blocks (keys a rank logged together,
:class:`~coordinator.journal.records.StagedBlock`), ``[2, chunks, blocks]`` with each block
``[[key_id, ...], rank, incarnation, seq, ts, steps, values]`` and ``values`` the keys x steps
float64 matrix, row-major: one msgpack item and two byte strings for a whole dict of keys.
Both formats are read; :func:`decode` splits a block into one piece per key. ``n`` is the row's
point count (what :func:`staged_points` sums without decoding).
A writer that opens a run materializes what a crash left staged before anything reads the rank
chunks (:meth:`coordinator.journal.store.LocalStore.__init__`).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import numpy as np

from coordinator.core.columns import from_le, to_le
from coordinator.errors import SinkError
from coordinator.journal.records import ChunkRow, StagedBlock

__all__ = ["FORMAT", "STAGED_DDL", "Piece", "clear", "decode", "encode", "load", "merge", "stage", "staged_points"]

STAGED_DDL = """
CREATE TABLE IF NOT EXISTS staged (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, body BLOB NOT NULL);
"""
"""The table (schema 4); ``IF NOT EXISTS``, so the 3 -> 4 migration runs it too."""

FORMAT = 2
"""The newest body layout (the first element of every body); a round without blocks is written as 1."""

_MAX_BLOCK_IDS = 4096
"""Key tuples whose ids :func:`encode` remembers at most."""

Piece = tuple[int, int, int, int, float, "array[int]", "array[float]"]
"""(key_id, rank, incarnation, seq, ts, steps, values): a rank's points of one key."""


def encode(
    pieces: Iterable[ChunkRow | StagedBlock],
    key_id: Callable[[str], int],
    block_ids: dict[tuple[str, ...], list[int]] | None = None,
) -> tuple[int, bytes]:
    """(points, body) of one staged row holding ``pieces`` (rank chunks and blocks; ``key_id`` maps their keys).

    ``block_ids``: the key ids of earlier blocks' key tuples (the writer's; a key's id never
    changes), so a dict of keys staged every round is not mapped key by key every round.
    """
    n = 0
    out: list[list[Any]] = []
    blocks: list[list[Any]] = []
    for c in pieces:
        if isinstance(c, StagedBlock):
            n += len(c.keys) * len(c.steps)
            ids = None if block_ids is None else block_ids.get(c.keys)
            if ids is None:
                ids = [key_id(k) for k in c.keys]
                if block_ids is not None and len(block_ids) < _MAX_BLOCK_IDS:
                    block_ids[c.keys] = ids
            vb = np.ascontiguousarray(c.values, dtype="<f8").tobytes()
            blocks.append([ids, c.rank, c.incarnation, c.seq, c.ts, to_le(c.steps), vb])
            continue
        n += len(c.steps)
        out.append([key_id(c.key), c.rank, c.incarnation, c.seq, c.ts, to_le(c.steps), to_le(c.values)])
    return n, msgpack.packb([FORMAT, out, blocks] if blocks else [1, out])


def decode(body: bytes) -> list[Piece]:
    """The pieces of one staged row's ``body``.

    Raises:
        SinkError: the body is not a staged row this code wrote (corrupt, or another format).
    """
    try:
        fmt, items, *rest = msgpack.unpackb(body)
        if fmt not in (1, FORMAT) or len(rest) != (fmt == FORMAT):
            raise SinkError(f"staged row of format {fmt!r}, this version reads 1 and {FORMAT}")
        out: list[Piece] = []
        for kid, rank, inc, seq, ts, sb, vb in items:
            steps, values = from_le("q", sb), from_le("d", vb)
            if len(steps) != len(values):
                raise SinkError("staged piece with steps and values of different lengths")
            out.append((int(kid), int(rank), int(inc), int(seq), float(ts), steps, values))
        for kids, rank, inc, seq, ts, sb, vb in rest[0] if rest else []:
            steps = from_le("q", sb)
            if len(vb) != 8 * len(steps) * len(kids):
                raise SinkError("staged block whose values are not keys x steps")
            for i, kid in enumerate(kids):
                row = from_le("d", vb[8 * i * len(steps) : 8 * (i + 1) * len(steps)])
                out.append((int(kid), int(rank), int(inc), int(seq), float(ts), array("q", steps), row))
        return out
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise SinkError(f"corrupt staged row: {e}") from e


def merge(pieces: Iterable[Piece]) -> list[Piece]:
    """One piece per (key_id, rank, incarnation), in first-seen order: points in order, first ts, last seq."""
    out: dict[tuple[int, int, int], Piece] = {}
    for kid, rank, inc, seq, ts, steps, values in pieces:
        held = out.get((kid, rank, inc))
        if held is None:
            out[(kid, rank, inc)] = (kid, rank, inc, seq, ts, array("q", steps), array("d", values))
        else:
            held[5].extend(steps)
            held[6].extend(values)
            out[(kid, rank, inc)] = (kid, rank, inc, seq, held[4], held[5], held[6])
    return list(out.values())


def stage(
    db: sqlite3.Connection,
    pieces: Iterable[ChunkRow | StagedBlock],
    key_id: Callable[[str], int],
    block_ids: dict[tuple[str, ...], list[int]] | None = None,
) -> None:
    """Insert ``pieces`` as one staged row (inside the caller's transaction; ``block_ids`` as :func:`encode`'s)."""
    n, body = encode(pieces, key_id, block_ids)
    db.execute("INSERT INTO staged (n, body) VALUES (?, ?)", (n, body))


def clear(db: sqlite3.Connection) -> None:
    """Delete every staged row (inside the transaction that writes their points as chunks)."""
    db.execute("DELETE FROM staged")


def load(db: sqlite3.Connection) -> list[Piece]:
    """Every staged piece, merged per (key, rank, incarnation), in journal order.

    Memory: every staged point (the aggregator materializes them before they exceed its hold's
    bound, so a crash leaves at most about that many).

    Raises:
        SinkError: a staged row is corrupt.
    """
    return merge(p for (body,) in db.execute("SELECT body FROM staged ORDER BY id") for p in decode(body))


def staged_points(db: sqlite3.Connection) -> int:
    """Points in the staging log: committed and acknowledged, not yet chunk rows."""
    row = db.execute("SELECT COALESCE(SUM(n), 0) FROM staged").fetchone()
    return int(row[0])
