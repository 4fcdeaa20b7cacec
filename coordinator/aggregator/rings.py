"""The aggregator's side of the rings (:mod:`coordinator.transport.ringrows`): rows taken straight
from the rings of its node's ranks, exactly once through its own crashes.

Each attached ring is read before a commit (:meth:`Rings.drain`); its rows go in as the rank's
points, as a batch's blocks would, and the ring's cursor goes into the same transaction (a meta
row, ``ring:<rank>-<incarnation>``). Only once that commit is on disk are the ring's bytes freed
for the writer (:meth:`Rings.committed`). A restarted aggregator attaches each ring at the cursor
its journal kept, so a row is stored once whether the crash came before the commit (read again)
or after it (its bytes already freed, or skipped by the kept cursor).

Not wired into the server yet (docs/performance.md, round 43): no rank announces a ring, so no
run attaches one. Tests drive it in process.
"""

from __future__ import annotations

import time
from array import array
from pathlib import Path

import numpy as np

from coordinator.aggregator.core import Aggregator
from coordinator.transport import wire
from coordinator.transport.ring import RingReader
from coordinator.transport.ringrows import RowReader, Rows, names_path

__all__ = ["Rings", "meta_key"]


def meta_key(rank: int, incarnation: int) -> str:
    """The meta row that keeps the committed cursor of (rank, incarnation)'s ring."""
    return f"ring:{rank}-{incarnation}"


class Rings:
    """The rings attached to one aggregator, by (rank, incarnation)."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg
        self.readers: dict[tuple[int, int], RowReader] = {}
        self._read: dict[tuple[int, int], int] = {}
        """The cursor of each ring written into the open transaction (freed at its commit)."""

    def attach(self, rank: int, incarnation: int, path: Path) -> int:
        """Read (rank, incarnation)'s ring at ``path`` from the cursor the journal kept (or its start);
        returns that cursor. The sender must be registered (its HELLO taken).

        Raises:
            RingDamaged: ``path`` is not a ring, or the kept cursor is outside what it holds.
        """
        kept = self.agg.store.meta(meta_key(rank, incarnation))
        reader = RingReader(path, start=None if kept is None else int(kept))
        self.readers[(rank, incarnation)] = RowReader(reader)
        return reader.cursor

    def drain(self, now: float, *, final: bool = False) -> int:
        """Take every attached ring's new rows into the open transaction, with each ring's cursor; the points.

        ``final``: the writers are gone (a record that does not read whole is damage, not late).
        """
        points = 0
        for (rank, inc), reader in self.readers.items():
            rows = reader.read(final=final)
            if rows:
                points += self._ingest(rank, inc, rows, now)
                self._read[(rank, inc)] = reader.reader.cursor
                self.agg.outbox.txn.meta[meta_key(rank, inc)] = str(reader.reader.cursor)
        return points

    def _ingest(self, rank: int, inc: int, rows: Rows, now: float) -> int:
        """Ingest one ring's rows as (rank, inc)'s points: each frame's rows as one block of a batch."""
        agg = self.agg
        snd = agg.senders[(rank, inc)]
        last_steps = agg.registry.steps_of(rank)
        ts = time.time()
        n = 0
        reached = 0
        for keys, (steps, values) in rows.items():
            blk = wire.Block(keys, array("q", steps.astype("<i8").tobytes()), np.ascontiguousarray(values.T))
            n += agg.ingest_block(snd, 0, ts, blk, last_steps, now)
            if not all(k.startswith("system/") for k in keys):
                reached = max(reached, int(steps.max()))
        if reached and not snd.superseded:
            agg.health.progress(rank, reached, now)
        snd.points += n
        agg.counters["points"] += n
        agg.registry.persist(snd)
        return n

    def committed(self) -> None:
        """The transaction holding the last drains is on disk: free their bytes for the writers."""
        for key, cursor in self._read.items():
            self.readers[key].reader.release(cursor)
        self._read.clear()

    def detach_drained(self) -> list[tuple[int, int]]:
        """Close and remove the rings whose writers closed and whose every row is committed; which they were."""
        gone = [k for k, r in self.readers.items() if r.reader.drained and k not in self._read]
        for key in gone:
            reader = self.readers.pop(key)
            path = reader.reader.path
            reader.close()
            path.unlink()
            names_path(path).unlink()
        return gone

    def close(self) -> None:
        """Close every ring's reading end (their files stay: a restart reads them again)."""
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()
