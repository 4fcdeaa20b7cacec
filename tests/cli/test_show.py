"""``coordinator show``, ``runs`` and ``sync`` on a run the aggregator finished."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.cli.main import main
from coordinator.cli.render import BLOCKS
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


def test_show_prints_the_report_as_a_few_lines_anomalies_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The headline, then each problem; the whole report stays in --json."""
    _finished_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN]) == 0
    text = capsys.readouterr().out
    report = text[text.index("\nreport\n") + 8 : text.index("\nfields\n")].strip("\n").splitlines()
    assert report[0].startswith("  FAILED in ") and report[0].endswith(": 2 ranks, 2 points (1 in the main series)")
    assert report[1:] == ["  ! rank 0 closed with 3 points undelivered", "  ! rank 1 did not close (last state: live)"]
    assert text.index("\nreport\n") < text.index("\nseries")
    assert main(["--dir", str(tmp_path), "show", RUN, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["report"]["per_rank"]["0"]["undelivered"] == 3
    assert data["summary"] == [line.strip() for line in report if line]


def _spiral_run(root: Path, run_id: str = RUN) -> None:
    """Two ranks log a falling loss over 100 steps in 10 batches; rank 1 restarts and logs step 100."""
    cfg = AggregatorConfig(run_id=run_id, store_path=str(run_dir(root, run_id) / "run.db"), world_size=2)
    a = Aggregator(cfg)
    incs = {0: [881234567890123], 1: [991234567890123, 12345678901234]}
    for rank in (0, 1):
        a.hello(env(wire.HELLO, rank, incs[rank][0], 0, run=run_id), {"pid": 40 + rank}, 1.0)
    for b in range(10):
        for rank in (0, 1):
            pts = {s: 1.0 / (1 + s) + rank for s in range(b * 10, b * 10 + 10)}
            inc = incs[rank][0]
            a.batch(env(wire.BATCH, rank, inc, b + 1, run=run_id), payload(metrics={"train/loss": pts}), 2.0 + b)
    a.hello(env(wire.HELLO, 1, incs[1][1], 0, run=run_id), {"pid": 77}, 20.0)
    a.batch(env(wire.BATCH, 1, incs[1][1], 1, run=run_id), payload(metrics={"train/loss": {100: 0.5}}), 21.0)
    for rank in (0, 1):
        inc = incs[rank][-1]
        a.bye(env(wire.BYE, rank, inc, 0, run=run_id), {"ending": "clean", "accepted": 100}, 30.0)
    a.finalize()


def test_show_draws_a_sparkline_and_the_ranks_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiral_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN[:6]]) == 0  # a unique prefix
    text = capsys.readouterr().out
    [line] = [ln for ln in text.splitlines() if ln.startswith("  train/loss")]
    cells = line.split()
    trend = cells[2]
    assert len(trend) == 24 and set(trend) <= set(BLOCKS)
    assert trend[0] == BLOCKS[-1] and trend[-1] == BLOCKS[0]  # it falls
    assert cells[3:5] == ["100", "0.5"]  # the main series' last step and value (rank 0 had closed)
    assert cells[-1] == "0.01–0.5"  # rank 0's last value 1/100, rank 1's 0.5
    assert main(["--dir", str(tmp_path), "show", RUN, "--json"]) == 0
    [s] = json.loads(capsys.readouterr().out)["series"]
    assert s["rank_last"] == {"0": [99, 0.01], "1": [100, 0.5]}
    assert s["spread"] == [0.01, 0.5]
    assert len(s["sparkline"]) == 24 and s["sparkline"][0] > s["sparkline"][-1]


def test_show_events_are_readable_and_json_keeps_the_raw_detail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _spiral_run(tmp_path)
    assert main(["--dir", str(tmp_path), "show", RUN]) == 0
    text = capsys.readouterr().out
    events = text[text.index("\nevents\n") :]
    assert "r1#1 joined (pid 41)" in events
    assert "restarted: r1#1 -> r1#2" in events
    assert "r1#2 closed clean: 1 points; accepted 100" in events
    assert "{" not in events and "991234567890123" not in events
    assert main(["--dir", str(tmp_path), "show", RUN, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    raw = [e for e in data["events"] if e["kind"] == "rank_restarted"]
    assert raw[0]["detail"] == "incarnation 991234567890123 -> 12345678901234"
    assert data["incarnations"]["12345678901234"] == "r1#2"


def test_show_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """``coordinator show RUN | head -3`` in a real shell pipeline: three lines, no traceback."""
    cfg = AggregatorConfig(run_id=RUN, store_path=str(run_dir(tmp_path, RUN) / "run.db"), world_size=1)
    a = Aggregator(cfg)
    a.hello(env(wire.HELLO, 0, 1, 0, run=RUN), {}, 1.0)
    keys = {f"layer{i:04d}/grad_norm": {0: 1.0, 1: 2.0} for i in range(2000)}  # far more than a pipe holds
    a.batch(env(wire.BATCH, 0, 1, 1, run=RUN), payload(metrics=keys), 1.0)
    a.bye(env(wire.BYE, 0, 1, 0, run=RUN), {}, 2.0)
    a.finalize()
    cmd = f"{shlex.quote(sys.executable)} -m coordinator.cli --dir {shlex.quote(str(tmp_path))} show {RUN} | head -3"
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )
    assert res.stderr == "", res.stderr
    assert res.returncode == 0
    assert len(res.stdout.splitlines()) == 3 and res.stdout.startswith(f"run {RUN}")


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
    assert "rank_failed      failed (see failures above)" in text


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
