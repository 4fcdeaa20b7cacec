"""Rows taken from the ranks' rings are stored once, reduced, and freed only after their commit, through crashes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.rings import BOOT_ID, DRAIN_MS, Rings, meta_key, progress_few, progress_many
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter, names_path, stamp
from tests.aggregator.helpers import crash, hello, make_cfg, reopen

KEYS = ("loss", "lr")


def _writers(tmp_path: Path, ranks: int = 2, capacity: int = 4096) -> list[RowWriter]:
    return [RowWriter(RingWriter(tmp_path / f"coordinator-{r}.ring", capacity)) for r in range(ranks)]


def _log(w: RowWriter, rank: int, steps: range) -> None:
    for step in steps:
        assert w.row(KEYS, step, [step + 10.0 * rank, 0.1])


def _rings(agg: Aggregator, tmp_path: Path, ranks: int = 2) -> Rings:
    rings = Rings(agg)
    for r in range(ranks):
        hello(agg, r)
        rings.attach(r, 1, tmp_path / f"coordinator-{r}.ring")
    return rings


def _log_and_commit(agg: Aggregator, rings: Rings, ws: list[RowWriter], steps: range) -> None:
    """Each rank logs ``steps``; one drain and its commit take them, and their bytes are freed."""
    for r, w in enumerate(ws):
        _log(w, r, steps)
    rings.drain(1.0)
    agg.commit()
    rings.committed()


def _check_stored(tmp_path: Path, last: int) -> None:
    s = reopen(tmp_path)
    try:
        for r in range(2):
            assert s.values("loss", r) == [(st, st + 10.0 * r) for st in range(last + 1)]
        assert s.values("loss") == [(st, st + 5.0) for st in range(last + 1)]  # the mean of the two ranks
        assert s.contributors("loss") == [(st, 2) for st in range(last + 1)]
    finally:
        s.close()


def test_rows_of_two_ranks_rings_are_stored_once_and_reduced_and_freed_only_after_their_commit(
    tmp_path: Path,
) -> None:
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path)
    rings = _rings(agg, tmp_path)
    for lap in range(10):  # 48-byte rows, 60 a drain: the 4 KiB rings go round seven times
        steps = range(lap * 60, lap * 60 + 60)
        for r, w in enumerate(ws):
            _log(w, r, steps)
        assert rings.drain(1.0) == 2 * 2 * 60
        assert all(w.ring.space() <= 4096 - 60 * 48 for w in ws)  # read, not yet freed
        agg.commit()
        rings.committed()
        assert all(w.ring.space() == 4096 for w in ws)
    assert rings.drain(1.0) == 0 and agg.counters["points"] == 2400
    rings.close()
    agg.finalize()
    _check_stored(tmp_path, 599)


def test_rows_that_write_one_key_at_one_step_twice_keep_the_later_as_the_socket_path_does(tmp_path: Path) -> None:
    """One drain takes a dict at each step and appends of its ``loss`` between them; one append writes
    step 6 before the dict of step 6 does, the other the step before it after: the later write of
    each is the step's value, as when both go over the socket (frames are not read side by side)."""
    agg = Aggregator(make_cfg(tmp_path, world=1))
    [w] = _writers(tmp_path, ranks=1, capacity=1 << 16)
    rings = _rings(agg, tmp_path, ranks=1)
    for step in range(0, 20, 2):
        if step == 6:
            assert w.row(("loss",), 6, [-6.0])  # replaced by the dict's row, written after it
        assert w.row(KEYS, step, [float(step), 0.1])
        if step % 4 == 0:
            assert w.row(("loss",), step + 1, [step + 1.0])
        if step == 10:
            assert w.row(("loss",), 10, [-10.0])  # replaces the dict's
    assert rings.drain(1.0) == 10 * 2 + 5 + 2
    agg.commit()
    rings.committed()
    rings.close()
    agg.finalize()
    s = reopen(tmp_path)
    try:
        want = [(st, -10.0 if st == 10 else float(st)) for st in range(20) if st % 2 == 0 or st % 4 == 1]
        assert s.values("loss", 0) == want
        assert s.values("loss") == want  # the main series (one rank's mean) too
    finally:
        s.close()


def test_a_training_dict_that_shares_epoch_with_a_validation_dict_stays_one_group_and_every_point_is_stored_once(
    tmp_path: Path,
) -> None:
    """The frameworks' pattern through two ranks' rings: a 20-key training dict with ``epoch`` at every step,
    a validation dict with ``epoch`` every tenth step. Every point is stored once, each main value is the
    ranks' mean, and the training keys stay one key group in the reducer (a drain that handed them over one
    key at a time made each go point by point from then on)."""
    train = (*(f"train/m{j:02d}" for j in range(19)), "epoch")
    val = ("val/loss", "epoch")
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path, capacity=1 << 20)
    rings = _rings(agg, tmp_path)
    for lap in range(6):
        for r, w in enumerate(ws):
            for step in range(lap * 50, lap * 50 + 50):
                assert w.row(train, step, [step + 100.0 * j + r for j in range(19)] + [step // 100 + 0.5 * r])
                if step % 10 == 9:
                    assert w.row(val, step, [-step - r, step // 100 + 0.5 * r])
        assert rings.drain(1.0) == 2 * (50 * 20 + 5 * 2)
        agg.commit()
        rings.committed()
        agg.emit(1.0)
    groups = {g.keys for g in agg.reducer.groups.values()}
    assert train[:-1] in groups and "epoch" in agg.reducer.keys
    rings.close()
    agg.finalize()
    s = reopen(tmp_path)
    try:
        for r in range(2):
            assert s.values("train/m07", r) == [(st, st + 700.0 + r) for st in range(300)]
            assert s.values("val/loss", r) == [(st, -st - r) for st in range(9, 300, 10)]
            assert s.values("epoch", r) == [(st, st // 100 + 0.5 * r) for st in range(300)]
        assert s.values("train/m07") == [(st, st + 700.5) for st in range(300)]
        assert s.values("epoch") == [(st, st // 100 + 0.25) for st in range(300)]
        assert s.contributors("train/m07") == [(st, 2) for st in range(300)]
    finally:
        s.close()


def test_a_rank_that_writes_its_rows_later_is_the_straggler_though_one_drain_reads_them_all(tmp_path: Path) -> None:
    """Rank 2 writes each step 0.12 s after ranks 0 and 1 (DDP's slow rank: the others wait for it),
    and one drain reads the three rings: the health check dates each rank's steps by its rows'
    stamps, so rank 2 lags the median rank by 0.12 s and is the straggler (dated by the drain, all
    three would be level)."""
    agg = Aggregator(make_cfg(tmp_path, world=3, straggler_lag_s=0.05))
    ws = _writers(tmp_path, ranks=3, capacity=1 << 16)
    rings = _rings(agg, tmp_path, ranks=3)
    for step in range(8):
        _log(ws[0], 0, range(step, step + 1))
        _log(ws[1], 1, range(step, step + 1))
        time.sleep(0.12)
        _log(ws[2], 2, range(step, step + 1))
    now = time.time()
    assert rings.drain(now) == 3 * 2 * 8
    snap = agg.health.snapshot(now, {0, 1, 2})
    assert abs(snap[0]["lag_s"]) < 0.05 and abs(snap[1]["lag_s"]) < 0.05 and 0.1 <= snap[2]["lag_s"] < 1.0, snap
    assert [r for r in range(3) if snap[r]["straggler"]] == [2], snap
    agg.commit()
    rings.committed()
    rings.close()
    agg.finalize()


def test_rows_keep_a_rank_heard_and_bring_back_only_a_rank_that_wrote_them_after_it_was_given_up(
    tmp_path: Path,
) -> None:
    """A rank with a ring skips its heartbeat while it writes rows, so a drain that reads its rows hears
    from it. A lost rank is brought back only by rows written after it had been silent past the liveness
    timeout (a stalled rank going on), not by the last rows of a rank that died (read after its loss)."""
    agg = Aggregator(make_cfg(tmp_path, liveness_timeout_s=0.5))
    ws = _writers(tmp_path)
    rings = _rings(agg, tmp_path)
    live, gone = agg.senders[(0, 1)], agg.senders[(1, 1)]
    live.heard = time.monotonic() - 10.0
    _log(ws[0], 0, range(3))
    rings.drain(time.time())
    assert live.state == "live" and time.monotonic() - live.heard < 1.0
    gone.heard = time.monotonic()  # rows written just before it died, read after the check gave it up
    agg.registry.mark_lost(gone, "process 1 exited without closing")
    _log(ws[1], 1, range(3))
    rings.drain(time.time())
    assert gone.state == "lost" and agg.counters["ranks_returned"] == 0
    gone.heard = time.monotonic() - 2.0  # silent 2 s, past the 0.5 s timeout; then it writes again
    _log(ws[1], 1, range(3, 6))
    rings.drain(time.time())
    assert gone.state == "live" and agg.counters["ranks_returned"] == 1
    agg.commit()
    assert ("rank_returned", 1) in [(e[1], e[2]) for e in agg.store.events()]
    rings.committed()
    rings.close()
    agg.finalize()


def test_a_drains_progress_row_by_row_and_with_numpy_agree() -> None:
    """Once per stamp at which the highest step rose, that step and when: the same from both ways of
    finding it, over frames whose rows interleave, repeat steps, share stamps or have none."""
    rng = np.random.default_rng(3)
    mark = stamp()
    for _ in range(300):
        dated = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 40))
            steps = np.sort(rng.integers(0, 60, n)).astype(np.int64)
            stamps = (mark - np.sort(rng.integers(0, 50, n))[::-1]).astype(np.uint32)
            stamps[rng.random(n) < 0.05] = 0
            dated.append((steps, stamps))
        assert progress_few(dated, 100.0, mark) == progress_many(dated, 100.0, mark)
    rows = [(np.array([4, 5, 9]), np.array([mark - 2000, mark - 2000, mark], dtype=np.uint32))]
    assert progress_few(rows, 50.0, mark) == [(5, pytest.approx(50.0 - 2000 * 2**20 / 1e9, abs=1e-9)), (9, 50.0)]


@pytest.mark.parametrize("when", ["before its commit", "after its commit, before the release"])
def test_a_crashed_aggregators_restart_stores_every_ring_row_once(tmp_path: Path, when: str) -> None:
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path)
    rings = _rings(agg, tmp_path)
    _log_and_commit(agg, rings, ws, range(0, 40))
    for r, w in enumerate(ws):
        _log(w, r, range(40, 70))
    rings.drain(2.0)
    if when != "before its commit":
        agg.commit()  # the rows and the cursors are on disk; the bytes were never released
    crash(agg)
    agg.close()
    rings.close()
    b = Aggregator(make_cfg(tmp_path, world=2))
    again = _rings(b, tmp_path)
    kept = [int(b.store.meta(meta_key(r, 1)) or 0) for r in range(2)]
    assert kept == ([40 * 48] * 2 if when == "before its commit" else [70 * 48] * 2)
    for r, w in enumerate(ws):
        _log(w, r, range(70, 100))
    again.drain(3.0)
    b.commit()
    again.committed()
    again.close()
    b.finalize()
    _check_stored(tmp_path, 99)
    assert b.counters["points"] == 2 * 2 * 100  # counted once each, the counters carried through the restart


def test_a_ring_whose_writer_closed_is_removed_once_its_last_rows_are_committed(tmp_path: Path) -> None:
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path)
    rings = _rings(agg, tmp_path)
    _log(ws[0], 0, range(5))
    _log(ws[1], 1, range(5))
    ws[0].close()
    rings.drain(1.0, final=True)
    assert rings.detach_drained() == []  # read, not committed: the rows still need the ring
    agg.commit()
    rings.committed()
    assert rings.detach_drained() == [(0, 1)]
    assert not (tmp_path / "coordinator-0.ring").exists() and not names_path(tmp_path / "coordinator-0.ring").exists()
    assert list(rings.readers) == [(1, 1)] and (tmp_path / "coordinator-1.ring").exists()
    rings.close()
    ws[1].close()
    agg.finalize()


def test_a_damaged_ring_is_counted_detached_and_gives_nothing_of_its_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path, ranks=1)
    rings = Rings(agg)
    hello(agg, 0)
    rings.attach(0, 1, tmp_path / "coordinator-0.ring")
    _log(ws[0], 0, range(3))
    ws[0].ring.put(b"not a row")
    assert rings.drain(1.0, final=True) == 0
    assert agg.counters["points"] == 0 and meta_key(0, 1) not in agg.outbox.txn.meta
    assert agg.counters["ring_errors"] == 1 and not rings.readers
    assert "9 bytes, not a row" in caplog.text
    rings.close()
    ws[0].close()
    agg.close()


def test_an_offered_ring_is_attached_only_on_this_machine_and_kept_in_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A HELLO's offer: another machine's ring (another boot id), a file not named as a ring and one that
    does not open are refused (the rank then sends over its socket); this machine's is attached, once,
    and its path journaled."""
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path, ranks=1)
    rings = Rings(agg)
    hello(agg, 0)
    path = str(tmp_path / "coordinator-0.ring")
    assert not rings.offer(0, 1, {"path": path, "boot": "another-machine"})
    assert not rings.offer(0, 1, {"path": path})
    assert not rings.offer(0, 1, "not an offer")
    assert not rings.offer(0, 1, {"path": str(tmp_path / "run.db"), "boot": BOOT_ID})  # not a ring's name
    assert not rings.offer(0, 1, {"path": str(tmp_path / "coordinator-missing.ring"), "boot": BOOT_ID})
    assert "was not attached" in caplog.text and not rings.readers
    assert rings.offer(0, 1, {"path": path, "boot": BOOT_ID})
    assert rings.offer(0, 1, {"path": path, "boot": BOOT_ID})  # a HELLO again (a reconnect): still read
    assert agg.store.metas("ringpath:") == {"ringpath:0-1": path}
    _log(ws[0], 0, range(3))
    assert rings.drain(1.0) == 6
    agg.commit()
    rings.committed()
    rings.close()
    ws[0].close()
    agg.finalize()


def test_a_restarted_aggregator_reattaches_the_rings_its_journal_names(tmp_path: Path) -> None:
    """A rank that wrote rows and died while the aggregator was down never says HELLO again: its ring is
    found through the journal, read from the committed cursor, and every row stored once."""
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path)
    rings = Rings(agg)
    for r in range(2):
        hello(agg, r)
        assert rings.offer(r, 1, {"path": str(tmp_path / f"coordinator-{r}.ring"), "boot": BOOT_ID})
    _log_and_commit(agg, rings, ws, range(0, 40))
    for r, w in enumerate(ws):
        _log(w, r, range(40, 100))  # written while no aggregator reads: both ranks die after this
    crash(agg)
    agg.close()
    rings.close()
    b = Aggregator(make_cfg(tmp_path, world=2))
    again = Rings(b)
    assert again.reattach() == 2
    assert again.drain(2.0, final=True) == 2 * 2 * 60
    b.commit()
    again.committed()
    again.remove_all()
    assert not list(tmp_path.glob("coordinator-*"))
    for w in ws:
        w.close()
    b.finalize()
    _check_stored(tmp_path, 99)


def test_rings_no_process_holds_are_warned_of_and_counted_once_but_not_this_runs_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As it attaches a ring, the aggregator looks in its directory (once) for rings nobody holds: another
    job's is counted and warned of, with its run; this run's own rings (a live writer's, and a dead rank's
    that it reads) are not; nothing is removed."""
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path)
    old = RowWriter(RingWriter(tmp_path / "coordinator-oldjob-2-5.ring", 4096))
    _log(old, 2, range(3))
    old.close()
    rings = Rings(agg, look_in=())
    hello(agg, 1)
    ws[1].close()  # rank 1 died after its HELLO: its ring is this run's, held by the reader
    assert rings.offer(1, 1, {"path": str(tmp_path / "coordinator-1.ring"), "boot": BOOT_ID})
    assert agg.counters["left_rings"] == 1
    assert "1 ring(s) of jobs that ended without removing them" in caplog.text
    assert "(runs oldjob; 1 with rows never committed" in caplog.text
    RingWriter(tmp_path / "coordinator-later-0-1.ring", 4096).close()
    hello(agg, 0)
    assert rings.offer(0, 1, {"path": str(tmp_path / "coordinator-0.ring"), "boot": BOOT_ID})
    assert agg.counters["left_rings"] == 1  # the directory was searched once
    assert rings.look_for_left([tmp_path / "elsewhere", tmp_path]) == 0
    assert (tmp_path / "coordinator-oldjob-2-5.ring").exists()
    rings.close()
    ws[0].close()
    agg.finalize()


def test_the_rings_are_read_as_seldom_as_their_filling_allows_between_a_tenth_and_a_whole_second(
    tmp_path: Path,
) -> None:
    """A read's commit costs about the same whatever it holds, so the wait before the next is long enough
    for the busiest ring to fill an eighth of itself at the rate it filled since the last measure: a second
    while they bring little or nothing, down to a tenth for a rank that fills a ring that fast."""
    agg = Aggregator(make_cfg(tmp_path, world=2))
    ws = _writers(tmp_path, capacity=1 << 16)  # 48-byte rows: 1365 fill a ring
    rings = _rings(agg, tmp_path)
    assert rings.drain_ms == DRAIN_MS[0]  # until a rate is known
    time.sleep(0.06)
    t = time.monotonic()
    assert rings.pace() == DRAIN_MS[1]  # nothing written
    _log(ws[1], 1, range(85))  # 1/16 of the ring
    time.sleep(0.2)
    slow = rings.pace()  # 1/16 in dt >= 0.2 s: an eighth in 2 dt
    assert 399 <= slow <= 2010 * (time.monotonic() - t), slow  # 85 rows are 4080 bytes, not 4096
    assert rings.pace() == slow  # no new measure within 50 ms of the last
    time.sleep(0.05)
    _log(ws[0], 0, range(600))  # nearly half the ring in ~50 ms: read as often as allowed
    assert rings.pace() == DRAIN_MS[0]
    rings.drain(1.0)
    agg.commit()
    rings.committed()
    rings.close()
    agg.finalize()
