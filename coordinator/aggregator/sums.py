"""The reducer's sum of one group's values: ``math.fsum``, without its two exceptions.

``math.fsum`` raises ``OverflowError`` when a partial sum leaves the float range (two ranks
logging ``1e308``) and ``ValueError`` for ``inf + -inf``. Raised in the aggregator's emit, either
would stop the run's aggregator over one metric's values, so :func:`total` returns what IEEE
arithmetic says instead: the correctly rounded sum when it is representable, ``±inf`` when it is
not, NaN for ``inf + -inf``. A mean is ``total / count``: the mean of values whose sum overflows
is ``±inf`` too (say so rather than lose the run).
"""

from __future__ import annotations

import math
from collections.abc import Collection

__all__ = ["total"]


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
