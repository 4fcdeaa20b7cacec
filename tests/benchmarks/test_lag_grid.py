"""The lag-grid simulation reads a lag near the true one and flags a rank far behind."""

from __future__ import annotations

from benchmarks.lag_grid import simulate


def test_a_rank_on_time_reads_no_lag_and_one_far_behind_is_flagged_at_its_lag() -> None:
    assert simulate(0.0, 50.0, 0.05) == (0.0, 0.0)
    lag, share = simulate(0.2, 50.0, 0.05)
    assert abs(lag - 0.2) < 0.005 and share == 1.0
