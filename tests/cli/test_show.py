"""``coordinator show``, ``runs`` and ``sync`` on a run the aggregator finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.aggregator import HEADLINE, Aggregator, AggregatorConfig
from coordinator.cli.main import main
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
