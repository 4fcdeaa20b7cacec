"""The main-series write micro-benchmark times what it checks: every repeat's rows read back."""

from __future__ import annotations

from benchmarks.main_write import measure


def test_each_repeat_is_timed_and_its_rows_read_back() -> None:
    t = measure(3, 5)
    assert len(t) == 3 and all(x > 0 for x in t)
