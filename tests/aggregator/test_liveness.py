"""Liveness: silent ranks lost, heartbeats revive, rank 0 lost, when the run has ended."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.transport import wire
from tests.aggregator.helpers import batch, bye, env, hello, make_cfg


def test_liveness_marks_silent_ranks_lost_and_heartbeats_revive(agg: Aggregator) -> None:
    """A rank silent past liveness_timeout_s is lost (reducer stops waiting); a ping revives it."""
    hello(agg, 0, now=0.0)
    hello(agg, 1, now=0.0)
    batch(agg, 0, 1, now=0.0, metrics={"k": {0: 1.0}})
    batch(agg, 1, 1, now=0.0, metrics={"k": {0: 3.0}})
    batch(agg, 0, 2, now=20.0, metrics={"k": {1: 5.0}})
    agg.check_liveness(25.0)
    assert agg.rank_state == {0: "live", 1: "live"}
    agg.check_liveness(31.0)
    assert agg.rank_state == {0: "live", 1: "lost"}
    agg.emit(31.0)
    assert agg.last["k"] == (1, 5.0)
    agg.touch(env(wire.PING, 1, 1, 0), 32.0)
    assert agg.rank_state[1] == "live"
    agg.commit()
    assert ("rank_lost", 1) in [(e[1], e[2]) for e in agg.store.events()]


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
