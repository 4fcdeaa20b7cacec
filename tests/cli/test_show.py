"""``coordinator show``, ``runs`` and ``sync`` on a run the aggregator finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.aggregator import HEADLINE, Aggregator, AggregatorConfig
from coordinator.cli.main import main
from coordinator.cli.show import failures
from coordinator.journal.store import run_dir
from coordinator.transport import wire
from tests.aggregator.helpers import env, payload

RUN = "show-run"


def _finished_run(root: Path) -> None:
    cfg = AggregatorConfig(run_id=RUN, store_path=str(run_dir(root, RUN) / "run.db"), world_size=2)
    a = Aggregator(cfg)
    for rank in (0, 1):
        a.hello(env(wire.HELLO, rank, 1, 0, run=RUN), {}, 1.0)
        a.batch(env(wire.BATCH, rank, 1, 1, run=RUN), payload(metrics={"loss": {0: float(rank)}}), 1.0)
    a.bye(env(wire.BYE, 0, 1, 0, run=RUN), {"undelivered": 3}, 2.0)
    a.finalize()


def test_show_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The headline numbers, each rank's line (undelivered points named) and the failure reasons."""
    _finished_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN]) == 0
    text = capsys.readouterr().out
    report = text[text.index("\nreport\n") :]
    for k in HEADLINE:
        assert f"\n  {k:<18} " in report
    assert "  points             2\n" in report
    assert "rank 0             1 points in 1 batches, state closed, 3 undelivered" in report
    assert "  ! rank 0 closed with 3 points undelivered" in report
    assert "  ! rank 1 did not close (last state: live)" in report


def test_runs_lists_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``runs`` shows the run's state and points."""
    _finished_run(tmp_path)
    assert main(["--dir", str(tmp_path), "runs"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith(RUN) and " failed " in line and " 2 " in line


def test_sync_without_anything_to_upload_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sync`` of an unknown run exits 2 with the reason on stderr."""
    assert main(["--dir", str(tmp_path), "sync", "nope"]) == 2
    assert "nothing to upload" in capsys.readouterr().err


_TB = (
    'Traceback (most recent call last):\n  File "train.py", line 7, in step\n'
    '    raise ValueError("diverged at step 7")\nValueError: diverged at step 7\n'
)


def _failed_run(root: Path) -> None:
    """Rank 1 says it failed (with its traceback), rank 2 Run.fail("text"), rank 0 closes cleanly."""
    cfg = AggregatorConfig(run_id=RUN, store_path=str(run_dir(root, RUN) / "run.db"), world_size=3)
    a = Aggregator(cfg)
    for rank in (0, 1, 2):
        a.hello(env(wire.HELLO, rank, 1, 0, run=RUN), {}, 1.0)
    a.bye(env(wire.BYE, 2, 1, 0, run=RUN), {"ending": "failed", "reason": "loader gave up"}, 2.0)
    bye = {"ending": "failed", "reason": "ValueError: diverged at step 7", "traceback": _TB}
    a.bye(env(wire.BYE, 1, 1, 0, run=RUN), bye, 2.0)
    a.bye(env(wire.BYE, 0, 1, 0, run=RUN), {"ending": "clean"}, 3.0)
    a.finalize()


def test_show_json_lists_each_failed_rank_with_its_reason_and_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _failed_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "failed"
    assert data["failures"] == [
        {
            "rank": 1,
            "reason": "ValueError: diverged at step 7",
            "type": "ValueError",
            "message": "diverged at step 7",
            "traceback": _TB,
        },
        {"rank": 2, "reason": "loader gave up", "type": None, "message": "loader gave up", "traceback": None},
    ]
    assert [e["rank"] for e in data["events"] if e["kind"] == "rank_failed"] == [2, 1]


def test_show_prints_the_failures_first_with_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _failed_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN]) == 0
    text = capsys.readouterr().out
    assert text.index("\nfailures\n") < text.index("\nfields\n")
    block = text[text.index("\nfailures\n") : text.index("\nfields\n")]
    assert "  rank 1: ValueError: diverged at step 7\n" in block
    assert '        raise ValueError("diverged at step 7")\n' in block
    assert "  rank 2: loader gave up\n" in block
    assert "rank_failed    rank 1   (see failures above)" in text


def test_a_rank_that_never_closed_is_a_failure_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _finished_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["failures"] == [
        {"rank": 0, "reason": "closed with 3 points undelivered", "type": None, "message": None, "traceback": None},
        {"rank": 1, "reason": "did not close (last state: live)", "type": None, "message": None, "traceback": None},
    ]


def test_failure_details_from_events_alone_when_the_run_has_no_report() -> None:
    tb_event = {
        "ts": 1.0,
        "kind": "rank_failed",
        "rank": 3,
        "detail": json.dumps({"type": "KeyError", "message": "'x'", "reason": "KeyError: 'x'", "traceback": "tb"}),
    }
    bad = {"ts": 1.0, "kind": "rank_failed", "rank": 4, "detail": "not json"}
    assert failures(None, [tb_event, bad, {"ts": 1.0, "kind": "rank_joined", "rank": 5, "detail": ""}]) == [
        {"rank": 3, "reason": "KeyError: 'x'", "type": "KeyError", "message": "'x'", "traceback": "tb"},
        {"rank": 4, "reason": "not json", "type": None, "message": "not json", "traceback": None},
    ]


def test_a_failed_life_of_a_rank_that_restarted_is_no_failure_of_the_finished_run() -> None:
    old_life = {
        "ts": 1.0,
        "kind": "rank_failed",
        "rank": 1,
        "detail": json.dumps({"type": "OSError", "traceback": "tb"}),
    }
    assert failures({"failed_ranks": {}}, [old_life]) == []
