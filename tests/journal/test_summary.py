"""Chunk summaries: the numpy path for long chunks gives exactly what the plain-Python definition gives."""

from __future__ import annotations

import math
import random
from array import array

import pytest

from coordinator.journal.summary import summarize, summarize_small

NAN = math.nan


def _same(a: object, b: object) -> bool:
    """Equal, of the same type, and -0.0 told from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b and type(a) is type(b)


def _value(rng: random.Random, specials: float) -> float:
    if rng.random() < specials:
        return rng.choice([NAN, 0.0, -0.0, math.inf, -math.inf, 1e308, -1e-308])
    return rng.uniform(-1e6, 1e6)


@pytest.mark.parametrize("seed", range(40))
def test_long_chunks_summarize_as_the_definition_does(seed: int) -> None:
    rng = random.Random(seed)
    for n in (63, 64, 65, 200, 1000):
        specials = rng.choice([0.0, 0.01, 0.3, 1.0])
        values = array("d", [_value(rng, specials) for _ in range(n)])
        if rng.random() < 0.5:
            steps = array("q", range(seed, seed + n))
        else:  # out of order, repeated, negative steps
            steps = array("q", [rng.randint(-50, 50) for _ in range(n)])
        got, want = summarize(steps, values), summarize_small(steps, values)
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (n, got, want)


def test_edge_chunks_summarize_as_the_definition_does() -> None:
    n = 100
    cases = [
        [NAN] * n,  # every value NaN: NaN min and max (stored as NULL)
        [NAN] + [2.0] * (n - 1),  # a leading NaN is skipped
        [0.0, -0.0] * (n // 2),  # which zero is the min and the max: the first, as min()/max() keep
        [-0.0, 0.0] * (n // 2),
        [1.0] * (n - 1) + [-0.0],
        [math.inf] * n,
    ]
    for vals in cases:
        steps = array("q", range(n))
        got, want = summarize(steps, array("d", vals)), summarize_small(steps, array("d", vals))
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (vals[:3], got, want)
    assert summarize(array("q"), array("d")) == (None, None, None, None, None, None, None, None, 1)
