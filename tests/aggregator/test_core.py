"""The Aggregator composed: run creation, reduction into the main series, reads, restart, commit."""

from __future__ import annotations

import os
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.lock import WriterLock
from coordinator.errors import ProtocolError, SinkError
from coordinator.journal.store import MAIN_RANK, LocalStore
from coordinator.transport import wire
from tests.aggregator.helpers import RUN, batch, crash, env, hello, make_cfg, reopen


def test_new_aggregator_creates_run_and_sys_fields(tmp_path: Path) -> None:
    """Starting creates the run row and the sys/* fields in the first commit."""
    a = Aggregator(make_cfg(tmp_path, world=3, project="proj", name="nice"))
    a.commit()
    s = reopen(tmp_path)
    try:
        info = s.run_info()
        assert (info.id, info.project, info.name, info.world_size, info.state) == (RUN, "proj", "nice", 3, "running")
        f = s.fields()
        assert f["sys/id"] == ("str", RUN) and f["sys/world_size"] == ("int", 3)
        assert f["sys/state"] == ("str", "running") and f["sys/creation_time"][0] == "datetime"
    finally:
        s.close()


def test_an_aggregator_that_fails_to_open_its_run_leaves_neither_the_store_nor_the_lock_held(tmp_path: Path) -> None:
    """A failure after the store opened (here: unreadable saved counters) closes it and releases the lock."""
    Aggregator(make_cfg(tmp_path)).close()
    s = LocalStore(tmp_path / "run.db")
    s.set_meta("counters", "{not json")
    s.close()
    with pytest.raises(ValueError) as failed:  # kept: its frames keep the half-made aggregator alive
        Aggregator(make_cfg(tmp_path), lock_timeout_s=0.1)
    db = (tmp_path / "run.db").resolve()
    assert not [p for p in open_files() if p.startswith(str(db))]  # run.db, -wal and -shm all closed
    WriterLock(tmp_path / "writer.lock", 0.1).release()  # free at once: no SinkError after 0.1 s
    assert failed.traceback  # still held until here


def open_files() -> list[str]:
    """What this process's descriptors point to (one was listdir's own, gone by its readlink)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            continue
    return paths


def test_main_series_is_reduced_and_committed(agg: Aggregator, tmp_path: Path) -> None:
    """Points of both ranks are reduced into the main series with contributor counts."""
    hello(agg, 0)
    hello(agg, 1)
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})
    agg.emit(1.0)
    assert agg.counters["main_points"] == 0
    batch(agg, 1, 1, metrics={"loss": {0: 3.0, 1: 6.0}})
    agg.emit(1.0)
    agg.commit()
    assert agg.counters["main_points"] == 2
    assert agg.last["loss"] == (1, 4.0)
    assert agg.state()["last"] == {"loss": [1, 4.0]}
    s = reopen(tmp_path)
    try:
        assert s.values("loss", MAIN_RANK) == [(0, 2.0), (1, 4.0)]
        assert s.contributors("loss") == [(0, 2), (1, 2)]
    finally:
        s.close()


def test_policies_are_recorded_per_key(tmp_path: Path) -> None:
    """Each new key is stored with the policy its glob selects."""
    a = Aggregator(make_cfg(tmp_path, world=1, policies={"acc/*": "max"}, default_policy="sum"))
    hello(a, 0)
    batch(a, 0, 1, metrics={"acc/top1": {0: 0.5}, "n": {0: 2.0}})
    a.emit(1.0)
    a.commit()
    assert a.store.key_policies() == {"acc/top1": "max", "n": "sum"}


def test_restart_keeps_the_run_creation_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sys/creation_time stays the run's creation time (the run row's) across a restart."""
    a = Aggregator(make_cfg(tmp_path))
    a.commit()
    created = a.store.run_info().created
    assert a.store.fields()["sys/creation_time"] == ("datetime", created)
    crash(a)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60.0)  # the restart happens a minute later
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    b.commit()
    assert b.store.run_info().created == created
    assert b.store.fields()["sys/creation_time"] == ("datetime", created)


def test_restart_does_not_lose_points_waiting_for_other_ranks(tmp_path: Path) -> None:
    """A rank's committed point whose group was still open at the crash still counts in the main series."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    a.emit(1.0)
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    hello(b, 1)
    batch(b, 1, 1, metrics={"k": {0: 3.0}})
    b.finalize()
    s = reopen(tmp_path)
    try:
        assert s.values("k", 0) == [(0, 1.0)] and s.values("k", 1) == [(0, 3.0)]
        assert s.values("k") == [(0, 2.0)]
        assert s.contributors("k") == [(0, 2)]
    finally:
        s.close()


def test_a_restart_still_waits_for_a_rank_that_had_logged_nothing_before_it(tmp_path: Path) -> None:
    """A rank slow to start, with no point committed before the crash, is waited for by the restarted
    aggregator as by its predecessor: a sweep before its first batch emits no one-rank mean."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    a.emit(1.0)
    a.commit()
    crash(a)
    a.close()
    b = Aggregator(make_cfg(tmp_path))
    b.emit(2.0, all_keys=True)  # the restarted aggregator's first sweep, before rank 1 is heard from
    b.commit()
    hello(b, 1)
    batch(b, 1, 1, now=2.0, metrics={"k": {0: 3.0, 1: 5.0}})
    b.finalize()
    assert b.reducer.late_points == 0
    s = reopen(tmp_path)
    try:
        assert s.values("k") == [(0, 2.0), (1, 3.0)] and s.contributors("k") == [(0, 2), (1, 2)]
    finally:
        s.close()


def test_commit_failure_keeps_the_transaction_for_a_retry(agg: Aggregator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SinkError from the store leaves the open transaction intact; the retry stores it once."""
    hello(agg, 0)
    batch(agg, 0, 1, metrics={"k": {0: 1.0}})
    real = agg.store.commit
    calls = []

    def failing(data: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SinkError("disk full")
        real(data)

    monkeypatch.setattr(agg.store, "commit", failing)
    pending = agg.txn
    with pytest.raises(SinkError):
        agg.commit()
    assert agg.txn is pending and not pending.empty()
    assert batch(agg, 0, 1, metrics={"k": {0: 1.0}}) == "duplicate"
    agg.commit()
    assert agg.txn.empty()
    assert real.__self__.values("k", 0) == [(0, 1.0)]


def test_a_bad_key_is_refused_and_counted_after_the_sender_sent_good_ones(agg: Aggregator) -> None:
    """Known keys skip re-validation; a new bad key in a later batch still refuses the whole batch."""
    hello(agg, 0)
    hello(agg, 1)
    assert batch(agg, 0, 1, metrics={"loss": {0: 1.0}}) == "new"
    assert batch(agg, 1, 1, metrics={"loss": {0: 3.0}}) == "new"
    with pytest.raises(ProtocolError, match="bad metric key"):
        batch(agg, 0, 2, metrics={"loss": {1: 2.0}, "a//b": {1: 1.0}})
    assert agg.counters["bad_frames"] == 1 and agg.counters["points"] == 2
    assert agg.senders[(0, 1)].last_seq == 1, "the refused batch does not advance its sender"
    assert batch(agg, 0, 2, metrics={"loss": {1: 2.0}}) == "new"
    assert agg.counters["points"] == 3 and agg.known_keys == {"loss"}


def _block_batch(
    a: Aggregator, rank: int, inc: int, seq: int, keys: tuple[str, ...], steps: list[int], off: float = 0.0
) -> str:
    """A batch of one block (a dict of ``keys`` logged at ``steps``; value = off + step + key index / 10)."""
    vals = [off + s + i / 10 for s in steps for i in range(len(keys))]  # step-major, as a frame sends them
    blk = [list(keys), array("q", steps).tobytes(), array("d", vals).tobytes()]
    return a.batch(env(wire.BATCH, rank, inc, seq), wire.encode_chunks([], [], 1.0, None, [blk]), 1.0)


def test_a_key_tuple_is_checked_once_per_sender_and_a_new_incarnation_still_rewinds(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    _block_batch(a, 0, 1, 1, ("a", "b"), [0, 1, 2, 3])
    _block_batch(a, 0, 1, 2, ("a", "b"), [4, 5])
    snd = a.senders[(0, 1)]
    assert snd.blocks_seen == {("a", "b")} and snd.keys_seen == {"a", "b"} and a.known_keys == {"a", "b"}
    a.commit()
    hello(a, 0, inc=2)
    _block_batch(a, 0, 2, 1, ("a", "b"), [2], 100.0)  # a later incarnation re-logs from step 2: both keys rewound
    _block_batch(a, 0, 2, 2, ("a", "b"), [3], 100.0)  # seen by this sender now: no second rewind
    assert a.counters["rewinds"] == 2 and a.senders[(0, 2)].blocks_seen == {("a", "b")}
    a.emit(2.0, force=True)
    a.commit()
    assert a.store.values("a", 0) == [(0, 0.0), (1, 1.0), (2, 102.0), (3, 103.0)]
    assert a.store.values("b", 0) == [(0, 0.1), (1, 1.1), (2, 102.1), (3, 103.1)]
    a.finalize()
