"""The run's end: final state, reasons and the report, also across an aggregator restart."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from tests.aggregator.helpers import batch, bye, crash, hello, make_cfg, reopen


def test_finalize_reports_finished_when_every_rank_said_bye(agg: Aggregator, tmp_path: Path) -> None:
    """All ranks closed: state 'finished', counts per rank, report and sys/state stored."""
    hello(agg, 0)
    hello(agg, 1)
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})
    batch(agg, 0, 2, metrics={"loss": {2: 3.0}})
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})  # duplicate
    batch(agg, 1, 1, metrics={"loss": {0: 3.0, 1: 4.0, 2: 5.0}, "acc": {0: 0.5}})
    bye(agg, 0, now=2.0)
    assert not agg.finished(2.0)
    bye(agg, 1, now=2.0)
    assert agg.finished(2.0)
    rep = agg.finalize()
    assert rep["state"] == "finished" and rep["reasons"] == []
    assert (rep["points"], rep["batches"], rep["duplicate_batches"]) == (7, 3, 1)
    assert rep["main_points"] == 4
    assert rep["ranks_seen"] == [0, 1] and rep["ranks_never_seen"] == [] and rep["world_size"] == 2
    assert rep["per_rank"] == {
        "0": {"points": 3, "batches": 2, "undelivered": 0, "incarnations": 1, "state": "closed"},
        "1": {"points": 4, "batches": 1, "undelivered": 0, "incarnations": 1, "state": "closed"},
    }
    s = reopen(tmp_path)
    try:
        info = s.run_info()
        assert info.state == "finished" and info.ended is not None
        assert info.report == rep
        assert s.fields()["sys/state"] == ("str", "finished")
        assert s.values("loss") == [(0, 2.0), (1, 3.0), (2, 4.0)]
        assert s.values("acc") == [(0, 0.5)]
        assert [e[1] for e in s.events()].count("rank_closed") == 2
    finally:
        s.close()


def test_finalize_reports_failed_with_reasons(tmp_path: Path) -> None:
    """Ranks never seen, not closed, or closed with undelivered points make the run 'failed'."""
    a = Aggregator(make_cfg(tmp_path, world=4))
    hello(a, 0)
    hello(a, 1)
    hello(a, 2)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    bye(a, 0, undelivered=7)
    bye(a, 2)
    rep = a.finalize("stopped by a signal")
    assert rep["state"] == "failed"  # failures win over the interruption
    assert rep["reasons"] == [
        "rank 0 closed with 7 points undelivered",
        "stopped by a signal",
        "rank 3 never connected",
    ]
    assert rep["failed_ranks"] == {"0": "closed with 7 points undelivered", "3": "never connected"}
    assert rep["interrupted_ranks"] == {"1": "still running when the aggregator was stopped by a signal"}
    assert rep["ranks_never_seen"] == [3]
    assert rep["per_rank"]["0"]["undelivered"] == 7
    assert rep["per_rank"]["1"]["state"] == "live"
    s = reopen(tmp_path)
    try:
        assert s.run_info().state == "failed" and s.run_info().report == rep
        assert s.fields()["sys/state"] == ("str", "failed")
    finally:
        s.close()


def test_restart_keeps_ranks_that_already_closed(tmp_path: Path) -> None:
    """A rank that said BYE before a restart is not reported as never connected afterwards."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 1)
    batch(a, 1, 1, metrics={"k": {0: 1.0}})
    bye(a, 1)
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    hello(b, 0)
    batch(b, 0, 1, metrics={"k": {0: 3.0}})
    bye(b, 0)
    assert b.finished(2.0)
    rep = b.finalize()
    assert rep["state"] == "finished", rep["reasons"]
    assert rep["ranks_never_seen"] == []
    assert rep["per_rank"]["1"]["state"] == "closed"


def test_restart_report_counts_the_whole_run(tmp_path: Path) -> None:
    """The final report of a restarted aggregator counts points and batches from before the restart."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path, world=1))
    hello(b, 0)
    batch(b, 0, 2, metrics={"k": {2: 1.0}})
    bye(b, 0)
    rep = b.finalize()
    assert rep["per_rank"]["0"]["points"] == 3 and rep["per_rank"]["0"]["batches"] == 2
    assert (rep["points"], rep["batches"]) == (3, 2)


def test_stopped_before_any_rank_connected_is_interrupted_not_failed(tmp_path: Path) -> None:
    """Ctrl-C during init_run stops the aggregator before anyone connected: nothing failed."""
    a = Aggregator(make_cfg(tmp_path, world=2))
    rep = a.finalize("stopped by a signal")
    assert rep["state"] == "interrupted"
    assert sorted(rep["interrupted_ranks"]) == ["0", "1"] and rep["failed_ranks"] == {}
