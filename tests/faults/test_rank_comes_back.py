"""A rank that stalls past the liveness timeout and comes back is averaged again; how a run ends (real processes)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.journal.store import LocalStore, list_runs
from tests.integration.test_processes import ROOT, _reap

pytestmark = pytest.mark.integration

WORKER = Path(__file__).parent / "workers_comeback.py"


def _spawn(out: Path, store: Path, *args: str, **env: str) -> list[subprocess.Popen[str]]:
    job = str(random.randrange(20_000, 60_000))
    procs = []
    for r in range(2):
        e = dict(
            os.environ,
            RANK=str(r),
            WORLD_SIZE="2",
            COORDINATOR_DIR=str(store),
            PYTHONPATH=str(ROOT),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=job,
            **env,
        )
        cmd = [sys.executable, str(WORKER), "--out", str(out), *args]
        procs.append(subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _progress(out: Path, rank: int) -> int:
    try:
        return int((out / f"progress{rank}").read_text() or -1)
    except (FileNotFoundError, ValueError):
        return -1


@pytest.mark.parametrize("rings", ["0", "1"])
def test_a_rank_stalled_past_the_liveness_timeout_is_averaged_again_when_it_continues(
    store_dir: Path, tmp_path: Path, rings: str
) -> None:
    """SIGSTOP rank 1 past liveness_timeout_s, then SIGCONT: every later step of the main series has both ranks.

    With rings the rank skips its heartbeat while it writes rows: the rows written after it was given up
    are what bring it back."""
    out = tmp_path / "out"
    out.mkdir()
    procs = _spawn(
        out,
        store_dir,
        "--steps",
        "80",
        COORDINATOR_LIVENESS_TIMEOUT_S="1.5",
        COORDINATOR_HEARTBEAT_INTERVAL_S="0.2",
        COORDINATOR_RINGS=rings,
    )
    try:
        deadline = time.monotonic() + 120
        while _progress(out, 1) < 20:
            assert time.monotonic() < deadline, "rank 1 never reached step 20"
            assert all(p.poll() is None for p in procs), [p.communicate(timeout=30) for p in procs]
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGSTOP)
        stopped_at = _progress(out, 1)
        time.sleep(4.0)  # well past the 1.5 s liveness timeout: the aggregator marks rank 1 lost
        procs[1].send_signal(signal.SIGCONT)
    except BaseException:
        procs[1].send_signal(signal.SIGCONT)
        raise
    res = _reap(procs, timeout=180)
    for code, _, err in res:
        assert code == 0, err[-3000:]
    [info] = list_runs(store_dir)
    assert info.report is not None
    assert info.state == "finished", info.report["reasons"]
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        events = [(kind, rank) for _, kind, rank, _ in s.events()]
        assert ("rank_lost", 1) in events and ("rank_returned", 1) in events
        later = [(st, n) for st, n in s.contributors("m") if st >= stopped_at + 2]
        assert len(later) == 80 - (stopped_at + 2)
        assert [st for st, n in later if n != 2] == [], "steps after the rank came back that lack its contribution"
        main = dict(s.values("m", -1))
        assert all(main[st] == (st + (100 + st)) / 2 for st, _ in later)
    finally:
        s.close()
    assert info.report["ranks_returned"] >= 1
    assert (info.report["ring_points"] > 0) == (rings == "1")


@pytest.mark.parametrize("ending", ["failed", "interrupted"])
def test_a_rank_that_raises_or_is_interrupted_ends_the_run_failed_or_interrupted(
    store_dir: Path, tmp_path: Path, ending: str
) -> None:
    """Rank 1 leaves its with-block by an exception / KeyboardInterrupt: the run is stored as such, naming it."""
    out = tmp_path / "out"
    out.mkdir()
    res = _reap(_spawn(out, store_dir, "--steps", "10", "--ending", ending), timeout=180)
    for code, _, err in res:
        assert code == 0, err[-3000:]
    [info] = list_runs(store_dir)
    assert info.state == ending and info.report is not None
    named = info.report["failed_ranks" if ending == "failed" else "interrupted_ranks"]
    assert list(named) == ["1"], info.report
    if ending == "failed":
        assert "the training step blew up" in named["1"]
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.fields()["sys/state"] == ("str", ending)
    finally:
        s.close()
