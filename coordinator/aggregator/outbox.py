"""What the aggregator produces between two commits: the open transaction, and warnings for ranks.

Every part of the aggregator (senders, fields, liveness, health, recovery) writes into the one
:class:`Outbox`; the loop commits its transaction as a whole, then acks, and a rank's warnings
ride on its next ack. Nothing is acknowledged that is not committed.

The main series may be *held* (:class:`MainHold`): groups the reducer emitted wait in memory
for up to :data:`HOLD_S` (or :data:`HOLD_POINTS` points) and are then written as one chunk per
key, instead of one small chunk per key every commit round. Nothing acknowledged depends on
them (an ack covers a rank's own points, which are committed before it is sent); a crash loses
only the held groups, and a restarted aggregator rebuilds them from the rank chunks past the
last stored main step (:meth:`~coordinator.aggregator.reduce.Reducer.restore`), as it does for
groups emitted in a round whose commit never happened.

A round's rank points are *staged* (:class:`~coordinator.aggregator.rankhold.RankHold`): committed
as one row of the journal's staging log and written as chunks about once a second, unless the
commit materializes them (:meth:`Outbox.commit`).
"""

from __future__ import annotations

import json
import time
from array import array

import numpy as np

from coordinator.aggregator.blocks import EmittedBlock, Matrix
from coordinator.aggregator.counters import Counters
from coordinator.aggregator.pieces import Pieces
from coordinator.aggregator.rankhold import RankHold, write_at_once
from coordinator.aggregator.reduce import Emitted
from coordinator.journal.records import StagedBlock
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData

__all__ = ["HOLD_POINTS", "HOLD_S", "MainHold", "Outbox"]

HOLD_S = 1.0
"""Longest time emitted main-series groups are held before they are written.

Half as long as the rank points' staging (``RANK_HOLD_S``), since a live reader watches the main
series: at 100 ms a 100-key job wrote ~1,000
main-series chunk rows a second, about a tenth of the aggregator's CPU at a paced load. A reply
that reads them (QUERY, STATE, BYE), trackers and the end of the run write them at once, so
``fetch()``, ``sync()`` and ``wait()`` see every point; only a reader of the journal file in
another process (the web UI, ``coordinator show`` during the run) sees the main series up to ~1 s late."""
HOLD_POINTS = 50_000
"""Held main-series points that make the hold write at once (bounds its memory)."""


class Outbox:
    """The open transaction (replaced by a fresh one after each commit) and the pending warnings."""

    __slots__ = ("ranks", "rows", "txn", "warnings")

    def __init__(self) -> None:
        self.txn = TxnData()
        self.rows = Pieces()
        """The rank chunks and blocks of the open transaction, one per series (see :meth:`chunk`)."""
        self.ranks = RankHold()
        """Rank chunks of earlier rounds, committed to the staging log, not yet chunk rows."""
        self.warnings: dict[tuple[int, int], list[str]] = {}
        """(rank, incarnation) -> warnings for its next ack."""

    def chunk(
        self, key: str, rank: int, incarnation: int, seq: int, ts: float, steps: array[int], values: array[float]
    ) -> None:
        """Add a rank's points of ``key`` to the open transaction.

        A sender's later batches in the same transaction extend its chunk of the key: one row
        per (key, rank) per commit however many batches arrived, with the first batch's time.
        The high-water mark is committed with the rows, so exactly-once is unchanged.
        """
        self.rows.chunk(ChunkRow(key, rank, incarnation, seq, ts, steps, values))

    def block(
        self,
        keys: tuple[str, ...],
        rank: int,
        incarnation: int,
        seq: int,
        ts: float,
        steps: array[int],
        values: Matrix,
    ) -> None:
        """Add a rank's points of ``keys`` logged together (one row of ``values`` per key), as :meth:`chunk`.

        Held as one block (split per key when written as chunks); ``steps`` is copied, ``values``
        kept (read-only).
        """
        self.rows.block(StagedBlock(keys, rank, incarnation, seq, ts, array("q", steps), values))

    def event(self, ts: float, kind: str, rank: int | None, detail: str) -> None:
        """Record a run event (``rank_joined``, ``rank_lost``, ...) in the open transaction."""
        self.txn.events.append((ts, kind, rank, detail))

    def warn(self, rank: int, incarnation: int, message: str) -> None:
        """Queue a warning for a sender; it is logged on the rank at its next ack."""
        self.warnings.setdefault((rank, incarnation), []).append(message)

    def take_warnings(self, rank: int, incarnation: int) -> list[str]:
        """Warnings addressed to a sender since its last ack."""
        return self.warnings.pop((rank, incarnation), [])

    def commit(self, store: LocalStore, counters: Counters, *, stage: bool = False, now: float = 0.0) -> None:
        """Commit the open transaction with the counters as they stand.

        The round's rank chunks are staged (one staging-log row, then held) when ``stage`` is
        set, the hold is not due and the round is not large (``rankhold.write_at_once``);
        otherwise they and everything held are written as chunk rows and the staging log
        emptied, in this transaction (*materialized*).

        Args:
            store: the journal.
            counters: saved with the transaction.
            stage: the caller reads no rank chunk before the next commit (see the server loop).
            now: the caller's clock, for the hold's age.

        Raises:
            SinkError: the store refused it; the transaction (and the hold) is kept for a retry.
        """
        pieces = self.rows
        hold = self.ranks
        stage = stage and not write_at_once(pieces)  # a large round of large rows: chunk rows at once
        materialize = bool(hold) and (not stage or hold.due(now, pieces.points))
        if self.txn.empty() and not pieces and not materialize:
            return
        txn = self.txn
        txn.meta["counters"] = json.dumps(counters)
        # Set on the open transaction itself, every attempt (a failed commit keeps it for a retry).
        staging = stage and bool(pieces) and not materialize
        txn.staged = pieces.staged() if staging else []
        txn.rank_rows = [] if staging else hold.materialized(pieces) if materialize else pieces.staged()
        txn.unstage = materialize
        store.commit(txn)
        if materialize:
            hold.clear()
        elif stage and pieces:
            hold.add(pieces, now)
        self.txn = TxnData()
        self.rows = Pieces()


class MainHold:
    """Emitted main-series groups not yet in the transaction, one growing chunk per key.

    A key group's emissions are held as blocks (:meth:`add_block`) and split per key when they
    are written. A key's block points always precede its per-key ones: a key leaves its group
    for good. Not thread-safe: owned by the aggregator loop.
    """

    __slots__ = ("blocks", "keys", "points", "since")

    def __init__(self) -> None:
        self.keys: dict[str, Emitted] = {}
        self.blocks: dict[tuple[str, ...], list[EmittedBlock]] = {}
        self.points = 0
        self.since = 0.0
        """When the oldest held group was emitted (the caller's clock)."""

    def add(self, key: str, e: Emitted, now: float) -> None:
        """Hold ``e`` (one emit round's groups of ``key``) after what is held for the key."""
        held = self.keys.get(key)
        if held is None:
            if not self.keys and not self.blocks:
                self.since = now
            self.keys[key] = e
        else:
            held.extend(e)
        self.points += len(e.steps)

    def add_block(self, b: EmittedBlock, now: float) -> None:
        """Hold ``b`` (one emit round's groups of a key group) after what is held for its keys."""
        if not self.keys and not self.blocks:
            self.since = now
        self.blocks.setdefault(b.keys, []).append(b)
        self.points += len(b.keys) * len(b.steps)

    def _take_blocks(self, ts: float) -> tuple[list[StagedBlock], dict[str, Emitted]]:
        """The held blocks (then empty), in emission order: a key group's as one block of rows, unless
        one of its keys also holds per-key points, then split per key (merged with those by the caller)."""
        rows: list[StagedBlock] = []
        split: dict[str, Emitted] = {}
        for keys, bl in self.blocks.items():
            steps, counts = bl[0].steps, bl[0].counts
            values = bl[0].values
            if len(bl) > 1:
                steps, counts = array("q", steps), array("i", counts)
                for b in bl[1:]:
                    steps.extend(b.steps)
                    counts.extend(b.counts)
                values = np.concatenate([b.values for b in bl], axis=1)
            if self.keys.keys().isdisjoint(keys):
                rows.append(StagedBlock(keys, MAIN_RANK, 0, 0, ts, steps, values, counts))
                continue
            for key, row in zip(keys, values, strict=True):
                split[key] = Emitted(array("q", steps), array("d", row.tobytes()), array("i", counts))
        self.blocks.clear()
        return rows, split

    def due(self, now: float) -> bool:
        """True when the held groups should be written now (old or large enough)."""
        return bool(self.keys or self.blocks) and (now - self.since >= HOLD_S or self.points >= HOLD_POINTS)

    def write(self, txn: TxnData, counters: Counters, key: str | None = None) -> None:
        """Move the held groups (of ``key`` only, if given and no block is held) into ``txn`` as main-series chunks."""
        ts = time.time()
        if key is not None and not self.blocks:
            e = self.keys.pop(key, None)
            items = [] if e is None else [(key, e)]
        else:
            # A key group's block stays one block: its rows are summarised at once (journal/blockrows.py).
            blocks, merged = self._take_blocks(ts)
            for b in blocks:
                txn.chunks.append(b)
                n = len(b.keys) * len(b.steps)
                counters["main_points"] += n
                self.points -= n
            for k, e in self.keys.items():
                held = merged.get(k)
                if held is None:
                    merged[k] = e
                else:
                    held.extend(e)
            items = list(merged.items())
            self.keys.clear()
        for k, e in items:
            txn.chunks.append(ChunkRow(k, MAIN_RANK, 0, 0, ts, e.steps, e.values, e.counts))
            counters["main_points"] += len(e.steps) - e.reemitted
            self.points -= len(e.steps)
