"""The ring-call comparison times each kind of call and checks the rings took and handed every row back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.ring_calls import measure


def test_a_repeat_times_ring_rows_log_calls_and_reads(tmp_path: Path) -> None:
    for keys, frames in ((1, 1), (10, 1), (1, 7)):
        c = measure(keys, 1200, tmp_path / f"{keys}-{frames}", frames)  # three slices, the last one short
        assert c.ring_row > 0 and c.run_log > 0 and c.ring_read > 0 and c.run_log_rings > 0
    assert (tmp_path / "10-1" / "runs-10").is_dir() and not list(tmp_path.glob("*/ring-*"))


def test_frames_that_share_a_key_are_handed_back_whole(tmp_path: Path) -> None:
    """``--shared``: seven dicts with a key in common, in turn; ``measure`` raises unless the reader handed back
    every point of them (in as many passes as it takes) and the run's ring took every one."""
    c = measure(3, 1400, tmp_path, frames=7, shared=True)
    assert c.ring_read > 0 and c.run_log_rings > 0


def test_the_rings_side_takes_rings_where_the_environment_turns_them_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``COORDINATOR_RINGS=0`` (CI's socket step) must not make the rings side the socket's: ``measure`` checks
    that the ring took every point, and raises otherwise. The environment is as it was afterwards."""
    monkeypatch.setenv("COORDINATOR_RINGS", "0")
    c = measure(10, 600, tmp_path)
    assert c.run_log_rings > 0 and c.run_log > 0
    assert os.environ["COORDINATOR_RINGS"] == "0"
    monkeypatch.delenv("COORDINATOR_RINGS")
    measure(1, 100, tmp_path / "unset")
    assert "COORDINATOR_RINGS" not in os.environ
