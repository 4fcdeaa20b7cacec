"""The suite's shared helpers: the paired slowdown and its interval."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import paired_change


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
