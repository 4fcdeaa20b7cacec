"""The ring-call comparison times each kind of call and checks the rings took and handed every row back."""

from __future__ import annotations

from pathlib import Path

from benchmarks.ring_calls import measure


def test_a_repeat_times_ring_rows_log_calls_and_reads(tmp_path: Path) -> None:
    for keys, frames in ((1, 1), (10, 1), (1, 7)):
        c = measure(keys, 1200, tmp_path / f"{keys}-{frames}", frames)  # three slices, the last one short
        assert c.ring_row > 0 and c.run_log > 0 and c.ring_read > 0 and c.run_log_rings > 0
    assert (tmp_path / "10-1" / "runs-10").is_dir() and not list(tmp_path.glob("*/ring-*"))
