"""The open transaction: a sender's batches share its chunk per key; the main series is held, then written."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.aggregator.outbox import HOLD_POINTS, HOLD_S
from coordinator.journal.store import MAIN_RANK, LocalStore
from tests.aggregator.helpers import batch, crash, hello, make_cfg, reopen


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
