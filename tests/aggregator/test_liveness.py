"""Liveness: silent ranks lost, heartbeats revive, rank 0 lost, when the run has ended."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.transport import wire
from tests.aggregator.helpers import batch, bye, env, hello, make_cfg


def _silence(agg: Aggregator, rank: int, seconds: float) -> None:
    """Pretend ``rank`` was last heard ``seconds`` ago (liveness runs on time.monotonic)."""
    agg.senders[(rank, 1)].heard = time.monotonic() - seconds


def test_liveness_marks_silent_ranks_lost_and_heartbeats_revive(agg: Aggregator) -> None:
    """A rank silent past liveness_timeout_s is lost (reducer stops waiting); a ping revives it."""
    hello(agg, 0, now=0.0)
    hello(agg, 1, now=0.0)
    batch(agg, 0, 1, now=0.0, metrics={"k": {0: 1.0}})
    batch(agg, 1, 1, now=0.0, metrics={"k": {0: 3.0}})
    batch(agg, 0, 2, now=20.0, metrics={"k": {1: 5.0}})
    _silence(agg, 1, 25.0)
    agg.check_liveness(25.0)
    assert agg.rank_state == {0: "live", 1: "live"}
    _silence(agg, 1, 31.0)
    agg.check_liveness(31.0)
    assert agg.rank_state == {0: "live", 1: "lost"}
    agg.emit(31.0)
    assert agg.last["k"] == (1, 5.0)
    agg.touch(env(wire.PING, 1, 1, 0), 32.0)
    assert agg.rank_state[1] == "live"
    agg.commit()
    assert ("rank_lost", 1) in [(e[1], e[2]) for e in agg.store.events()]


def test_ranks_sharing_a_process_are_lost_together_and_a_live_process_keeps_its_ranks(tmp_path: Path) -> None:
    """Same host: ranks 0 and 1 of an exited process are lost in one sweep; rank 2, in a live one, stays."""
    agg = Aggregator(make_cfg(tmp_path, world=3))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for r in range(3):
        hello(agg, r, now=0.0)
        s = agg.senders[(r, 1)]
        s.host, s.pid = socket.gethostname(), gone.pid if r < 2 else os.getpid()
    agg.check_liveness(1.0)
    assert agg.rank_state == {0: "lost", 1: "lost", 2: "live"}


def test_liveness_follows_the_monotonic_clock_not_the_wall_clock(agg: Aggregator) -> None:
    """A wall-clock jump (the 'now' the loop passes) neither loses a rank nor keeps a silent one."""
    hello(agg, 0, now=0.0)
    hello(agg, 1, now=0.0)
    agg.check_liveness(1e9)  # the wall clock jumped forward: nobody was silent
    assert agg.rank_state == {0: "live", 1: "live"}
    _silence(agg, 1, 31.0)
    agg.check_liveness(0.0)  # the wall clock went back: rank 1 is still silent
    assert agg.rank_state == {0: "live", 1: "lost"}


def test_a_lost_rank_heard_again_is_waited_for_from_the_next_unemitted_step(agg: Aggregator) -> None:
    """A lost rank whose batches come again (no new HELLO) is in the main series of later steps, with an event."""
    hello(agg, 0)
    hello(agg, 1)
    batch(agg, 0, 1, metrics={"k": {0: 1.0}})
    batch(agg, 1, 1, metrics={"k": {0: 3.0}})
    _silence(agg, 1, 31.0)
    agg.check_liveness(31.0)
    batch(agg, 0, 2, now=31.0, metrics={"k": {1: 5.0, 2: 6.0}})
    agg.emit(31.0)
    assert agg.last["k"] == (2, 6.0)  # emitted without the lost rank
    batch(agg, 1, 2, now=31.0, metrics={"k": {1: 7.0, 2: 8.0, 3: 9.0}})  # back: 1 and 2 are late
    assert agg.rank_state[1] == "live"
    batch(agg, 0, 3, now=31.0, metrics={"k": {3: 1.0, 4: 2.0}})
    agg.emit(32.0)
    assert agg.last["k"] == (3, 5.0)  # step 3 has both ranks; step 4 waits for rank 1
    batch(agg, 1, 3, now=31.0, metrics={"k": {4: 4.0}})
    agg.emit(32.0)
    agg.commit()
    assert agg.store.contributors("k") == [(0, 2), (1, 1), (2, 1), (3, 2), (4, 2)]
    assert agg.reducer.late_points == 2 and agg.counters["ranks_returned"] == 1
    assert [e[1] for e in agg.store.events() if e[2] == 1][-2:] == ["rank_lost", "rank_returned"]
    agg.senders[(1, 1)].heard = time.monotonic()
    _silence(agg, 1, 31.0)  # lost again, and back by a ping
    agg.check_liveness(40.0)
    agg.touch(env(wire.PING, 1, 1, 0), 41.0)
    assert agg.rank_state[1] == "live" and agg.counters["ranks_returned"] == 2
    assert 1 not in agg.reducer.done


def test_finished_waits_for_rank0_and_for_late_joiners(tmp_path: Path) -> None:
    """finished() needs rank 0's bye; ranks that never came are waited for stop_grace_s."""
    a = Aggregator(make_cfg(tmp_path, world=3, stop_grace_s=5.0))
    hello(a, 0)
    hello(a, 1)
    bye(a, 1, now=1.0)
    assert not a.finished(100.0)  # rank 0 has not closed
    bye(a, 0, now=10.0)
    assert not a.finished(14.0)  # rank 2 may still join
    assert a.finished(15.0)
    a.finalize()


def test_parent_lost_closes_rank0_and_fails_the_run(agg: Aggregator) -> None:
    """Rank 0's process dying counts as rank 0 gone and is a failure reason."""
    hello(agg, 0)
    hello(agg, 1)
    bye(agg, 1)
    agg.parent_lost(5.0)
    assert agg.rank_state[0] == "lost" and agg.finished(5.0)
    rep = agg.finalize()
    assert rep["state"] == "failed"
    assert "rank 0's process died before closing the run" in rep["reasons"]
