"""The open transaction: a sender's batches share its chunk per key; the main series is held, then written."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import numpy as np

from coordinator.aggregator import Aggregator
from coordinator.aggregator.blocks import EmittedBlock
from coordinator.aggregator.counters import new_counters
from coordinator.aggregator.outbox import HOLD_POINTS, HOLD_S, MainHold
from coordinator.aggregator.reduce import Emitted
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from tests.aggregator.helpers import batch, crash, hello, make_cfg, reopen

NAN = math.nan


def _rows(s: LocalStore, rank: int) -> list[tuple[int, int, int]]:
    """(seq, n, step_last) of each stored chunk of key ``k`` and ``rank``, in journal order."""
    return list(
        s._db.execute(
            "SELECT c.seq, c.n, c.step_last FROM chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE k.key = 'k' AND c.rank = ? ORDER BY c.id",
            (rank,),
        )
    )


def test_a_senders_batches_in_one_transaction_share_one_chunk_per_key(tmp_path: Path) -> None:
    """Three batches of rank 0 before a commit: one row of every point (seq of the last); after it, a new row."""
    a = Aggregator(make_cfg(tmp_path, world=2))
    hello(a, 0)
    hello(a, 1)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    batch(a, 1, 1, metrics={"k": {0: 3.0}})
    batch(a, 0, 2, metrics={"k": {2: 1.0}, "j": {2: 5.0}})
    batch(a, 0, 3, metrics={"k": {3: 1.0}})
    a.commit()
    batch(a, 0, 4, metrics={"k": {4: 1.0}})
    a.commit()
    s = reopen(tmp_path)
    try:
        assert _rows(s, 0) == [(3, 4, 3), (4, 1, 4)]
        assert _rows(s, 1) == [(1, 1, 0)]
        assert s.values("k", 0) == [(s_, 1.0) for s_ in range(5)]
        assert s.values("j", 0) == [(2, 5.0)]
        assert s.high_water_marks()[(0, 1)] == 4, "the high-water mark is the last batch's, in the same commit"
    finally:
        s.close()
    a.finalize()


def test_a_held_main_series_is_written_when_due_or_without_hold(tmp_path: Path) -> None:
    """emit(hold=True) keeps groups until HOLD_S has passed; then one chunk holds them all, counted once."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    for i in range(3):
        batch(a, 0, i + 1, metrics={"k": {i: float(i)}})
        a.emit(100.0 + i * HOLD_S / 10, hold=True)
        a.commit()
    assert _rows(a.store, MAIN_RANK) == []
    assert a.counters["main_points"] == 0, "counted when written: a crash must not count them twice"
    assert a.last["k"] == (2, 2.0)
    a.emit(100.0 + 1.5 * HOLD_S, hold=True)
    a.commit()
    assert _rows(a.store, MAIN_RANK) == [(0, 3, 2)]
    assert a.counters["main_points"] == 3
    batch(a, 0, 4, metrics={"k": {3: 3.0}})
    a.emit(200.0, hold=True)
    a.emit(200.0)  # without hold (a query, the end): everything held is written
    a.commit()
    assert _rows(a.store, MAIN_RANK) == [(0, 3, 2), (0, 1, 3)]
    assert a.store.values("k", MAIN_RANK) == [(s, float(s)) for s in range(4)]
    a.finalize()


def test_a_large_hold_is_written_at_once(tmp_path: Path) -> None:
    """HOLD_POINTS held points are written without waiting for HOLD_S."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {s: 1.0 for s in range(HOLD_POINTS)}})
    a.emit(100.0, hold=True)
    a.commit()
    assert _rows(a.store, MAIN_RANK) == [(0, HOLD_POINTS, HOLD_POINTS - 1)]
    a.finalize()


def test_a_repeat_re_emits_in_a_chunk_of_its_own_after_the_held_groups(tmp_path: Path) -> None:
    """A re-emitted step is written after what is held, so the last chunk's last step is the newest emitted."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    a.emit(100.0, hold=True)
    batch(a, 0, 2, metrics={"k": {1: 5.0}})  # repeats step 1: its main value is re-emitted
    a.emit(100.0, hold=True)
    a.commit()
    assert _rows(a.store, MAIN_RANK) == [(0, 2, 1), (0, 1, 1)]
    assert a.store.values("k", MAIN_RANK) == [(0, 1.0), (1, 5.0)]
    assert a.counters["main_points"] == 2
    a.finalize()


def test_held_groups_lost_in_a_crash_are_rebuilt_and_written_once(tmp_path: Path) -> None:
    """The rank chunks are committed, the held main groups are not: a restart emits them again, once."""
    a = Aggregator(make_cfg(tmp_path, world=2))
    hello(a, 0)
    hello(a, 1)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    batch(a, 1, 1, metrics={"k": {0: 3.0, 1: 3.0}})
    a.emit(100.0)
    a.commit()  # steps 0 and 1 written
    batch(a, 0, 2, metrics={"k": {2: 1.0, 3: 1.0}})
    batch(a, 1, 2, metrics={"k": {2: 3.0, 3: 3.0}})
    a.emit(100.0, hold=True)
    a.commit()  # the batches (and their acks' high-water marks) are durable; steps 2, 3 only held
    assert a.counters["main_points"] == 2
    crash(a)
    a.close()  # the process is gone: its writer lock with it
    b = Aggregator(make_cfg(tmp_path, world=2))
    assert b.counters["main_points"] == 2
    b.emit(200.0, force=True)
    b.commit()
    assert b.store.values("k", MAIN_RANK) == [(s, 2.0) for s in range(4)]
    assert b.counters["main_points"] == 4
    b.finalize()


def _main_rows(s: LocalStore) -> dict[str, list[tuple[object, ...]]]:
    """Every main-series row per key, in journal order: everything a reader sees but the row's time."""
    cols = "c.seq, c.n, c.steps, c.vals, c.counts, c.step_min, c.step_max, c.v_min, c.v_max, c.ordered"
    out: dict[str, list[tuple[object, ...]]] = {}
    sql = f"SELECT k.key, {cols} FROM chunks c JOIN keys k ON k.id = c.key_id WHERE c.rank = ? ORDER BY c.id"
    for key, *rest in s._db.execute(sql, (MAIN_RANK,)):
        out.setdefault(key, []).append(tuple(bytes(x) if isinstance(x, (bytes, memoryview)) else x for x in rest))
    return out


def test_a_held_key_group_is_written_as_the_rows_its_keys_would_have_each(tmp_path: Path) -> None:
    """A key group's held emissions are written as one block (summarised at once, journal/blockrows.py):
    the same rows, counts and summaries as the per-key split, in both groups of keys below; a key that
    also holds per-key points (it left its group) keeps one merged row, its block points first."""
    held = MainHold()
    a, b = ("a0", "a1", "a2"), ("b0", "b1")
    held.add_block(
        EmittedBlock(a, array("q", [0, 1]), np.array([[1.0, 2.0], [-0.0, 0.0], [NAN, 3.0]]), array("i", [2, 2])), 1.0
    )
    held.add_block(EmittedBlock(a, array("q", [2]), np.array([[5.0], [4.0], [NAN]]), array("i", [1])), 1.0)
    held.add_block(EmittedBlock(b, array("q", [7]), np.array([[1.5], [2.5]]), array("i", [2])), 1.0)
    held.add("b1", Emitted(array("q", [8]), array("d", [9.0]), array("i", [1])), 1.0)
    held.add("c", Emitted(array("q", [3, 4]), array("d", [0.5, 0.25]), array("i", [2, 2])), 1.0)
    counters = new_counters()
    txn = TxnData(key_policies=dict.fromkeys([*a, *b, "c"], "mean"))
    held.write(txn, counters)
    assert held.points == 0 and not held.keys and not held.blocks
    assert counters["main_points"] == 9 + 2 + 1 + 2
    assert [type(r).__name__ for r in txn.chunks] == ["StagedBlock", "ChunkRow", "ChunkRow", "ChunkRow"]
    s = LocalStore(tmp_path / "block" / "run.db")
    s.create_run("r", "p", "n", 2, 1.0)
    s.commit(txn)
    per_key = TxnData(key_policies=dict(txn.key_policies))
    expected = {
        "a0": ([0, 1, 2], [1.0, 2.0, 5.0], [2, 2, 1]),
        "a1": ([0, 1, 2], [-0.0, 0.0, 4.0], [2, 2, 1]),
        "a2": ([0, 1, 2], [NAN, 3.0, NAN], [2, 2, 1]),
        "b0": ([7], [1.5], [2]),
        "b1": ([7, 8], [2.5, 9.0], [2, 1]),
        "c": ([3, 4], [0.5, 0.25], [2, 2]),
    }
    for k, (st, vs, cs) in expected.items():
        per_key.chunks.append(ChunkRow(k, MAIN_RANK, 0, 0, 1.0, array("q", st), array("d", vs), array("i", cs)))
    t = LocalStore(tmp_path / "keys" / "run.db")
    t.create_run("r", "p", "n", 2, 1.0)
    t.commit(per_key)
    try:
        got, want = _main_rows(s), _main_rows(t)
        assert sorted(got) == sorted(expected) and all(len(r) == 1 for r in got.values())
        assert got == want
        assert s.values("a1", MAIN_RANK)[1] == (1, 0.0) and s.values("b1", MAIN_RANK) == [(7, 2.5), (8, 9.0)]
    finally:
        s.close()
        t.close()
