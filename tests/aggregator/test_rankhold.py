"""Staged rank points: one staging-log row per commit, one chunk per series when due, read, rewound or crashed."""

from __future__ import annotations

import sqlite3
from array import array
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.pieces import Pieces, split_block
from coordinator.aggregator.rankhold import (
    RANK_HOLD_POINTS,
    RANK_HOLD_S,
    RANK_ROW_MIN_POINTS,
    RANK_STAGE_MAX_POINTS,
    RankHold,
)
from coordinator.errors import SinkError
from coordinator.journal.records import ChunkRow, StagedBlock
from coordinator.journal.store import MAIN_RANK, LocalStore
from tests.aggregator.helpers import batch, crash, hello, make_cfg


def _rank_rows(s: LocalStore) -> list[tuple[str, int, int, int, int]]:
    """(key, rank, incarnation, seq, n) of every rank chunk, in journal order."""
    return list(
        s._db.execute(
            "SELECT k.key, c.rank, c.incarnation, c.seq, c.n FROM chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE c.rank >= 0 ORDER BY c.id"
        )
    )


def _staged_rows(s: LocalStore) -> int:
    return int(s._db.execute("SELECT COUNT(*) FROM staged").fetchone()[0])


def _two_ranks(tmp_path: Path) -> Aggregator:
    a = Aggregator(make_cfg(tmp_path, world=2))
    hello(a, 0)
    hello(a, 1)
    a.commit()  # the hellos (new incarnations) are written as they would be in the server loop
    return a


def test_staged_rounds_are_one_row_each_then_one_chunk_per_series_when_due(tmp_path: Path) -> None:
    a = _two_ranks(tmp_path)
    for r in range(3):
        batch(a, 0, r + 1, metrics={"k": {r: 1.0}, "j": {r: 2.0}})
        batch(a, 1, r + 1, metrics={"k": {r: 3.0}})
        a.commit(stage=True, now=100.0 + r * RANK_HOLD_S / 10)
    assert _rank_rows(a.store) == [] and _staged_rows(a.store) == 3
    assert a.store.staged_points() == 9 and a.outbox.ranks.points == 9
    assert a.store.high_water_marks() == {(0, 1): 3, (1, 1): 3}, "the marks an ack stands on are committed"
    batch(a, 0, 4, metrics={"k": {3: 1.0}})
    a.commit(stage=True, now=100.0 + RANK_HOLD_S)  # due: held and this round's pieces in one chunk per series
    assert _rank_rows(a.store) == [("k", 0, 1, 4, 4), ("j", 0, 1, 3, 3), ("k", 1, 1, 3, 3)]
    assert _staged_rows(a.store) == 0 and a.outbox.ranks.points == 0
    assert a.store.values("k", 0) == [(s, 1.0) for s in range(4)] and a.store.values("k", 1) == [
        (s, 3.0) for s in range(3)
    ]
    a.finalize()


def test_a_commit_without_stage_writes_what_is_held(tmp_path: Path) -> None:
    """A commit that does not stage (a reply reads, the end, trackers) materializes the hold with the round."""
    a = _two_ranks(tmp_path)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    a.commit(stage=True, now=100.0)
    batch(a, 0, 2, metrics={"k": {1: 1.0}})
    a.commit(now=100.1)
    assert _rank_rows(a.store) == [("k", 0, 1, 2, 2)] and _staged_rows(a.store) == 0
    a.commit(stage=True, now=100.2)  # nothing new: nothing written, nothing staged
    assert _staged_rows(a.store) == 0 and len(_rank_rows(a.store)) == 1
    a.finalize()


def test_a_large_hold_is_written_at_once(tmp_path: Path) -> None:
    a = _two_ranks(tmp_path)
    part = RANK_STAGE_MAX_POINTS - 1  # each round small enough to be staged
    rounds = RANK_HOLD_POINTS // part + 1
    for i in range(rounds):
        r = i % 2
        seq = i // 2 + 1
        batch(a, r, seq, metrics={"k": {s: 1.0 for s in range((seq - 1) * part, seq * part)}})
        a.commit(stage=True, now=100.0)
        if i < rounds - 1:
            assert _staged_rows(a.store) == i + 1 and _rank_rows(a.store) == []
    # the bound is reached with the last round: no waiting for RANK_HOLD_S
    assert _staged_rows(a.store) == 0 and sum(n for *_, n in _rank_rows(a.store)) == rounds * part
    a.finalize()


def test_a_large_round_is_written_as_chunks_at_once_with_what_is_held(tmp_path: Path) -> None:
    """A round of RANK_STAGE_MAX_POINTS rank points or more (ranks logging flat out) is not staged."""
    a = _two_ranks(tmp_path)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    a.commit(stage=True, now=100.0)
    assert _staged_rows(a.store) == 1, "a small round is staged"
    big = RANK_STAGE_MAX_POINTS
    batch(a, 0, 2, metrics={"k": {s: 2.0 for s in range(2, 2 + big)}})
    a.commit(stage=True, now=100.05)
    assert _rank_rows(a.store) == [("k", 0, 1, 2, big + 2)] and _staged_rows(a.store) == 0
    batch(a, 1, 1, metrics={"k": {s: 3.0 for s in range(big)}})
    a.commit(stage=True, now=100.1)  # nothing held: the round alone, as chunk rows
    assert _rank_rows(a.store)[-1] == ("k", 1, 1, 1, big) and _staged_rows(a.store) == 0
    assert a.store.values("k", 0) == [(0, 1.0), (1, 1.0)] + [(s, 2.0) for s in range(2, 2 + big)]
    a.finalize()


def test_a_large_round_of_many_short_series_is_staged(tmp_path: Path) -> None:
    """A round as large, spread over series of fewer than RANK_ROW_MIN_POINTS points (a thousand senders)."""
    a = _two_ranks(tmp_path)
    per = RANK_ROW_MIN_POINTS - 1
    keys = RANK_STAGE_MAX_POINTS // per + 1
    batch(a, 0, 1, metrics={f"k{i}": {s: 1.0 for s in range(per)} for i in range(keys)})
    a.commit(stage=True, now=100.0)
    assert _staged_rows(a.store) == 1 and _rank_rows(a.store) == []
    a.finalize()


def test_a_rewind_or_a_new_incarnation_writes_the_rank_chunks_in_that_round(tmp_path: Path) -> None:
    a = _two_ranks(tmp_path)
    batch(a, 1, 1, metrics={"k": {0: 1.0, 1: 1.0, 2: 1.0}})
    a.commit(stage=True, now=100.0)
    hello(a, 1, inc=2)
    batch(a, 1, 1, inc=2, metrics={"k": {1: 7.0}})  # incarnation 2 resumes k at step 1: a rewind
    a.commit(stage=True, now=100.1)
    assert _rank_rows(a.store) == [("k", 1, 1, 1, 3), ("k", 1, 2, 1, 1)] and _staged_rows(a.store) == 0
    assert a.store.values("k", 1) == [(0, 1.0), (1, 7.0)]
    assert a.counters["rewinds"] == 1
    batch(a, 1, 2, inc=2, metrics={"k": {2: 7.0}})
    a.commit(stage=True, now=100.2)
    assert _staged_rows(a.store) == 1, "staging resumes once the round is written"
    a.finalize()


def test_a_failed_materializing_commit_is_retried_and_stores_each_point_once(tmp_path: Path) -> None:
    a = _two_ranks(tmp_path)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    a.commit(stage=True, now=100.0)
    batch(a, 0, 2, metrics={"k": {1: 1.0}})
    side = sqlite3.connect(tmp_path / "run.db")
    side.execute("CREATE TRIGGER full BEFORE INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    side.commit()
    with pytest.raises(SinkError, match="disk full"):
        a.commit(stage=True, now=100.0 + RANK_HOLD_S)
    assert a.outbox.ranks.points == 1 and _staged_rows(a.store) == 1
    side.execute("DROP TRIGGER full")
    side.commit()
    side.close()
    batch(a, 0, 3, metrics={"k": {2: 1.0}})
    a.commit(stage=True, now=100.0 + RANK_HOLD_S)
    assert _rank_rows(a.store) == [("k", 0, 1, 3, 3)] and a.store.values("k", 0) == [(s, 1.0) for s in range(3)]
    a.finalize()


def test_staged_points_survive_a_crash_and_a_restart_rebuilds_the_main_series_from_them(tmp_path: Path) -> None:
    """The process dies with staged rows (acked): the next aggregator writes them as chunks, then restores."""
    a = _two_ranks(tmp_path)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    batch(a, 1, 1, metrics={"k": {0: 3.0}})
    a.emit(100.0, hold=True)
    a.commit(stage=True, now=100.0)
    batch(a, 1, 2, metrics={"k": {1: 3.0}})
    a.emit(100.0, hold=True)
    a.commit(stage=True, now=100.1)
    assert _rank_rows(a.store) == [] and _staged_rows(a.store) == 2
    crash(a)
    a.close()
    b = Aggregator(make_cfg(tmp_path, world=2))
    assert b.store.unstaged_points == 4 and _staged_rows(b.store) == 0
    assert b.store.high_water_marks() == {(0, 1): 1, (1, 1): 2}
    assert batch(b, 1, 2, metrics={"k": {1: 3.0}}) == "duplicate"
    b.emit(200.0, force=True)
    b.commit()
    assert b.store.values("k", 0) == [(0, 1.0), (1, 1.0)] and b.store.values("k", 1) == [(0, 3.0), (1, 3.0)]
    assert b.store.values("k", MAIN_RANK) == [(0, 2.0), (1, 2.0)]
    detail = next(d for _, kind, _, d in b.store.events() if kind == "aggregator_restarted")
    assert "4 staged rank points written as chunks" in detail
    b.finalize()


def _block(keys: str, seq: int, steps: list[int], rank: int = 0) -> StagedBlock:
    vals = np.array([[float(rank * 1000 + s * 10 + i) for s in steps] for i in range(len(keys))])
    return StagedBlock(tuple(keys), rank, 1, seq, 1.0 + seq, array("q", steps), vals)


def _chunk(key: str, seq: int, steps: list[int], rank: int = 0) -> ChunkRow:
    return ChunkRow(key, rank, 1, seq, 1.0 + seq, array("q", steps), array("d", [-1.0 - s for s in steps]))


def _as_rows(items: list[ChunkRow | StagedBlock]) -> list[tuple[str, int, int, float, list[int], list[float]]]:
    out = []
    for it in items:
        for c in split_block(it) if isinstance(it, StagedBlock) else [it]:
            out.append((c.key, c.rank, c.seq, c.ts, list(c.steps), list(c.values)))
    return sorted(out)


@pytest.mark.parametrize("mixed", [False, True])
def test_materialized_is_rows_with_kept_as_blocks_and_leaves_the_hold_as_it_is(mixed: bool) -> None:
    hold, held, new = RankHold(), Pieces(), Pieces()
    held.block(_block("ab", 1, [0, 1]))
    held.chunk(_chunk("z", 1, [0]))
    held.block(_block("ab", 1, [0], rank=1))
    hold.add(held, 5.0)
    new.block(_block("ab", 2, [2]))
    new.chunk(_chunk("z", 2, [1]))
    new.block(_block("cd", 2, [2], rank=1))
    if mixed:  # a held block's key comes alone: everything as chunks
        new.chunk(_chunk("a", 3, [3], rank=1))
    before = _as_rows(hold.chunks.staged())
    got = hold.materialized(new)
    assert _as_rows(got) == _as_rows(list(hold.rows_with(new)))
    assert _as_rows(hold.chunks.staged()) == before, "a failed commit retries with the same hold"
    blocks = [it for it in got if isinstance(it, StagedBlock)]
    if mixed:
        assert blocks == []
    else:
        assert [(b.keys, b.rank, b.seq, b.ts, list(b.steps)) for b in blocks] == [
            (("a", "b"), 0, 2, 2.0, [0, 1, 2]),
            (("a", "b"), 1, 1, 2.0, [0]),
            (("c", "d"), 1, 2, 3.0, [2]),
        ]


def _ab_block(seq: int, first: int, n: int) -> StagedBlock:
    """Rank 0's block of keys a and b at steps first..first+n-1: a's value is the step, b's the step + 10."""
    steps = list(range(first, first + n))
    return StagedBlock(("a", "b"), 0, 1, seq, 1.0, array("q", steps), np.array([steps, [s + 10 for s in steps]], float))


def test_a_block_held_over_rounds_is_written_whole_and_in_order_and_the_hold_is_left_as_it_was() -> None:
    """Three staged rounds extend one held block; the write joins them with the round's own piece."""
    hold = RankHold()
    for seq in (1, 2, 3):
        p = Pieces()
        p.block(_ab_block(seq, 2 * (seq - 1), 2))
        hold.add(p, 100.0)
    more = Pieces()
    more.block(_ab_block(4, 6, 1))
    for _ in range(2):  # a failed commit is retried with the same rows
        (row,) = hold.materialized(more)
        assert isinstance(row, StagedBlock) and row.seq == 4
        assert list(row.steps) == list(range(7)) and row.values.tolist() == [list(range(7)), list(range(10, 17))]
    (row,) = hold.materialized(Pieces())  # the hold alone: its three rounds, not the piece offered above
    assert isinstance(row, StagedBlock) and row.seq == 3
    assert list(row.steps) == list(range(6)) and row.values.tolist() == [list(range(6)), list(range(10, 16))]
    assert hold.points == 12
