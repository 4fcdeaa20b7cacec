"""Rank pieces: one owner per series, blocks split per key when written, arrival order kept."""

from __future__ import annotations

from array import array

import numpy as np

from coordinator.aggregator.pieces import Pieces
from coordinator.journal.records import ChunkRow, StagedBlock


def _blk(keys: str, seq: int, steps: list[int], rank: int = 0) -> StagedBlock:
    vals = np.array([[float(s * 10 + i) for s in steps] for i in range(len(keys))])
    return StagedBlock(tuple(keys), rank, 1, seq, 1.0, array("q", steps), vals)


def _chunk(key: str, seq: int, steps: list[int], rank: int = 0) -> ChunkRow:
    return ChunkRow(key, rank, 1, seq, 1.0, array("q", steps), array("d", [-1.0] * len(steps)))


def _rows(p: Pieces) -> list[tuple[str, int, int, list[int], list[float]]]:
    return [(c.key, c.rank, c.seq, list(c.steps), list(c.values)) for c in p.rows()]


def test_blocks_of_the_same_keys_extend_one_block() -> None:
    p = Pieces()
    p.block(_blk("ab", 1, [0, 1]))
    p.block(_blk("ab", 2, [2]))
    p.block(_blk("ab", 1, [0], rank=1))
    assert len(p.staged()) == 2 and p.points == 8
    assert _rows(p) == [
        ("a", 0, 2, [0, 1, 2], [0.0, 10.0, 20.0]),
        ("b", 0, 2, [0, 1, 2], [1.0, 11.0, 21.0]),
        ("a", 1, 1, [0], [0.0]),
        ("b", 1, 1, [0], [1.0]),
    ]


def test_a_chunk_of_a_held_key_splits_its_block_in_place_and_keeps_the_order() -> None:
    p = Pieces()
    p.chunk(_chunk("z", 1, [0]))
    p.block(_blk("ab", 1, [0]))
    p.chunk(_chunk("a", 2, [1]))  # a logged alone: the block becomes chunks, then a is extended
    p.block(_blk("ab", 3, [2]))  # its keys are chunks now: added key by key, after step 1
    p.block(_blk("bc", 4, [3]))  # overlaps: key by key
    assert all(isinstance(x, ChunkRow) for x in p.staged())
    assert _rows(p) == [
        ("z", 0, 1, [0], [-1.0]),
        ("a", 0, 3, [0, 1, 2], [0.0, -1.0, 20.0]),
        ("b", 0, 4, [0, 2, 3], [1.0, 21.0, 30.0]),
        ("c", 0, 4, [3], [31.0]),
    ]
    assert p.points == 8


def test_a_first_block_with_a_key_repeated_is_held_key_by_key() -> None:
    p = Pieces()
    p.block(_blk("aa", 1, [0]))  # a run of chunks with equal steps may repeat a key
    p.block(_blk("bc", 1, [0]))
    assert [type(x).__name__ for x in p.staged()] == ["ChunkRow", "StagedBlock"]
    assert _rows(p) == [("a", 0, 1, [0, 0], [0.0, 1.0]), ("b", 0, 1, [0], [0.0]), ("c", 0, 1, [0], [1.0])]
    assert p.points == 4
