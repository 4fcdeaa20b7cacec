"""The WAL checkpoint thread: it copies the log while the writer commits, sleeps while it does not,
stops at once, and a failure is counted and logged without stopping anything."""

from __future__ import annotations

import logging
import sqlite3
import time
from array import array
from pathlib import Path

import pytest

from coordinator.journal.checkpoint import MAX_INTERVAL_S, Checkpointer
from coordinator.journal.store import ChunkRow, LocalStore, TxnData
from tests.polling import wait_until


def _commit(store: LocalStore, seq: int, n: int = 2000) -> None:
    data = TxnData()
    data.key_policies["loss"] = "mean"
    data.chunks.append(ChunkRow("loss", 0, 0, seq, 1.0, array("q", range(seq * n, seq * n + n)), array("d", [0.5] * n)))
    store.commit(data)


def _writer(tmp_path: Path) -> tuple[LocalStore, Checkpointer]:
    store = LocalStore(tmp_path / "run.db")
    store.create_run("r", "p", "r", 1, 1.0)
    store.start_checkpoints()
    ck = store._checkpointer
    assert ck is not None
    ck.interval = 0.05
    return store, ck


def test_the_thread_copies_the_log_after_commits_and_the_writers_own_checkpoint_is_only_a_bound(
    tmp_path: Path,
) -> None:
    store, ck = _writer(tmp_path)
    try:
        (limit,) = store._db.execute("PRAGMA wal_autocheckpoint").fetchone()
        # SQLite's checkpoint in the commit stays, at the thread's target, as the bound for a burst
        # (at 4 x 8192 a writer the thread could not keep up with stalled for 128 MiB at once).
        assert limit == 8192
        for seq in range(1, 6):
            _commit(store, seq)
        assert wait_until(lambda: ck.checkpoints >= 1, 10)
        assert ck.last is not None and ck.last[0] > 0 and ck.last[1] == ck.last[0], ck.last
        assert 0.05 < ck.interval <= MAX_INTERVAL_S, "far fewer frames than its target: the next one waits longer"
        assert store.take_checkpoint_failures() == 0
        assert len(store.rank_points("loss")[0][0]) == 10000
    finally:
        store.close()
    assert not ck._thread.is_alive()


def test_no_commit_no_checkpoint_and_close_does_not_wait_for_the_interval(tmp_path: Path) -> None:
    store, ck = _writer(tmp_path)
    time.sleep(0.3)
    assert ck.checkpoints == 0, "a writer that does not commit leaves the thread asleep"
    _commit(store, 1)
    ck.interval = MAX_INTERVAL_S
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 < 2.0 and not ck._thread.is_alive()
    assert ck.checkpoints == 0


def test_a_failed_checkpoint_is_counted_and_logged_and_the_next_one_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 512)
    ck = Checkpointer(junk)
    try:
        ck.interval = 0.02
        with caplog.at_level(logging.WARNING, logger="coordinator.journal"):
            ck.committed()
            assert wait_until(lambda: ck.failures >= 1, 10)
            ck.committed()
            assert wait_until(lambda: ck.failures >= 2, 10)
        assert ck.checkpoints == 0
        assert "WAL checkpoint failed" in caplog.text and str(junk) in caplog.text
    finally:
        ck.close()
    assert not ck._thread.is_alive()


def test_a_reader_keeps_reading_while_the_thread_checkpoints(tmp_path: Path) -> None:
    store, ck = _writer(tmp_path)
    reader = sqlite3.connect(f"file:{tmp_path / 'run.db'}?mode=ro", uri=True)
    try:
        for seq in range(1, 30):
            _commit(store, seq, 500)
            (n,) = reader.execute("SELECT count(*) FROM chunks").fetchone()
            assert n == seq
        assert wait_until(lambda: ck.checkpoints >= 1, 10)
    finally:
        reader.close()
        store.close()
