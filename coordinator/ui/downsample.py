"""Server-side downsampling: a series cut into per-pixel step buckets, each with its min, max, first and last.

A chart ``w`` pixels wide never needs more than ``w`` buckets. A bucket covers ``width`` steps
(``[lo + i*width, lo + (i+1)*width)``) and holds the number of points in it, their smallest and
largest value (NaN ignored), the first and last value, and the batch time of its first point
(for a wall-clock axis; chunks carry one time per batch).

Cost: the series' chunk summaries are visited in step order (:class:`SeriesSource.groups`); a
chunk whose steps strictly increase, nothing of it replaced, and whose whole step range falls
in one bucket is merged from its summary without reading a point. Only chunks that straddle a
bucket boundary (or overlap other chunks, or were partly replaced by a restart) are read, one
group of chunks at a time, and binned with numpy. Memory: the buckets plus one group of chunks,
whatever the series' length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coordinator.journal.paging import SeriesSource, Span

__all__ = ["MAX_BUCKETS", "Buckets", "downsample", "grid"]

MAX_BUCKETS = 4096
"""The most buckets one request may ask for (a very wide screen)."""

_F = npt.NDArray[np.float64]


def grid(lo: int, hi: int, buckets: int) -> tuple[int, int]:
    """``(width, count)``: the whole-step bucket width covering ``[lo, hi]`` in at most ``buckets`` buckets.

    Raises:
        TypeError: an argument is not an int.
        ValueError: ``hi < lo`` or ``buckets`` outside 1..:data:`MAX_BUCKETS`.
    """
    if type(lo) is not int or type(hi) is not int or type(buckets) is not int:
        raise TypeError("grid(lo: int, hi: int, buckets: int)")
    if hi < lo:
        raise ValueError(f"empty step range [{lo}, {hi}]")
    if not 0 < buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be in 1..{MAX_BUCKETS}, got {buckets}")
    span = hi - lo + 1
    width = -(-span // buckets)
    return width, -(-span // width)


@dataclass(slots=True)
class Buckets:
    """A series over ``count`` buckets of ``width`` steps from step ``lo``; empty buckets have ``n == 0``."""

    lo: int
    width: int
    n: npt.NDArray[np.int64]
    min: _F
    max: _F
    first: _F
    last: _F
    t: _F
    """The batch time of the bucket's first point (NaN: empty)."""

    @classmethod
    def empty(cls, lo: int, width: int, count: int) -> Buckets:
        """``count`` empty buckets."""
        nan = np.full(count, np.nan)
        return cls(lo, width, np.zeros(count, np.int64), nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan)

    @property
    def points(self) -> int:
        """Points in all buckets."""
        return int(self.n.sum())

    def _merge(self, b: int, n: int, vmin: float, vmax: float, first: float, last: float, t: float) -> None:
        """Add a run of ``n`` points that follows (in step order) whatever bucket ``b`` holds."""
        if self.n[b] == 0:
            self.first[b], self.t[b] = first, t
        self.n[b] += n
        self.last[b] = last
        self.min[b] = np.fmin(self.min[b], vmin)
        self.max[b] = np.fmax(self.max[b], vmax)

    def _bin(self, steps: npt.NDArray[np.int64], values: _F, t: float) -> None:
        """Add points (in step order, within the grid) bucket by bucket."""
        idx = (steps - self.lo) // self.width
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        ends = np.r_[starts[1:], len(idx)] - 1
        with np.errstate(invalid="ignore"):
            mins = np.fmin.reduceat(values, starts)
            maxs = np.fmax.reduceat(values, starts)
        for b, n, lo, hi, f, last in zip(
            idx[starts].tolist(),
            (ends - starts + 1).tolist(),
            mins.tolist(),
            maxs.tolist(),
            values[starts].tolist(),
            values[ends].tolist(),
            strict=True,
        ):
            self._merge(b, n, lo, hi, f, last, t)


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


def downsample(src: SeriesSource, lo: int, hi: int, buckets: int) -> Buckets:
    """The current points of one series with steps in ``[lo, hi]``, in at most ``buckets`` buckets.

    The points are the series as :meth:`~coordinator.journal.paging.SeriesSource.page` reads them
    (the replacement rule applied, each step once), so the buckets agree with ``fetch_values``.

    Raises:
        TypeError, ValueError: see :func:`grid`.
    """
    width, count = grid(lo, hi, buckets)
    out = Buckets.empty(lo, width, count)
    for group in src.groups(lo - 1):
        first_lo = min(s.lo for s in group)
        if first_lo > hi:
            break
        one = group[0]
        if len(group) == 1 and _whole(src, one) and lo <= one.lo and one.hi <= hi:
            b = (one.lo - lo) // width
            if (one.hi - lo) // width == b:
                out._merge(b, one.n, _nan(one.v_min), _nan(one.v_max), _nan(one.v_first), _nan(one.v_last), one.ts)
                continue
        steps, values = src.resolve(group, lo - 1)
        s = np.frombuffer(steps, dtype=np.int64) if len(steps) else np.empty(0, np.int64)
        v = np.frombuffer(values, dtype=np.float64) if len(values) else np.empty(0, np.float64)
        keep = int(np.searchsorted(s, hi, side="right"))
        if keep:
            out._bin(s[:keep], v[:keep], min(x.ts for x in group))
    return out


def _whole(src: SeriesSource, span: Span) -> bool:
    """The chunk reads as it is stored: its steps strictly increase and no later incarnation replaced any."""
    cut = src.cuts.get(span.incarnation)
    return span.ordered and (cut is None or span.hi < cut)
