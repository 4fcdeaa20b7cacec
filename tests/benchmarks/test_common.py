"""The suite's shared helpers: the paired slowdown, a median's interval, and a target judged on it."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import INCONCLUSIVE, interval_text, mark, median_interval, paired_change, within


def test_a_constant_ratio_is_the_slowdown_whatever_the_drift_between_repeats() -> None:
    base = [20.0, 26.0, 23.0, 31.0, 22.0]  # the machine drifts by 50% between repeats
    point, lo, hi = paired_change([b * 1.03 for b in base], base)
    assert point == pytest.approx(0.03) and lo == pytest.approx(0.03) and hi == pytest.approx(0.03)


def test_the_interval_holds_the_median_and_narrows_with_more_repeats() -> None:
    noise = [0.01, -0.02, 0.04, 0.0, 0.03, -0.01, 0.02, 0.05, -0.03, 0.01]
    base = [20.0 + i for i in range(10)]
    few = paired_change([b * (1.02 + e) for b, e in zip(base[:5], noise[:5], strict=True)], base[:5])
    many = paired_change([b * (1.02 + e) for b, e in zip(base * 4, noise * 4, strict=True)], base * 4)
    for point, lo, hi in (few, many):
        assert lo <= point <= hi
    assert many[2] - many[1] < few[2] - few[1]
    xs, base = [1.0, 2.0, 3.0, 4.1, 5.0], [1.0, 1.9, 3.1, 4.0, 5.2]
    assert paired_change(xs, base) == paired_change(xs, base)  # a fixed seed


def test_too_few_repeats_give_the_median_and_no_interval() -> None:
    point, lo, hi = paired_change([1.1, 1.3], [1.0, 1.0])
    assert point == pytest.approx(0.2) and math.isnan(lo) and math.isnan(hi)


def test_unpaired_or_empty_input_is_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_change([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        paired_change([], [])
    with pytest.raises(ValueError, match="positive"):
        paired_change([1.0], [0.0])


def test_the_median_interval_of_repeats_holds_the_median_and_needs_five() -> None:
    point, lo, hi = median_interval([0.3, -0.4, 1.6, -0.1, 0.26])
    assert point == pytest.approx(0.26)
    assert (lo, hi) == (-0.4, 1.6)  # a median of 5 resampled lands on an extreme 6% of the time each way
    point, lo, hi = median_interval([2.0, 3.0])
    assert point == 2.5 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="at least one"):
        median_interval([])


def test_a_target_is_met_missed_or_inconclusive_by_its_interval() -> None:
    assert within(0.5, 0.2, 0.9, 1.0) is True
    assert within(1.5, 1.2, 1.9, 1.0) is False
    assert within(0.5, -0.4, 1.6, 1.0) == INCONCLUSIVE  # the repeats cannot tell
    assert within(1.0, 0.8, 1.0, 1.0) is True and within(1.0, 0.8, 1.0, 1.0, strict=True) == INCONCLUSIVE
    nan = float("nan")
    assert within(0.5, nan, nan, 1.0) is True and within(1.5, nan, nan, 1.0) is False  # no interval: the point
    assert mark(INCONCLUSIVE).startswith("inconclusive") and mark(True) == "met" and mark(False) == "**missed**"
    assert mark(None) == "n/a"


def test_an_interval_is_written_with_its_point_or_says_why_there_is_none() -> None:
    assert interval_text(0.048, -0.012, 0.095, "{:+.1%}") == "+4.8% [-1.2%, +9.5%]"
    assert interval_text(0.26, float("nan"), float("nan"), "{:.2f} µs") == "0.26 µs [no interval below 5 repeats]"
