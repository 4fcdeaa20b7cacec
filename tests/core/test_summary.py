"""The final report as a few lines: one for a clean run, anomalies first otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.core.summary import end_message, headline, summary_lines


def _report(**kw: Any) -> dict[str, Any]:
    rep: dict[str, Any] = {
        "state": "finished",
        "world_size": 4,
        "duration_s": 12.34,
        "points": 4000,
        "main_points": 1000,
        "reasons": [],
        "failed_ranks": {},
        "interrupted_ranks": {},
        "ranks_never_seen": [],
        "stragglers_seen": [],
        "per_rank": {str(r): {"points": 1000, "incarnations": 1, "undelivered": 0} for r in range(4)},
    }
    rep.update(kw)
    return rep


def test_a_clean_run_is_one_line() -> None:
    assert summary_lines(_report()) == [
        "finished in 12.3 s: 4 ranks, 4000 points (1000 in the main series); no anomalies"
    ]


def test_trouble_comes_before_what_the_run_recovered_from() -> None:
    per_rank = _report()["per_rank"]
    per_rank["2"] = {"points": 900, "incarnations": 2, "undelivered": 0, "dropped_points": 5}
    rep = _report(
        state="failed",
        duration_s=185.0,
        reasons=["rank 3 did not close (last state: lost)"],
        failed_ranks={"3": "silent for 30.0 s"},
        duplicate_batches=7,
        late_points=2,
        bad_frames=1,
        stragglers_seen=[1],
        per_rank=per_rank,
    )
    lines = summary_lines(rep)
    assert lines[0] == "FAILED in 3 min 05 s: 4 ranks, 4000 points (1000 in the main series)"
    assert lines[1] == "! rank 3 did not close (last state: lost)"  # the run's reason first, not repeated
    assert not any("rank 3 failed" in x for x in lines)
    trouble = [x for x in lines if x.startswith("! ")]
    notes = [x for x in lines if x.startswith("~ ")]
    assert lines == [lines[0], *trouble, *notes]
    assert "! rank 2: 5 points dropped under backpressure (drop_oldest)" in trouble
    assert "! 1 bad frames refused (undecodable or invalid messages)" in trouble
    assert any(x.startswith("! 2 late points") for x in trouble)
    assert notes == [
        "~ 7 resent batches recognised and stored once",
        "~ restarted: rank 2 (2 lives)",
        "~ stragglers seen: ranks 1",
    ]


def test_failed_checkpoints_are_trouble_though_the_run_finished() -> None:
    lines = summary_lines(_report(checkpoint_failures=3))
    assert lines[0].startswith("finished in 12.3 s") and "no anomalies" not in lines[0]
    assert lines[1:] == ["! 3 WAL checkpoints failed (nothing lost: the log grows until one succeeds)"]


def test_a_failed_rank_without_a_reason_line_is_named() -> None:
    lines = summary_lines(_report(state="failed", failed_ranks={"1": "ValueError: boom"}, ranks_never_seen=[2]))
    assert "! rank 1 failed: ValueError: boom" in lines
    assert "! ranks never seen: 2" in lines


def test_no_report_yet() -> None:
    assert summary_lines(None, "running") == [
        "running: no final report yet (the run is still open, or its aggregator died)"
    ]
    assert headline(_report(), "interrupted").startswith("INTERRUPTED in 12.3 s")


def test_end_message_says_where_the_run_is_and_how_to_see_it(tmp_path: Path) -> None:
    run_path = tmp_path / "store" / "runs" / "ddp-spirals-3f9a2c"
    here = end_message("ddp-spirals-3f9a2c", _report(), run_path, tmp_path / "store").splitlines()
    assert (
        here[0]
        == "run ddp-spirals-3f9a2c finished in 12.3 s: 4 ranks, 4000 points (1000 in the main series); no anomalies"
    )
    assert here[1] == f"  stored in {run_path}"
    assert "coordinator show ddp-spirals-3f9a2c" in here[2]
    assert len(here) == 3
    elsewhere = end_message("x-1", _report(), run_path, tmp_path / "other")
    assert f"coordinator --dir {tmp_path / 'store'} show x-1" in elsewhere


def test_what_a_tracker_holds_less_of_is_trouble_named_per_forwarder() -> None:
    """Cut and dropped texts, dropped points and missing files are anomalies; a clean forwarder adds nothing."""
    clean = {"forwarded_points": 10, "cut_texts": 0, "dropped_points": 0, "error": None}
    lossy = {"forwarded_points": 10, "cut_texts": 3, "dropped_texts": 1, "dropped_points": 2, "missing_files": 1}
    assert summary_lines(_report(forwarders={"mlflow": clean}))[0].endswith("no anomalies")
    lines = summary_lines(_report(forwarders={"mlflow": clean, "neptune": lossy}))
    assert lines[1:] == [
        "! forwarder neptune: 2 points it cannot store; 1 texts it cannot store; 3 texts it stored cut short; "
        "1 artifact files gone from the run directory"
    ]
