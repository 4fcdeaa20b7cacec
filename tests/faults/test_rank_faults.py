"""Fault injection on the ranks and the store: SIGKILL, a killed job's spools, a locked journal, a full disk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import coordinator
from coordinator.journal.store import LocalStore, list_runs
from tests.faults.test_aggregator_faults import _check_exactly_once, _wait_for
from tests.integration.test_processes import ROOT, _aggregators, _reap, _spawn

pytestmark = pytest.mark.integration


def _prefix_once(s: LocalStore, rank: int, key: str = "m") -> int:
    """Assert a rank's stored steps are 0..k-1, each once, with the right values; return k."""
    steps = [st for st, _ in s.values(key, rank)]
    assert len(steps) == len(set(steps)), f"rank {rank}: duplicated points"
    assert steps == list(range(len(steps))), f"rank {rank}: a gap (lost points) inside the series"
    assert all(v == float(rank * 10_000 + st) for st, v in s.values(key, rank))
    return len(steps)


def test_rank_sigkilled_midrun_keeps_its_prefix_once_and_run_reports_it(store_dir: Path, tmp_path: Path) -> None:
    """SIGKILL one rank mid-run: its points up to the kill are stored once (spool recovered), others complete."""
    out = tmp_path / "out"
    out.mkdir()
    world, n = 4, 20_000
    procs = _spawn(world, out, store_dir, "--points", str(n), "--rate", "5000", "--liveness", "3")
    _wait_for(out / "rank2.id")
    time.sleep(1.5)
    procs[2].send_signal(signal.SIGKILL)
    res = _reap(procs, timeout=240)
    for r, (code, _, err) in enumerate(res):
        if r != 2:
            assert code == 0 or "was closed as failed" in err, err[-3000:]
    [info] = list_runs(store_dir)
    assert info.state == "failed"
    assert info.report is not None and any("rank 2" in r for r in info.report["reasons"])
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for r in (0, 1, 3):
            assert _prefix_once(s, r) == n
        k = _prefix_once(s, 2)
        assert 0 < k < n
    finally:
        s.close()


def stall_freeze_and_kill(store_dir: Path, out: Path, world: int, n: int) -> tuple[str, Callable[[], None]]:
    """A job of ``world`` ranks logs ``n`` points each and stalls; its aggregator is frozen meanwhile.

    Returns the run's id and what kills the job whole (every rank and the frozen aggregator,
    SIGKILL, reaped): the caller looks at what the stalled ranks left first.
    """
    procs = _spawn(world, out, store_dir, "--points", str(n), "--rate", "8000", "--stall-after", str(n))
    run_id = _wait_for(out / "rank0.id")
    for r in range(world):
        _wait_for(out / f"rank{r}.id")
    time.sleep(0.3)
    [agg] = _aggregators(run_id)
    agg.suspend()
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "STALLED"

    def kill() -> None:
        for p in procs:
            p.kill()
        agg.kill()
        agg.wait(10)
        _reap(procs)

    return run_id, kill


def coordinator_sync(run_id: str) -> subprocess.CompletedProcess[str]:
    """``coordinator sync <run_id>`` in a child process (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "sync", run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


@pytest.mark.usefixtures("socket_path")
def test_coordinator_sync_delivers_what_a_killed_job_left_in_its_spools(store_dir: Path, tmp_path: Path) -> None:
    """Freeze the aggregator, let ranks spool, SIGKILL everything; `coordinator sync` stores every point once."""
    out = tmp_path / "out"
    out.mkdir()
    world, n = 3, 12_000
    run_id, kill = stall_freeze_and_kill(store_dir, out, world, n)
    spooled = list((store_dir / "spool" / run_id).glob("rank-*/*.seg"))
    assert spooled, "nothing was spooled while the aggregator was frozen"
    kill()
    r = coordinator_sync(run_id)
    assert "points" in r.stdout, r.stderr
    s = _check_exactly_once(store_dir, world, n)
    s.close()
    assert not list((store_dir / "spool" / run_id).glob("rank-*/*.seg")), "delivered spools must be removed"
    r2 = coordinator_sync(run_id)
    assert r2.returncode in (0, 1), r2.stderr
    _check_exactly_once(store_dir, world, n).close()
    # What the SIGKILLed job left in the runtime directory (a next start would remove it too).
    from coordinator.transport.discovery import private_dir
    from coordinator.transport.launcher import remove_stale_dirs

    assert remove_stale_dirs(private_dir()) >= 1


def test_locked_journal_applies_backpressure_then_drains_exactly_once(store_dir: Path) -> None:
    """The store is locked by another writer for 4 s: ranks keep logging, then everything lands once."""
    with coordinator.init_run() as run:
        run.log({"m": 0.0}, step=0)
        run.wait(30)
        [info] = list_runs(store_dir)
        db = sqlite3.connect(info.path / "run.db", timeout=1, check_same_thread=False)
        db.execute("BEGIN EXCLUSIVE")
        released = threading.Event()

        def release() -> None:
            time.sleep(4)
            db.rollback()
            db.close()
            released.set()

        t = threading.Thread(target=release)
        t.start()
        t0 = time.perf_counter()
        for s in range(1, 100_001):
            run.log({"m": float(s)}, step=s)
        assert time.perf_counter() - t0 < 4, "log() stalled behind the locked journal"
        assert not released.is_set()
        run.wait(120)
        t.join(10)
    s_ = _check_exactly_once(store_dir, 1, 100_001)
    s_.close()


def _tiny_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")


@pytest.mark.usefixtures("socket_path")
def test_spool_disk_full_is_a_clear_error_and_nothing_is_lost(store_dir: Path, tmp_path: Path) -> None:
    """A full spool disk raises SinkError from wait() naming the spool; points stay in memory and all arrive."""
    spool = tmp_path / "tiny"
    _tiny_tmpfs(spool, "256k")
    try:
        with coordinator.init_run(settings=coordinator.Settings(spool_dir=str(spool))) as run:
            run.log({"m": 0.0}, step=0)
            run.wait(30)
            assert run._agg is not None and run._agg.pid is not None  # rank 0 started the aggregator
            agg = psutil.Process(run._agg.pid)
            agg.suspend()
            try:
                for s in range(1, 200_001):
                    run.log({"m": float(s)}, step=s)
                time.sleep(1.0)
                with pytest.raises(coordinator.CoordinatorError) as ei:
                    run.wait(timeout=2)
                msg = str(ei.value) + "".join(getattr(ei.value, "__notes__", []))
                assert "No space left" in msg or isinstance(ei.value, coordinator.SinkError), msg
            finally:
                agg.resume()
            deadline = time.monotonic() + 120
            while True:
                try:
                    run.wait(timeout=10)
                    break
                except coordinator.SinkError:
                    assert time.monotonic() < deadline
        s_ = _check_exactly_once(store_dir, 1, 200_001)
        s_.close()
    finally:
        subprocess.run(["umount", "-l", str(spool)], capture_output=True)
