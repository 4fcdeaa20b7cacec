"""Min/max per pixel column: a series of any length reduced to a bounded number of step buckets.

``plot`` streams each series page by page into a :class:`Columns` whose bucket width is chosen
so that the plot's step range has at most ``width`` buckets (one per pixel column); each bucket
keeps the smallest, largest and mean value of the points that fell in it. Drawing a line through
every bucket's minimum and maximum reproduces what the full series would draw at that
resolution, in memory proportional to the width, not to the series. When the range has fewer
steps than columns, each bucket is one step and nothing is lost.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Columns", "Reduced", "ema"]


@dataclass(frozen=True, slots=True)
class Reduced:
    """The non-empty buckets of a series: their first step, min, max and mean value."""

    x: NDArray[np.int64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    mean: NDArray[np.float64]
    exact: bool
    """Each bucket is one step: ``mean`` is the series itself."""

    def envelope(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Points of a line that shows every bucket's extent: (x, min), (x, max) per bucket (the series when exact)."""
        if self.exact:
            return self.x, self.mean
        return np.repeat(self.x, 2), np.column_stack((self.min, self.max)).ravel()


class Columns:
    """Per step bucket of ``[lo, hi]``: min, max, sum and count of the values added (NaN values are skipped).

    Thread-safety: one thread.
    """

    def __init__(self, lo: int, hi: int, width: int) -> None:
        """Buckets over steps ``lo..hi``, at most ``width`` of them.

        Raises:
            ValueError: ``hi < lo`` or ``width < 1``.
        """
        if hi < lo or width < 1:
            raise ValueError(f"need lo <= hi and width >= 1, got lo={lo} hi={hi} width={width}")
        self.lo, self.hi = lo, hi
        self.bucket = max(1, -(-(hi - lo + 1) // width))
        n = (hi - lo) // self.bucket + 1
        self._min = np.full(n, np.inf)
        self._max = np.full(n, -np.inf)
        self._sum = np.zeros(n)
        self._count = np.zeros(n, dtype=np.int64)

    def add(self, steps: array[int], values: array[float]) -> None:
        """Add points given in step order (a page of a series); steps outside ``[lo, hi]`` are ignored."""
        s = np.frombuffer(steps, dtype=np.int64)
        v = np.frombuffer(values, dtype=np.float64)
        keep = (s >= self.lo) & (s <= self.hi) & ~np.isnan(v)
        if not keep.all():
            s, v = s[keep], v[keep]
        if not len(s):
            return
        b = (s - self.lo) // self.bucket
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        idx = b[starts]  # unique: the page is in step order, so each bucket is one run of points
        self._min[idx] = np.minimum(self._min[idx], np.minimum.reduceat(v, starts))
        self._max[idx] = np.maximum(self._max[idx], np.maximum.reduceat(v, starts))
        self._sum[idx] += np.add.reduceat(v, starts)
        self._count[idx] += np.diff(np.r_[starts, len(v)])

    def reduced(self) -> Reduced:
        """The non-empty buckets."""
        nz = np.flatnonzero(self._count)
        x = (self.lo + nz * self.bucket).astype(np.int64)
        return Reduced(x, self._min[nz], self._max[nz], self._sum[nz] / self._count[nz], self.bucket == 1)

    @staticmethod
    def band(parts: list[Columns]) -> Reduced | None:
        """Min over the parts' minimums and max over their maximums per bucket (parts share ``lo``, ``hi``, width)."""
        if not parts:
            return None
        lo = np.minimum.reduce([p._min for p in parts])
        hi = np.maximum.reduce([p._max for p in parts])
        count = np.add.reduce([p._count for p in parts])
        total = np.add.reduce([p._sum for p in parts])
        nz = np.flatnonzero(count)
        first = parts[0]
        x = (first.lo + nz * first.bucket).astype(np.int64)
        return Reduced(x, lo[nz], hi[nz], total[nz] / count[nz], first.bucket == 1)


def ema(values: NDArray[np.float64], weight: float) -> NDArray[np.float64]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start.

    Raises:
        ValueError: ``weight`` outside ``[0, 1)``.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"the smoothing weight must be in [0, 1), got {weight}")
    out = np.empty_like(values)
    acc = 0.0
    for i, v in enumerate(values):
        acc = acc * weight + (1.0 - weight) * float(v)
        out[i] = acc / (1.0 - weight ** (i + 1))
    return out
