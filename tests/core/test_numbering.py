"""The automatic step rule, shared by the sender and the recovery of copies: -1 becomes the step before it + 1."""

from __future__ import annotations

import random
from array import array

import pytest

from coordinator.core.numbering import explicit, number_steps


def sequential(steps: list[int], last: int) -> list[int]:
    """The rule, point by point, as a user reads it (also for ``tests/client/test_steps.py``)."""
    out = []
    for s in steps:
        last = last + 1 if s < 0 else s
        out.append(last)
    return out


@pytest.mark.parametrize("n", [1, 5, 255, 256, 5000])
def test_short_and_long_columns_are_numbered_by_the_same_rule(n: int) -> None:
    """Below 256 points a Python loop, from 256 numpy: each -1 is the step before it + 1, explicit steps move it."""
    rng = random.Random(n)
    steps = [rng.choice([-1, -1, -1, rng.randrange(10_000)]) for _ in range(n)]
    col = array("q", steps)
    last, numbered = number_steps(col, 41)
    assert list(col) == sequential(steps, 41)
    assert last == col[-1] and numbered == (-1 in steps)


def test_a_column_of_explicit_steps_is_left_alone_and_an_empty_one_keeps_the_last_step() -> None:
    col = array("q", [3, 1, 2])
    assert number_steps(col, 10) == (2, False) and list(col) == [3, 1, 2]
    assert number_steps(array("q"), 7) == (7, False)
    long = array("q", range(300))
    assert number_steps(long, -1) == (299, False) and list(long) == list(range(300))


@pytest.mark.parametrize("n", [1, 5, 255, 256, 5000])
def test_explicit_says_whether_any_step_is_left_to_number_in_short_and_long_columns(n: int) -> None:
    """Below 256 points ``min()``, from 256 numpy: the same answer, wherever the one -1 sits."""
    for at in {0, n // 2, n - 1}:
        steps = array("q", range(n))
        assert explicit(steps) and explicit(memoryview(steps)[at:])
        steps[at] = -1
        assert not explicit(steps) and explicit(memoryview(steps)[at + 1 :])
    assert explicit(array("q"))
