"""How the reducer turns one group's values into one: per policy, and the sum under them.

:data:`REDUCERS` maps a key's policy to its reduction of a (key, step) group (rank -> value).
Their sum is ``math.fsum``, without its two exceptions.

``math.fsum`` raises ``OverflowError`` when a partial sum leaves the float range (two ranks
logging ``1e308``) and ``ValueError`` for ``inf + -inf``. Raised in the aggregator's emit, either
would stop the run's aggregator over one metric's values, so :func:`total` returns what IEEE
arithmetic says instead: the correctly rounded sum when it is representable, ``±inf`` when it is
not, NaN for ``inf + -inf``. A mean is ``total / count``: the mean of values whose sum overflows
is ``±inf`` too (say so rather than lose the run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

__all__ = ["MEANS", "REDUCERS", "total"]


def total(values: Collection[float]) -> float:
    """The correctly rounded sum of ``values`` as ``math.fsum``; ``±inf`` past the float range, NaN for inf - inf."""
    try:
        return math.fsum(values)
    except OverflowError:
        # Finite values whose exact sum (or a partial one) is past the float range: sum them scaled
        # by a power of two that keeps every partial sum in range, then scale back (±inf when the
        # sum itself is out of range; tiny values may lose bits in the scaling, only in this case).
        k = len(values).bit_length() + 1
        return math.fsum(v * 2.0**-k for v in values) * 2.0**k
    except ValueError:
        return math.nan  # inf and -inf among the values: their sum is not a number


def _mean(g: dict[int, float]) -> float:
    return total(g.values()) / len(g)


def _rank0(g: dict[int, float]) -> float:
    return g[min(g)]


MEANS = frozenset(("mean", "all"))
"""Policies whose main value is the mean of the group."""

REDUCERS: dict[str, Callable[[dict[int, float]], float]] = {
    "mean": _mean,
    "all": _mean,
    "sum": lambda g: total(g.values()),
    "min": lambda g: min(g.values()),
    "max": lambda g: max(g.values()),
    "rank0": _rank0,
}
"""A (key, step) group's reduction (rank -> value, at least one) under each per-key policy."""
