"""The cut micro-benchmark times cuts whose every point it checks."""

from __future__ import annotations

import pytest

from benchmarks.cut import _check, build, measure
from coordinator.transport.batches import Cutter


def test_each_repeat_is_timed_and_its_longest_slice_is_within_it() -> None:
    totals, longest = measure("paced", 4, hold=2)
    assert len(totals) == len(longest) == 4
    assert all(0 < s <= t for s, t in zip(longest, totals, strict=True))


def test_the_check_fails_on_a_changed_point() -> None:
    batches = Cutter(lambda k, s: None, 1000).cut(build(3, 4))
    _check(batches, 3, 4)
    with pytest.raises(AssertionError, match="lost or changed"):
        _check(batches, 3, 5)
