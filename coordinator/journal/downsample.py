"""One downsampler for every view of a series: step buckets with n, min, max, first, last, mean and time.

The UI's charts, ``coordinator plot`` and ``coordinator show``'s sparklines all draw a series of
any length in a bounded number of step buckets, and all get them here. The step range
``[lo, hi]`` is cut into at most ``buckets`` buckets, either of a whole number of steps each
(:func:`grid`: ``[lo + i*width, lo + (i+1)*width)``, the charts' pixel columns) or, with
``even=True``, into exactly ``min(buckets, hi - lo + 1)`` near-equal step ranges (a sparkline of a
fixed number of characters). A bucket holds the number of points in it, their smallest and largest
value (NaN ignored), the first and last value, their mean, and the batch time of its first point
(for a wall-clock axis; chunks carry one time per batch).

How much is read (``read``):

* ``"boundaries"`` (the default): the series' chunk summaries are visited in step order
  (:meth:`~coordinator.journal.paging.SeriesSource.groups`, which applies the replacement rule);
  a chunk whose steps strictly increase, nothing of it replaced, and whose whole step range falls
  in one bucket is merged from its summary without reading a point. Only chunks that straddle a
  bucket boundary (or overlap other chunks, or were partly replaced) are read, one group at a
  time, and binned with numpy. n, min, max, first and last are exact; the mean is exact where
  points were read and, for chunks merged from a summary (which holds no sum), the mean of the
  chunk's first and last value.
* ``"all"``: every point is read; the mean is exact too (``plot --smooth``, short sparklines).
* ``"none"``: no point is read; a chunk that crosses buckets is spread over them as a straight
  line from its first to its last value, its points shared by step span (long sparklines:
  one pass over the summaries, a few numbers per chunk).

Memory: the buckets plus one group of chunks, whatever the series' length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from coordinator.journal.paging import SeriesSource, Span
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK

__all__ = ["EXACT_BELOW", "MAX_BUCKETS", "READS", "Buckets", "Read", "band", "downsample", "grid", "series_sketch"]

MAX_BUCKETS = 4096
"""The most buckets one downsample makes (a very wide screen or plot)."""

EXACT_BELOW = 20_000
"""A sparkline of a series of at most this many points reads its points; a longer one only its summaries."""

Read = Literal["boundaries", "all", "none"]
READS: tuple[Read, ...] = ("boundaries", "all", "none")
"""The values of ``downsample``'s ``read``."""

_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]
_FIRST = -(2**63)


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


def _edges(lo: int, hi: int, buckets: int, even: bool) -> tuple[int, _I]:
    """``(width, edges)``: the buckets' first steps and ``hi + 1``; ``width`` 0 for an even grid."""
    width, count = grid(lo, hi, buckets)
    span = hi - lo + 1
    if not even or width == 1:
        return width, np.minimum(lo + width * np.arange(count + 1, dtype=np.int64), hi + 1)
    count = min(buckets, span)
    # bucket b starts at lo + ceil(b * span / count): step s is in bucket floor((s - lo) * count / span)
    return 0, np.array([lo + -(-b * span // count) for b in range(count + 1)], dtype=np.int64)


@dataclass(slots=True)
class Buckets:
    """A series over ``len(n)`` step buckets; bucket ``i`` covers ``[edges[i], edges[i+1])``; empty: ``n == 0``."""

    lo: int
    width: int
    """Steps per bucket; 0 for an even grid (``downsample(..., even=True)``), whose buckets differ by a step."""
    edges: _I
    n: _I
    min: _F
    max: _F
    first: _F
    last: _F
    t: _F
    """The batch time of the bucket's first point (NaN: empty)."""
    total: _F
    """Sum of the bucket's non-NaN values (estimated where its chunk was not read, see the module doc)."""
    weight: _F
    """How many values ``total`` sums."""
    exact_mean: bool = False
    """Every point was read (``read="all"``): :attr:`mean` is exact."""

    @classmethod
    def empty(cls, lo: int, width: int, edges: _I, *, exact_mean: bool = False) -> Buckets:
        """Empty buckets between ``edges``."""
        count = len(edges) - 1
        nan = np.full(count, np.nan)
        zero = np.zeros(count)
        i64 = np.zeros(count, np.int64)
        return cls(
            lo, width, edges, i64, nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan, zero, zero.copy(), exact_mean
        )

    @property
    def points(self) -> int:
        """Points in all buckets."""
        return int(self.n.sum())

    @property
    def starts(self) -> _I:
        """Each bucket's first step."""
        return self.edges[:-1]

    @property
    def mean(self) -> _F:
        """Each bucket's mean value (NaN: no value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight > 0, self.total / np.maximum(self.weight, 1e-300), np.nan)

    def index(self, steps: _I) -> _I:
        """The bucket of each step (the steps lie in ``[edges[0], edges[-1])``)."""
        if self.width:
            return (steps - self.lo) // self.width
        return np.searchsorted(self.edges, steps, side="right").astype(np.int64) - 1

    def merge(
        self, b: int, n: int, vmin: float, vmax: float, first: float, last: float, t: float, total: float, weight: float
    ) -> None:
        """Add a run of ``n`` points that follows (in step order) what bucket ``b`` holds; ``total``: their sum."""
        if self.n[b] == 0:
            self.first[b], self.t[b] = first, t
        self.n[b] += n
        self.last[b] = last
        self.min[b] = np.fmin(self.min[b], vmin)
        self.max[b] = np.fmax(self.max[b], vmax)
        self.total[b] += total
        self.weight[b] += weight

    def bin(self, steps: _I, values: _F, t: float) -> None:
        """Add points (in step order, within the grid) bucket by bucket."""
        idx = self.index(steps)
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        ends = np.r_[starts[1:], len(idx)] - 1
        real = ~np.isnan(values)
        with np.errstate(invalid="ignore"):
            mins = np.fmin.reduceat(values, starts)
            maxs = np.fmax.reduceat(values, starts)
        sums = np.add.reduceat(np.where(real, values, 0.0), starts)
        counts = np.add.reduceat(real.astype(np.int64), starts)
        for b, n, lo, hi, f, last, s, c in zip(
            idx[starts].tolist(),
            (ends - starts + 1).tolist(),
            mins.tolist(),
            maxs.tolist(),
            values[starts].tolist(),
            values[ends].tolist(),
            sums.tolist(),
            counts.tolist(),
            strict=True,
        ):
            self.merge(b, n, lo, hi, f, last, t, s, c)

    def spread(self, span: Span, top: int) -> None:
        """Add a chunk from its summary alone: a line from its first to its last value over its steps up to ``top``."""
        c_lo, c_hi = span.lo, span.hi
        a, z = max(c_lo, int(self.edges[0])), min(c_hi, top, int(self.edges[-1]) - 1)
        if z < a:
            return
        v0, v1 = _nan(span.v_first), _nan(span.v_last)
        v0, v1 = (v1 if math.isnan(v0) else v0), (v0 if math.isnan(v1) else v1)
        length = c_hi - c_lo

        def at(s: int) -> float:
            return v0 if length == 0 else v0 + (v1 - v0) * (s - c_lo) / length

        first_b, last_b = (int(x) for x in self.index(np.array([a, z], dtype=np.int64)))
        for b in range(first_b, last_b + 1):
            p_lo, p_hi = max(a, int(self.edges[b])), min(z, int(self.edges[b + 1]) - 1)
            share = span.n * (p_hi - p_lo + 1) / (length + 1)
            if (p_lo, p_hi) == (c_lo, c_hi):  # the whole chunk: its summary is exact
                lo_v, hi_v, f, last = _nan(span.v_min), _nan(span.v_max), _nan(span.v_first), _nan(span.v_last)
            else:
                f, last = at(p_lo), at(p_hi)
                lo_v, hi_v = min(f, last), max(f, last)
            mid = (at(p_lo) + at(p_hi)) / 2
            real = math.isfinite(mid)
            w = share if real else 0.0
            self.merge(b, max(1, round(share)), lo_v, hi_v, f, last, span.ts, mid * w if real else 0.0, w)


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


def downsample(
    src: SeriesSource, lo: int, hi: int, buckets: int, *, read: Read = "boundaries", even: bool = False
) -> Buckets:
    """The current points of one series with steps in ``[lo, hi]``, in at most ``buckets`` buckets.

    The points are the series as :meth:`~coordinator.journal.paging.SeriesSource.page` reads them
    (the replacement rule applied, each step once), so with ``read`` other than ``"none"`` the
    buckets' n, min, max, first and last agree with ``fetch_values``.

    Args:
        src: the series' chunks.
        lo: the first step of the range.
        hi: the last step of the range.
        buckets: at most this many buckets (1..:data:`MAX_BUCKETS`).
        read: which points are read: ``"boundaries"``, ``"all"`` or ``"none"`` (see the module doc).
        even: exactly ``min(buckets, hi - lo + 1)`` near-equal buckets instead of whole-step widths.

    Raises:
        TypeError, ValueError: see :func:`grid`; ValueError also for an unknown ``read``.
    """
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    width, edges = _edges(lo, hi, buckets, even)
    out = Buckets.empty(lo, width, edges, exact_mean=read == "all")
    for group in src.groups(lo - 1):
        if min(s.lo for s in group) > hi:
            break
        if read == "none":
            for span in group:
                cut = src.cuts.get(span.incarnation)
                out.spread(span, hi if cut is None else min(hi, cut - 1))
            continue
        one = group[0]
        if read == "boundaries" and len(group) == 1 and _whole(src, one) and lo <= one.lo and one.hi <= hi:
            b, last_b = (int(x) for x in out.index(np.array([one.lo, one.hi], dtype=np.int64)))
            if last_b == b:
                f, la = _nan(one.v_first), _nan(one.v_last)
                mid = (f + la) / 2
                real = math.isfinite(mid)
                w = one.n if real else 0
                out.merge(b, one.n, _nan(one.v_min), _nan(one.v_max), f, la, one.ts, mid * w if real else 0.0, w)
                continue
        steps, values = src.resolve(group, lo - 1)
        s = np.frombuffer(steps, dtype=np.int64) if len(steps) else np.empty(0, np.int64)
        v = np.frombuffer(values, dtype=np.float64) if len(values) else np.empty(0, np.float64)
        keep = int(np.searchsorted(s, hi, side="right"))
        if keep:
            out.bin(s[:keep], v[:keep], min(x.ts for x in group))
    return out


def _whole(src: SeriesSource, span: Span) -> bool:
    """The chunk reads as it is stored: its steps strictly increase and no later incarnation replaced any."""
    cut = src.cuts.get(span.incarnation)
    return span.ordered and (cut is None or span.hi < cut)


def _span_range(src: SeriesSource) -> tuple[int, int]:
    """The smallest and largest step of the chunks not wholly replaced, from the summaries (``hi < lo``: none)."""
    lo, hi = 2**63 - 1, _FIRST
    for group in src.groups(_FIRST):
        for s in group:
            lo, hi = min(lo, s.lo), max(hi, s.hi)
    return lo, hi


def band(parts: list[Buckets]) -> tuple[_F, _F]:
    """Per bucket, the smallest minimum and the largest maximum of ``parts`` (one grid); NaN where none has a value.

    Raises:
        ValueError: no parts, or parts on different grids.
    """
    if not parts:
        raise ValueError("band() needs at least one series")
    if any(len(p.edges) != len(parts[0].edges) or p.lo != parts[0].lo for p in parts):
        raise ValueError("band() needs series downsampled on one grid")
    with np.errstate(invalid="ignore"):
        return np.fmin.reduce([p.min for p in parts]), np.fmax.reduce([p.max for p in parts])


def series_sketch(
    reader: JournalReader,
    key: str,
    rank: int = MAIN_RANK,
    *,
    points: int,
    buckets: int = 24,
    exact_below: int = EXACT_BELOW,
) -> list[float | None]:
    """The series' mean value in ``buckets`` near-equal step ranges, first step to last (``None``: no value there).

    What ``coordinator show`` draws as a sparkline. A series of at most ``exact_below`` points is
    read whole (``read="all"``: exact means); a longer one only from its chunk summaries
    (``read="none"``), right up to a chunk's width; a schema 1 store opened read-only (no
    summaries) gets no long sketch.

    Args:
        reader: the run's journal.
        key: the metric key.
        rank: a rank, or -1 (the main series).
        points: the series' point count (``series_stats``): it picks the exact or the summary path.
        buckets: how many values to return (fewer for a series of fewer points or steps).
        exact_below: the largest series read point by point.

    Returns:
        At most ``buckets`` values; empty when the series has no point (or is long in a schema 1 store).
    """
    if points <= 0 or buckets <= 0:
        return []
    src = reader._source(key, rank)  # the journal package's own reader: same owner
    if src is None:
        return []
    exact = points <= exact_below
    if exact:
        stats = src.stats()
        if stats.first is None or stats.last is None:
            return []
        lo, hi = stats.first[0], stats.last[0]
    elif reader.summarized:
        lo, hi = _span_range(src)
        if hi < lo:
            return []
    else:
        return []
    got = downsample(src, lo, hi, min(buckets, points, MAX_BUCKETS), read="all" if exact else "none", even=True)
    return [None if math.isnan(m) else m for m in got.mean.tolist()]
