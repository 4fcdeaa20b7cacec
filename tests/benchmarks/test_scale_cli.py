"""The scale benchmark from the command line: a trial of simulated senders is run, verified and summarised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale_cli import cli_main

_ROOT = Path(__file__).resolve().parents[2]


def test_a_trial_of_single_key_batches_is_verified_point_by_point(tmp_path: Path) -> None:
    """4 simulated ranks, one key, 500 steps a batch, 8 in flight: every point acked and stored once."""
    out = tmp_path / "r.json"
    args = ["--senders", "4", "--keys", "1", "--batch-points", "500", "--window", "8", "--batches", "6"]
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", *args, "--json", str(out)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert (res["keys"], res["steps_per_batch"], res["window"]) == (1, 500, 8)
    assert res["acked_points"] == res["stored_points"] == 4 * 6 * 500
    assert "verified: 12,000 points in the store, run finished: ok" in p.stdout


@pytest.mark.parametrize(
    "bad",
    [["--keys", "0"], ["--window", "0"], ["--keys", "3", "--batch-points", "1000"], ["--batch-points", "5"]],
    ids=["no-keys", "no-window", "not-a-multiple", "fewer-points-than-keys"],
)
def test_a_batch_shape_that_cannot_be_built_is_refused(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli_main(["--senders", "4", *bad])
    assert ei.value.code == 2
    assert "--batch-points a multiple of --keys" in capsys.readouterr().err
