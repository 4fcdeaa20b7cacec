"""SIGKILL of the aggregator while acknowledged rank points are only in the staging log: nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from coordinator.errors import SinkError
from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.faults.test_aggregator_faults import _check_exactly_once, _wait_for
from tests.integration.test_processes import ROOT, _aggregators, _reap, _spawn

pytestmark = pytest.mark.integration


def _staged_now(db: Path) -> int:
    """Staged points of the store at ``db`` (0 when it cannot be read yet)."""
    try:
        s = LocalStore(db, readonly=True)
    except SinkError:
        return 0
    try:
        return s.staged_points()
    finally:
        s.close()


def test_aggregator_sigkilled_with_staged_rank_points_restarts_and_stores_each_once(
    store_dir: Path, tmp_path: Path
) -> None:
    """Freeze the serving aggregator until its store holds staged rows, SIGKILL it: the restart writes them once."""
    out = tmp_path / "out"
    out.mkdir()
    world, n = 4, 30_000
    procs = _spawn(world, out, store_dir, "--points", str(n), "--rate", "6000")
    run_id = _wait_for(out / "rank0.id")
    deadline = time.monotonic() + 60
    staged = 0
    agg: psutil.Process | None = None
    while not staged:
        assert time.monotonic() < deadline, "never saw staged rank points"
        time.sleep(0.2)
        [agg] = _aggregators(run_id) or [None]
        runs = list_runs(store_dir)
        if agg is None or not runs:
            continue
        agg.suspend()  # between two commits, or inside one (a reader sees the last committed state)
        staged = _staged_now(runs[0].path / "run.db")
        if not staged:
            agg.resume()
    assert agg is not None
    agg.send_signal(signal.SIGKILL)  # stopped, with acknowledged points only in the staging log
    agg.wait(10)
    res = _reap(procs, timeout=240)
    for code, _, err in res:
        assert code == 0, err[-4000:]
    s = _check_exactly_once(store_dir, world, n)
    try:
        assert s.staged_points() == 0
        assert [st for st, _ in s.values("m", MAIN_RANK)] == list(range(n))
        assert s.run_info().state == "finished"
        restarts = [d for _, kind, _, d in s.events() if kind == "aggregator_restarted"]
        assert any("staged rank points written as chunks" in d for d in restarts), restarts
    finally:
        s.close()


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from array import array
    from coordinator.aggregator import Aggregator, AggregatorConfig
    from coordinator.transport import wire

    root, world, steps = sys.argv[1], 3, 200
    a = Aggregator(AggregatorConfig(run_id="crash-1", store_path=root + "/runs/crash-1/run.db", world_size=world))
    for r in range(world):
        a.hello(wire.decode_envelope(wire.encode_envelope(wire.HELLO, "crash-1", r, 1, 0)), {}, 1.0)
    a.commit()
    for seq in range(1, 11):  # ten rounds of 20 steps a rank: each committed as one staged row
        for r in range(world):
            env = wire.decode_envelope(wire.encode_envelope(wire.BATCH, "crash-1", r, 1, seq))
            s = range((seq - 1) * 20, seq * 20)
            cols = [("m", array("q", s), array("d", [r * 10_000.0 + x for x in s]))]
            a.batch(env, wire.encode_batch(cols, [], 1.0), 1.0)
        a.emit(1.0, hold=True)
        a.commit(stage=True, now=100.0)
    sys.stdout.write("committed\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_crashed_runs_staged_points_are_reported_then_written_once_by_sync(tmp_path: Path) -> None:
    """A writer SIGKILLed between a staged commit and its materialization: readers report it, sync writes it."""
    root = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(root)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert p.returncode == -signal.SIGKILL and p.stdout == "committed\n", p.stderr[-4000:]
    db = root / "runs" / "crash-1" / "run.db"
    s = LocalStore(db, readonly=True)
    try:
        assert s.staged_points() == 3 * 200 and s.values("m", 0) == []
        assert s.high_water_marks() == {(r, 1): 10 for r in range(3)}, "acked: the marks are durable"
    finally:
        s.close()
    cli = [sys.executable, "-m", "coordinator.cli", "--dir", str(root)]
    show = subprocess.run([*cli, "show", "crash-1"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "staged     600 rank points not yet in the series below" in show.stdout
    for _ in range(2):  # sync writes them once; a second sync finds nothing staged
        # The ranks never closed: sync finishes the run as failed (exit status 1) with every point.
        up = subprocess.run(
            [*cli, "sync", "crash-1"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert up.returncode == 1 and "600 points from 3 ranks stored" in up.stdout, up.stdout + up.stderr[-4000:]
    s = LocalStore(db, readonly=True)
    try:
        assert s.staged_points() == 0
        for r in range(3):
            assert s.values("m", r) == [(x, r * 10_000.0 + x) for x in range(200)]
        assert s.values("m", MAIN_RANK) == [(x, 10_000.0 + x) for x in range(200)]
        assert s.run_info().state != "running"
    finally:
        s.close()
