"""Backpressure policies against a frozen aggregator: spool (default), block, drop_oldest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

import coordinator
from coordinator.journal.store import LocalStore, list_runs


def _freeze(run: coordinator.Run) -> psutil.Process:
    p = psutil.Process(run._agg.pid)  # type: ignore[union-attr,arg-type]
    p.suspend()
    return p


def test_block_policy_blocks_log_when_the_buffer_is_full_and_loses_nothing(store_dir: Path) -> None:
    """backpressure='block': log() waits once max_buffer_points are unacknowledged; all points arrive later."""
    with coordinator.init_run(settings=coordinator.Settings(backpressure="block", max_buffer_points=5000)) as run:
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
            assert run.stats()["pending"] <= 2 * 5000 + 1
        finally:
            agg.resume()
        t.join(120)
        assert done.is_set()
        run.wait(60)
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert [st for st, _ in s.values("a", 0)] == list(range(200_001))
    finally:
        s.close()


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
            for s in range(1, 1_000_001):
                run.log({"a": float(s)}, step=s)
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


def test_spool_policy_keeps_log_cheap_and_memory_bounded_while_frozen(store_dir: Path, tmp_path: Path) -> None:
    """Default spool: with the aggregator frozen, batches go to disk; all arrive once it resumes."""
    with coordinator.init_run(settings=coordinator.Settings(max_buffer_points=20_000)) as run:
        run.log({"a": 0.0}, step=0)
        run.wait(30)
        agg = _freeze(run)
        try:
            for s in range(1, 500_001):
                run.log({"a": float(s)}, step=s)
            time.sleep(0.5)
            sp = run._sender.spool  # type: ignore[union-attr]
            assert sp is not None and sp.size_bytes > 0
        finally:
            agg.resume()
        run.wait(120)
        assert run.stats()["lost"] == 0
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert [x for x, _ in s.values("a", 0)] == list(range(500_001))
    finally:
        s.close()
    assert info.report is not None and info.report["per_rank"]["0"]["spooled_batches"] > 0
