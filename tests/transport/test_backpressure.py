"""Backpressure policies against a frozen aggregator: spool (default), block, drop_oldest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

import coordinator
from coordinator.journal.store import LocalStore, list_runs


def _freeze(run: coordinator.Run) -> psutil.Process:
    assert run._agg is not None, "rank 0 owns the aggregator"
    pid = run._agg.pid
    assert pid is not None, "the aggregator is running"
    p = psutil.Process(pid)
    p.suspend()
    return p


@pytest.mark.parametrize("rings", ["0", "1"])
def test_block_policy_blocks_log_when_the_buffer_is_full_and_loses_nothing(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, rings: str
) -> None:
    """backpressure='block': log() waits once max_buffer_points are unacknowledged; all points arrive later.

    With rings (a 64 KiB ring: ~2,000 scalar rows) the frozen aggregator frees none of the ring, so rows
    go over the socket once it is full (behind the first of them until that is acknowledged), fill the
    buffer, and log() blocks the same; every step is stored once, in both paths' order."""
    monkeypatch.setenv("COORDINATOR_RINGS", rings)  # the rings variant's ring is small, to fill
    settings = coordinator.Settings(backpressure="block", max_buffer_points=5000, ring_bytes=1 << 16)
    with coordinator.init_run(settings=settings) as run:
        run.log({"a": 0.0}, step=0)
        run.wait(30)
        agg = _freeze(run)
        done = threading.Event()

        def produce() -> None:
            for s in range(1, 200_001):
                run.log({"a": float(s)}, step=s)
            done.set()

        t = threading.Thread(target=produce)
        t.start()
        try:
            time.sleep(1.5)
            assert not done.is_set(), "log() did not block with a frozen aggregator and a full buffer"
            st = run.stats()
            assert st["pending"] - st.get("ring_points", 0) <= 2 * 5000 + 1  # the ring's rows are unread too
            if rings == "1":
                assert st["ring_full"] >= 1 and 1000 < st["ring_points"] < 2100, st
        finally:
            agg.resume()
        t.join(120)
        assert done.is_set()
        run.wait(60)
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.values("a", 0) == [(st, float(st)) for st in range(200_001)]
    finally:
        s.close()
    assert info.report is not None and (info.report["ring_points"] > 0) == (rings == "1")


def test_drop_oldest_bounds_memory_counts_every_dropped_point_and_reports_it(store_dir: Path) -> None:
    """backpressure='drop_oldest': log() never blocks; dropped points are counted, warned and in the report."""
    with coordinator.init_run(
        settings=coordinator.Settings(backpressure="drop_oldest", max_buffer_points=20_000)
    ) as run:
        run.log({"a": 0.0}, step=0)
        run.wait(30)
        agg = _freeze(run)
        try:
            t0 = time.perf_counter()
            for step in range(1, 1_000_001):
                run.log({"a": float(step)}, step=step)
            assert time.perf_counter() - t0 < 30
            time.sleep(0.5)
        finally:
            agg.resume()
        run.wait(60)
        st = run.stats()
    assert st["dropped"] > 0
    assert st["acked"] + st["dropped"] == 1_000_001
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        stored = s.values("a", 0)
        steps = [x for x, _ in stored]
        assert len(steps) == len(set(steps)) == st["acked"]
    finally:
        s.close()
    rep = info.report
    assert rep is not None and rep["per_rank"]["0"]["dropped_points"] == st["dropped"]


_FREEZE_TIMEOUTS = 80
"""The freeze lasts this many ack timeouts."""


@pytest.mark.usefixtures("socket_path")
def test_spool_policy_keeps_rank_memory_bounded_and_log_cheap_through_a_long_freeze(store_dir: Path) -> None:
    """Default spool, aggregator SIGSTOPped for many ack timeouts while the rank logs steadily.

    The rank's RSS stays within a bound derived from the settings (the window and the buffer,
    twice over, plus slack), log() never waits for the aggregator, and after SIGCONT every point
    is stored exactly once. Before the fix, every ack timeout re-sent the whole window into the
    socket's unbounded send queue, so memory grew by a window per timeout.
    """
    keys = [f"k{i}" for i in range(50)]
    cfg = coordinator.Settings(
        ack_timeout_s=0.1,
        flush_interval_s=0.05,
        max_window_batches=32,
        max_batch_points=3000,
        max_buffer_points=50_000,
    )
    window_bytes = cfg.max_window_batches * cfg.max_batch_points * 16
    buffer_bytes = cfg.max_buffer_points * 16
    bound = 2 * window_bytes + 2 * buffer_bytes + 16 * 1024**2
    me = psutil.Process()
    step = 0

    def log_for(seconds: float) -> float:
        """Log every key about once a millisecond; returns the slowest log() call."""
        nonlocal step
        slowest = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            values = {k: float(step) for k in keys}
            t0 = time.perf_counter()
            run.log(values, step=step)
            slowest = max(slowest, time.perf_counter() - t0)
            step += 1
            time.sleep(0.001)
        return slowest

    with coordinator.init_run(settings=cfg) as run:
        log_for(1.0)  # warm up: allocator arenas, keys, the spool
        run.wait(60)
        base = me.memory_info().rss
        agg = _freeze(run)
        peak = base
        slowest = 0.0
        try:
            freeze_s = _FREEZE_TIMEOUTS * cfg.ack_timeout_s
            end = time.monotonic() + freeze_s
            while time.monotonic() < end:
                slowest = max(slowest, log_for(0.1))
                peak = max(peak, me.memory_info().rss)
            assert run._sender is not None
            sp = run._sender.spool
            assert sp is not None and sp.size_bytes > 0, "batches waited on disk"
        finally:
            agg.resume()
        run.wait(120)
        assert run.stats()["lost"] == 0
    growth = peak - base
    print(
        f"rank RSS growth over a {freeze_s:.1f}s freeze: {growth / 2**20:.1f} MiB (bound {bound / 2**20:.1f});"
        f" slowest log() {slowest * 1000:.1f} ms"
    )
    assert growth <= bound, f"the rank's memory grew by {growth / 2**20:.1f} MiB while the aggregator was frozen"
    assert slowest < freeze_s / 2, "log() waited for the frozen aggregator"
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for k in keys:
            assert [x for x, _ in s.values(k, 0)] == list(range(step)), k
    finally:
        s.close()
    assert info.report is not None and info.report["per_rank"]["0"]["spooled_batches"] > 0
