"""Downsampling what goes to one backend: a token bucket per series over journal time.

``max_points_per_key_per_s`` keeps at most that many points per series per second of journal
time, with one second of burst; the points a chunk keeps are evenly spaced and always include
its last one (the freshest value). Only what goes to the backend is thinned; the journal keeps
everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["thin"]

P = TypeVar("P")


def thin(points: Sequence[P], ts: float, rate: float, bucket: list[float] | None) -> tuple[list[P], list[float]]:
    """The points of one chunk the series' bucket lets through.

    Args:
        points: the chunk's points, in order.
        ts: the chunk's journal time.
        rate: points per second (also the burst).
        bucket: the series' ``[tokens, last time]`` so far (``None``: a full bucket at ``ts``).

    Returns:
        (kept points, the bucket after them).
    """
    tokens, last = bucket if bucket is not None else (rate, ts)
    tokens = min(rate, tokens + max(0.0, ts - last) * rate)
    allowed = int(tokens)
    n = len(points)
    if n <= allowed:
        keep = list(points)
    elif allowed <= 0:
        keep = []
    else:
        idx = sorted({n - 1 - round(i * (n - 1) / allowed) for i in range(allowed)})
        keep = [points[i] for i in idx]
    return keep, [tokens - len(keep), max(ts, last)]
