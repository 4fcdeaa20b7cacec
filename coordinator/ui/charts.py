"""The chart data of the UI's answers: downsampled series as JSON columns, and a key's summary.

A chart's series is the journal's downsampler's buckets (:mod:`coordinator.journal.downsample`)
turned into columns on one x grid (the buckets where any series has a point), NaN as null; the
ranks' band is :func:`~coordinator.journal.downsample.band` on the same grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.journal.downsample import Buckets, band, downsample, grid
from coordinator.journal.records import MAIN_RANK
from coordinator.ui.source import RunSource

__all__ = ["compare_json", "down", "series_json", "summary"]


def _floats(a: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in a[keep].tolist()]


def down(src: RunSource, key: str, rank: int, lo: int, hi: int, buckets: int) -> Buckets:
    """One series of ``key`` downsampled on the grid of ``[lo, hi]`` (empty buckets when it has none)."""
    s = src.series(key, rank)
    if s is None:
        width, count = grid(lo, hi, buckets)
        return Buckets.empty(lo, width, np.minimum(lo + width * np.arange(count + 1, dtype=np.int64), hi + 1))
    return downsample(s, lo, hi, buckets)


def summary(src: RunSource, key: str, policy: str) -> dict[str, Any]:
    """A key's summary from the chunk summaries: policy, the main series' count, first, last, min, max; its ranks."""
    main = src.reader.series_stats(key, MAIN_RANK)
    return {
        "key": key,
        "policy": policy,
        "points": main.points,
        "first": main.first,
        "last": main.last,
        "min": main.min,
        "max": main.max,
        "ranks": src.ranks(key),
    }


def series_json(key: str, main: Buckets, ranks: dict[int, Buckets], *, with_ranks: bool) -> dict[str, Any]:
    """Buckets as columns on one x grid (buckets where any series has a point), NaN as null."""
    keep = main.n > 0
    for b in ranks.values():
        keep |= b.n > 0
    t = main.t.copy()
    for b in ranks.values():  # a bucket only ranks reached takes its time from them
        t = np.where(np.isnan(t), b.t, t)
    out: dict[str, Any] = {
        "key": key,
        "lo": main.lo,
        "width": main.width,
        "x": main.starts[keep].tolist(),
        "t": _floats(t, keep),
        "points": main.points,
        "main": _cols(main, keep),
        "ranks": sorted(ranks),
    }
    if ranks:
        lo, hi = band(list(ranks.values()))
        out["band"] = {"min": _floats(lo, keep), "max": _floats(hi, keep)}
    if with_ranks:
        out["per_rank"] = {str(r): _cols(b, keep) for r, b in ranks.items()}
    return out


def compare_json(key: str, series: list[Buckets]) -> dict[str, Any]:
    """Each run's main series as columns on one x grid."""
    keep = np.zeros(len(series[0].n), bool)
    for b in series:
        keep |= b.n > 0
    return {
        "key": key,
        "lo": series[0].lo,
        "width": series[0].width,
        "x": series[0].starts[keep].tolist(),
        "runs": [_cols(b, keep) for b in series],
    }


def _cols(b: Buckets, keep: npt.NDArray[np.bool_]) -> dict[str, Any]:
    return {
        "n": b.n[keep].tolist(),
        "min": _floats(b.min, keep),
        "max": _floats(b.max, keep),
        "first": _floats(b.first, keep),
        "last": _floats(b.last, keep),
    }
