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

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "Summary", "summarize", "summarize_small"]

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


def summarize(steps: array[int], values: array[float]) -> Summary:
    """The summary of one chunk's columns (steps and values of equal length).

    Cost: one pass over the steps (is it strictly increasing?) and two over the values (min,
    max), in C (numpy from :data:`_NUMPY_FROM` points); a chunk whose steps are out of order
    pays two more passes for its step range. The result is :func:`summarize_small`'s exactly.
    """
    n = len(steps)
    if n < _NUMPY_FROM:
        return summarize_small(steps, values)
    s = np.frombuffer(steps, dtype=np.int64)
    v = np.frombuffer(values, dtype=np.float64)
    ordered = bool((s[1:] > s[:-1]).all())
    lo, hi = (steps[0], steps[-1]) if ordered else (int(s.min()), int(s.max()))
    # fmin/fmax skip NaN (NaN only when every value is), as summarize_small's NaN rule does.
    vmin, vmax = float(np.fmin.reduce(v)), float(np.fmax.reduce(v))
    if vmin == 0.0 or vmax == 0.0:  # which zero min()/max() keep depends on the order: theirs, exactly
        return summarize_small(steps, values)
    return (lo, hi, steps[0], steps[-1], _num(values[0]), _num(values[-1]), _num(vmin), _num(vmax), int(ordered))


def summarize_small(steps: array[int], values: array[float]) -> Summary:
    """:func:`summarize` in plain Python: the definition, and the faster way for a few points."""
    n = len(steps)
    if n == 0:
        return (None, None, None, None, None, None, None, None, 1)
    ordered = all(map(operator.lt, steps, islice(steps, 1, None)))
    lo, hi = (steps[0], steps[-1]) if ordered else (min(steps), max(steps))
    vmin, vmax = min(values), max(values)
    if math.isnan(vmin) or math.isnan(vmax):  # min/max skip NaN except a leading one
        real = [v for v in values if not math.isnan(v)]
        vmin, vmax = (min(real), max(real)) if real else (math.nan, math.nan)
    return (lo, hi, steps[0], steps[-1], _num(values[0]), _num(values[-1]), _num(vmin), _num(vmax), int(ordered))
