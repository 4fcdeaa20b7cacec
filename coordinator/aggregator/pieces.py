"""A set of rank pieces in arrival order: per-key chunks and blocks of keys logged together.

The open transaction (:class:`~coordinator.aggregator.outbox.Outbox`) and the staged hold
(:class:`~coordinator.aggregator.rankhold.RankHold`) gather a rank's points per (key, rank,
incarnation) until they are written. A dict logged at a step arrives as a block (one steps
array, a keys x steps matrix); keeping it as one :class:`~coordinator.journal.records.StagedBlock`
makes holding, extending and staging it one operation for all its keys, and it is split into
per-key chunk rows only when they are written (about every two seconds).

Each series has exactly one owner here — its chunk, or the one block holding it — so its points
stay in the order they arrived: a chunk for a key a block holds first splits that block into
chunks (rare: a rank logging the key alone, or in another dict), and a block whose keys are
held otherwise is added key by key.
"""

from __future__ import annotations

from array import array

import numpy as np

from coordinator.aggregator.blocks import Matrix
from coordinator.journal.records import ChunkRow, StagedBlock

__all__ = ["Pieces", "split_block"]

Series = tuple[str, int, int]
"""(key, rank, incarnation) of a chunk."""
BlockId = tuple[tuple[str, ...], int, int]
"""(keys, rank, incarnation) of a block."""


def split_block(b: StagedBlock) -> list[ChunkRow]:
    """One chunk row per key of ``b`` (fresh arrays)."""
    return [
        ChunkRow(k, b.rank, b.incarnation, b.seq, b.ts, array("q", b.steps), array("d", row.tobytes()))
        for k, row in zip(b.keys, b.values, strict=True)
    ]


class Pieces:
    """Rank chunks and blocks, one owner per series, in arrival order. Not thread-safe."""

    __slots__ = ("items", "owner", "points", "tails")

    def __init__(self) -> None:
        self.items: dict[Series | BlockId, ChunkRow | StagedBlock] = {}
        self.owner: dict[tuple[int, int], dict[str, Series | BlockId]] = {}
        """(rank, incarnation) -> key -> the item holding its points."""
        self.points = 0
        self.tails: dict[BlockId, list[Matrix]] = {}
        """Values of later pieces of a held block, joined to its ``values`` by :meth:`settle`: a hold
        extended every commit round copied its whole block each round."""

    def __bool__(self) -> bool:
        return bool(self.items)

    def clear(self) -> None:
        """Forget everything."""
        self.items.clear()
        self.owner.clear()
        self.tails.clear()
        self.points = 0

    def settle(self) -> None:
        """Join each block's later values to it: :attr:`items` hold every point (call before reading them)."""
        while self.tails:  # each block's pieces let go as it is joined: at most one block held twice
            bid, parts = self.tails.popitem()
            b = self.items[bid]
            assert isinstance(b, StagedBlock)
            b.values = np.concatenate((b.values, *parts), axis=1)

    def chunk(self, c: ChunkRow) -> None:
        """Add ``c`` after what is held for its series (``c`` is kept and may be extended)."""
        sid = (c.key, c.rank, c.incarnation)
        own = self.owner.setdefault((c.rank, c.incarnation), {})
        cur = own.get(c.key)
        if cur is not None and cur != sid:
            self._split(cur)
        held = self.items.get(sid)
        if isinstance(held, ChunkRow):
            held.steps.extend(c.steps)
            held.values.extend(c.values)
            held.seq = c.seq
        else:
            self.items[sid] = c
            own[c.key] = sid
        self.points += len(c.steps)

    def block(self, b: StagedBlock) -> None:
        """Add ``b`` after what is held for its keys (``b`` is kept and may be extended)."""
        bid = (b.keys, b.rank, b.incarnation)
        held = self.items.get(bid)
        if isinstance(held, StagedBlock):
            held.steps.extend(b.steps)
            self.tails.setdefault(bid, []).append(b.values)
            held.seq = b.seq
            self.points += len(b.keys) * len(b.steps)
            return
        own = self.owner.get((b.rank, b.incarnation))
        if not own:  # the first piece of its sender here (the usual case): one dict, no other checks
            own = self.owner[(b.rank, b.incarnation)] = dict.fromkeys(b.keys, bid)
            if len(own) == len(b.keys):
                self.items[bid] = b
                self.points += len(b.keys) * len(b.steps)
                return
            own.clear()
        if own.keys().isdisjoint(b.keys) and len(set(b.keys)) == len(b.keys):
            self.items[bid] = b
            own.update(dict.fromkeys(b.keys, bid))
            self.points += len(b.keys) * len(b.steps)
            return
        for c in split_block(b):
            self.chunk(c)

    def _split(self, bid: Series | BlockId) -> None:
        """Replace the block ``bid`` by its chunks, in its place."""
        self.settle()
        items: dict[Series | BlockId, ChunkRow | StagedBlock] = {}
        for k, item in self.items.items():
            if k != bid or not isinstance(item, StagedBlock):
                items[k] = item
                continue
            own = self.owner[(item.rank, item.incarnation)]
            for c in split_block(item):
                sid = (c.key, c.rank, c.incarnation)
                items[sid] = c
                own[c.key] = sid
        self.items = items

    def staged(self) -> list[ChunkRow | StagedBlock]:
        """Everything held, as it is staged."""
        self.settle()
        return list(self.items.values())

    def rows(self) -> list[ChunkRow]:
        """Everything held as chunk rows (blocks split; chunks as held)."""
        self.settle()
        out: list[ChunkRow] = []
        for item in self.items.values():
            if isinstance(item, StagedBlock):
                out.extend(split_block(item))
            else:
                out.append(item)
        return out
