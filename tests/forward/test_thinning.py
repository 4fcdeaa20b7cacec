"""Downsampling: a token bucket per series, chunk points evenly spaced with the last one kept."""

from __future__ import annotations

from coordinator.forward.thinning import thin


def test_a_full_bucket_lets_a_burst_of_rate_points_through() -> None:
    kept, bucket = thin(list(range(3)), 10.0, 5.0, None)
    assert kept == [0, 1, 2] and bucket == [2.0, 10.0]


def test_a_chunk_over_the_budget_keeps_evenly_spaced_points_ending_with_the_last() -> None:
    kept, bucket = thin(list(range(10)), 0.0, 3.0, None)
    assert kept == [3, 6, 9]
    assert bucket == [0.0, 0.0]


def test_the_bucket_refills_with_journal_time_up_to_the_rate() -> None:
    kept, bucket = thin(list(range(10)), 0.5, 4.0, [0.0, 0.0])
    assert len(kept) == 2 and kept[-1] == 9
    kept, bucket = thin(list(range(10)), 100.0, 4.0, bucket)
    assert len(kept) == 4 and bucket == [0.0, 100.0]


def test_an_empty_bucket_keeps_nothing_and_time_never_runs_backwards() -> None:
    kept, bucket = thin([1, 2], 5.0, 2.0, [0.0, 9.0])
    assert kept == [] and bucket == [0.0, 9.0]
