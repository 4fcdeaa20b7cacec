"""A series' shape in a few buckets (what ``coordinator show`` draws as a sparkline), with bounded work.

A short series (at most ``exact_below`` points) is read in pages and each bucket is the mean of
its points. A longer one is never read: each chunk's summary stands for its points as a line
from its first to its last value over its step range, and each bucket is the point-weighted mean
of the chunks (or parts of chunks) in it. So a 20-million-point series costs one pass over its
chunk rows' summaries (a few numbers each), not its points. The long path ignores the
replacement rule (a rank's replaced points count in their bucket): for the main series (one
incarnation) it is right up to the chunk granularity; a schema 1 store opened read-only (no
summaries) gets no long sketch.
"""

from __future__ import annotations

import math

from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK

__all__ = ["EXACT_BELOW", "series_sketch"]

EXACT_BELOW = 20_000
"""Series of at most this many points are sketched from their points, longer ones from summaries."""


def series_sketch(
    reader: JournalReader,
    key: str,
    rank: int = MAIN_RANK,
    *,
    points: int,
    buckets: int = 24,
    exact_below: int = EXACT_BELOW,
) -> list[float | None]:
    """The series' mean value in ``buckets`` equal step ranges, first step to last (``None``: no value there).

    Args:
        reader: the run's journal.
        key: the metric key.
        rank: a rank, or -1 (the main series).
        points: the series' point count (``series_stats``): it picks the exact or the summary path.
        buckets: how many values to return (fewer for a series of fewer steps).
        exact_below: the largest series read point by point.

    Returns:
        At most ``buckets`` values; empty when the series has no point (or is long in a schema 1 store).
    """
    if points <= 0 or buckets <= 0:
        return []
    src = reader._source(key, rank)  # the journal package's own reader: same owner
    if src is None:
        return []
    if points <= exact_below:
        steps: list[int] = []
        values: list[float] = []
        after: int | None = -(2**63)
        while after is not None:
            page = src.page(after, exact_below)
            steps.extend(page.steps)
            values.extend(page.values)
            after = page.next
        return _bucket(steps, values, buckets)
    if not reader.summarized:
        return []
    key_id = reader._db.execute("SELECT id FROM keys WHERE key=?", (key,)).fetchone()[0]
    lo, hi = reader._db.execute(
        "SELECT MIN(step_min), MAX(step_max) FROM chunks WHERE key_id=? AND rank=?", (key_id, rank)
    ).fetchone()
    if lo is None:
        return []
    width = min(buckets, hi - lo + 1)
    size = (hi - lo + 1) / width
    sums = [0.0] * width
    weights = [0.0] * width
    cur = reader._db.execute(
        "SELECT step_min, step_max, n, v_first, v_last FROM chunks WHERE key_id=? AND rank=? AND v_last IS NOT NULL",
        (key_id, rank),
    )
    try:
        while rows := cur.fetchmany(1024):
            for c_lo, c_hi, n, v_first, v_last in rows:
                _spread(c_lo, c_hi, n, v_first if v_first is not None else v_last, v_last, lo, size, sums, weights)
    finally:
        cur.close()  # ends the read so the writer can checkpoint
    return [sums[i] / weights[i] if weights[i] else None for i in range(width)]


def _spread(
    c_lo: int, c_hi: int, n: int, v0: float, v1: float, lo: int, size: float, sums: list[float], weights: list[float]
) -> None:
    """Add one chunk to the buckets its steps cover: its value drawn as a line from its first to its
    last value, each bucket weighted by the chunk's points in it."""
    first = int((c_lo - lo) / size)
    last = min(int((c_hi - lo) / size), len(sums) - 1)
    span = c_hi - c_lo
    for b in range(first, last + 1):
        b_lo, b_hi = max(c_lo, lo + b * size), min(c_hi, lo + (b + 1) * size)
        share = n if first == last else n * max(b_hi - b_lo, 1.0) / max(span, 1)
        mid = (b_lo + b_hi) / 2
        v = v0 if span == 0 else v0 + (v1 - v0) * (mid - c_lo) / span
        if math.isfinite(v):
            sums[b] += v * share
            weights[b] += share


def _bucket(steps: list[int], values: list[float], buckets: int) -> list[float | None]:
    """Mean of the (non-NaN) values per equal step range; as many buckets as steps when fewer."""
    if not steps:
        return []
    lo, hi = steps[0], steps[-1]
    width = min(buckets, len(steps), hi - lo + 1)
    sums = [0.0] * width
    counts = [0] * width
    for s, v in zip(steps, values, strict=True):
        if math.isnan(v):
            continue
        b = min((s - lo) * width // (hi - lo + 1), width - 1)
        sums[b] += v
        counts[b] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(width)]
