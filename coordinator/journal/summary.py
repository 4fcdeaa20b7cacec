"""Per-chunk summaries: what a chunk holds, known without reading its points.

Every chunk row of schema 2 carries its count (``n``), its step range (``step_min``,
``step_max``), its first and last step, its first and last value, the smallest and largest value
(NaN ignored) and whether its steps strictly increase (``ordered``). Readers use them to page a
series in step order chunk by chunk, to count and summarise a series (``coordinator show``)
without reading its points, and to find a rank's last step.

A store of schema 1 has no summaries: the writer computes them once when it upgrades the store;
a read-only reader computes them for the chunks it needs, as it reads them, and writes nothing.
"""

from __future__ import annotations

import math
import operator
from array import array
from itertools import islice
from typing import Any

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "Summary", "first_zeros", "step_order", "summarize", "summarize_small"]

SUMMARY_COLUMNS = ("step_min", "step_max", "step_first", "step_last", "v_first", "v_last", "v_min", "v_max", "ordered")
"""The chunk columns schema 2 adds, in the order of :func:`summarize`'s tuple."""

Summary = tuple[
    int | None, int | None, int | None, int | None, float | None, float | None, float | None, float | None, int
]
"""``(step_min, step_max, step_first, step_last, v_first, v_last, v_min, v_max, ordered)``."""


def _num(v: float) -> float | None:
    """SQLite stores NaN as NULL; say so explicitly."""
    return None if math.isnan(v) else v


_NUMPY_FROM = 64
"""Chunks of this many points or more are summarised with numpy: Python's ``min``/``max`` build a
float object per point (about a fifth of a busy aggregator's CPU at 10 keys per call went there)."""


def step_order(steps: array[int]) -> tuple[bool, int, int]:
    """Whether non-empty ``steps`` strictly increase, and their smallest and largest step.

    One pass over them (in C from :data:`_NUMPY_FROM` steps), two more when they are out of order.
    """
    if len(steps) < _NUMPY_FROM:
        ordered = all(map(operator.lt, steps, islice(steps, 1, None)))
        return (ordered, steps[0], steps[-1]) if ordered else (ordered, min(steps), max(steps))
    s = np.frombuffer(steps, dtype=np.int64)
    ordered = bool((s[1:] > s[:-1]).all())
    return (ordered, steps[0], steps[-1]) if ordered else (ordered, int(s.min()), int(s.max()))


def summarize(steps: array[int], values: array[float]) -> Summary:
    """The summary of one chunk's columns (steps and values of equal length).

    Cost: one pass over the steps (is it strictly increasing?) and two over the values (min,
    max), in C (numpy from :data:`_NUMPY_FROM` points); a chunk whose steps are out of order
    pays two more passes for its step range. The result is :func:`summarize_small`'s exactly.
    """
    n = len(steps)
    if n < _NUMPY_FROM:
        return summarize_small(steps, values)
    ordered, lo, hi = step_order(steps)
    v = np.frombuffer(values, dtype=np.float64)
    # fmin/fmax skip NaN (NaN only when every value is), as summarize_small's NaN rule does.
    vmin, vmax = float(np.fmin.reduce(v)), float(np.fmax.reduce(v))
    if vmin == 0.0 or vmax == 0.0:  # 0.0 or -0.0: min()/max() keep the first zero (see first_zeros)
        zero = float(first_zeros(v))
        vmin, vmax = (zero if vmin == 0.0 else vmin), (zero if vmax == 0.0 else vmax)
    return (lo, hi, steps[0], steps[-1], _num(values[0]), _num(values[-1]), _num(vmin), _num(vmax), int(ordered))


def first_zeros(v: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each row's first zero (``0.0`` or ``-0.0``, sign kept); a row with none gives its first value.

    Where a row's smallest (or largest) value is zero, ``min()`` (``max()``) gives the first zero
    of the row: it keeps its candidate unless a later value is strictly smaller (larger), and
    ``-0.0 == 0.0``; NaN never replaces a candidate, and a leading NaN is skipped by
    :func:`summarize_small`'s rule. So the zero a summary keeps is the row's first, found with one
    vectorised pass instead of Python's ``min``/``max`` over every point (the rows of a 100-key
    held block of 30,000 steps, each starting at 0.0: 236 ms, now 4.7 ms, ``python -m
    benchmarks.block_summaries``). A metric that is 0.0 throughout (a counter of skipped steps)
    met that path in every chunk.
    """
    first = np.argmax(v == 0.0, axis=-1)
    return np.take_along_axis(v, first[..., None], axis=-1)[..., 0]


def summarize_small(steps: array[int], values: array[float]) -> Summary:
    """:func:`summarize` in plain Python: the definition, and the faster way for a few points."""
    n = len(steps)
    if n == 0:
        return (None, None, None, None, None, None, None, None, 1)
    ordered, lo, hi = step_order(steps)
    vmin, vmax = min(values), max(values)
    if math.isnan(vmin) or math.isnan(vmax):  # min/max skip NaN except a leading one
        real = [v for v in values if not math.isnan(v)]
        vmin, vmax = (min(real), max(real)) if real else (math.nan, math.nan)
    return (lo, hi, steps[0], steps[-1], _num(values[0]), _num(values[-1]), _num(vmin), _num(vmax), int(ordered))
