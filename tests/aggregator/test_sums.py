"""The reducer's sum: ``math.fsum`` where it answers, IEEE results where it raises."""

from __future__ import annotations

import math
import random

from coordinator.aggregator.sums import total


def test_total_is_fsum_where_fsum_answers() -> None:
    rng = random.Random(7)
    for _ in range(500):
        vals = [rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-20, 20) for _ in range(rng.randint(1, 9))]
        assert total(vals) == math.fsum(vals)
    assert math.isnan(total([math.nan, 1.0]))
    assert total([math.inf, 1.0]) == math.inf


def test_total_past_the_float_range_is_inf_not_an_exception() -> None:
    assert total([1e308, 1e308]) == math.inf
    assert total([-1e308, -1e308, -1e308, -1e308]) == -math.inf


def test_total_whose_partial_sums_overflow_but_not_the_sum_is_exact() -> None:
    # fsum raises here although the exact sum (1e308) is a double
    assert total([1e308, 1e308, -1e308]) == 1e308
    assert total([1.5e308, 1.5e308, -1.5e308, -1e308, 3.0]) == math.fsum([0.5e308, 3.0])


def test_inf_minus_inf_is_nan() -> None:
    assert math.isnan(total([math.inf, -math.inf]))
    assert math.isnan(total([math.inf, 2.0, -math.inf]))
