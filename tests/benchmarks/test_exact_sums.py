"""The exact-sums micro-benchmark times real calls and fails on a sum that is not fsum's."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import exact_sums as bench
from coordinator.aggregator import blocks


def test_each_call_is_timed_and_checked() -> None:
    t = bench.measure((3, 5, 4), 4)
    assert len(t) == 4 and all(x > 0 for x in t)


def test_a_sum_that_is_not_fsums_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def naive(v: blocks.Matrix, mask: np.ndarray) -> blocks.Matrix:
        return np.asarray(v.sum(axis=-1), dtype=np.float64)

    monkeypatch.setattr(bench, "exact_sums", naive)
    with pytest.raises(AssertionError, match=r"differ from math\.fsum"):
        bench.measure((20, 20, 8), 1)
