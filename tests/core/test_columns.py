"""Metric columns: byte layout, and the range and order checks of long and short columns."""

from __future__ import annotations

import random
from array import array
from itertools import pairwise

import pytest

from coordinator.core.columns import SHORT_COLUMN, VIEW_ITEMS, from_le, increasing, le_payload, step_range, to_le

LENGTHS = [1, 2, SHORT_COLUMN, SHORT_COLUMN + 1, 1000]


def test_a_column_round_trips_through_its_little_endian_bytes() -> None:
    steps = array("q", [0, 1, 2**63 - 1, -(2**63)])
    assert from_le("q", to_le(steps)) == steps
    assert to_le(array("q", [1])) == b"\x01" + b"\x00" * 7


@pytest.mark.parametrize("n", LENGTHS)
def test_step_range_is_the_smallest_and_largest_step_wherever_they_are(n: int) -> None:
    """Short columns take Python's min/max, long ones numpy: both give the same answer."""
    rng = random.Random(n)
    for _ in range(50):
        steps = array("q", [rng.randint(-(2**63), 2**63 - 1) for _ in range(n)])
        assert step_range(steps) == step_range(list(steps)) == (min(steps), max(steps))
        assert all(type(x) is int for x in step_range(steps))


@pytest.mark.parametrize("n", LENGTHS)
def test_increasing_is_strict_and_finds_one_step_out_of_order_anywhere(n: int) -> None:
    steps = array("q", range(10, 10 + 3 * n, 3))
    assert increasing(steps)
    for i in range(1, n):  # a repeat, then a step back, at every position
        for bad in (steps[i - 1], steps[i - 1] - 1):
            broken = array("q", steps)
            broken[i] = bad
            assert not increasing(broken), (n, i, bad)
            assert increasing(list(broken)) == all(a < b for a, b in pairwise(broken))


def test_le_payload_is_to_le_as_bytes_below_view_items_and_the_same_bytes_as_a_view_from_it() -> None:
    import sys

    for n in (0, 1, VIEW_ITEMS - 1, VIEW_ITEMS, 3 * VIEW_ITEMS):
        for a in (array("q", range(n)), array("d", (i / 3 for i in range(n)))):
            got = le_payload(a)
            assert bytes(got) == to_le(a) and len(got) == 8 * n
            assert isinstance(got, bytes) == (n < VIEW_ITEMS or sys.byteorder != "little")
