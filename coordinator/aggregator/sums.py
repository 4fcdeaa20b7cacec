"""How the reducer turns one group's values into one: per policy, and the sum under them.

:data:`REDUCERS` maps a key's policy to its reduction of a (key, step) group (rank -> value).
Their sum is ``math.fsum``, without its two exceptions. Key groups sum many (key, step) groups at
once with :func:`exact_sums`: the same correctly rounded result, vectorised, certified per element.

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

import numpy as np
import numpy.typing as npt

__all__ = ["MEANS", "REDUCERS", "Matrix", "exact_sums", "total"]

Matrix = npt.NDArray[np.float64]
"""A block's values: one row per key, one column per step (keys x steps x ranks where said)."""


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


_MARGIN = 1.0 + 2.0**-40
"""Slack on the certificate's float arithmetic (its own roundings are below 2**-52 relative)."""

_EXPONENT = np.int64(0x7FF0000000000000)
"""A double's exponent bits (as an int64): masked in, they leave the power of two at or below it."""


def exact_sums(v: Matrix, mask: npt.NDArray[np.bool_]) -> Matrix:
    """Correctly rounded sums over the last axis of ``v`` (keys x steps x ranks, absent entries 0.0), as fsum.

    TwoSum cascades give the rounded sum ``s`` and its exact error terms; their rounded sum
    ``u`` and its error terms ``f``; then ``res = fl(s + u)`` with error ``g``, so the exact sum is
    ``res + g + sum(f)``. ``res`` is the correctly rounded sum when ``|g| + sum|f|`` is below half
    the gap to either neighbour of ``res`` (then no other double is nearer). Elements that are not
    certified (ties, zeros, non-finite values) are summed with :func:`~coordinator.aggregator.sums.total`
    (``math.fsum`` without its exceptions) over the present entries of ``mask`` (steps x ranks), which
    is what the per-key path computes.
    """
    with np.errstate(all="ignore"):  # overflow and NaN are what the certificate rejects
        res = _certified(v)
    bad = ~np.isfinite(res)
    if bad.any():
        for i, j in zip(*np.nonzero(bad), strict=True):
            res[i, j] = total(v[i, j][mask[j]].tolist())
    return res


def _half_gap(a: Matrix) -> Matrix:
    """Half the gap from each of ``a`` (``>= 0``) to its nearer neighbouring double; 0 where ``a`` is 0 or subnormal.

    From the exponent's bits: ``p``, the power of two at or below ``a``, has neighbours ``p *
    2**-52`` apart above it and ``p * 2**-53`` below, and every other double in ``[p, 2p)`` has
    both at ``p * 2**-52``. The same as ``nextafter`` both ways, five times faster (that was a
    fifth of an emit's sums at 4 ranks). A subnormal's 0 refuses its certificate (fsum then sums it).
    """
    p = (a.view(np.int64) & _EXPONENT).view(np.float64)
    half = p * 2.0**-53
    half[a == p] *= 0.5
    return half


def _certified(v: Matrix) -> Matrix:
    """The rounded sums over the last axis of ``v``, NaN where they are not certified correctly rounded.

    The ranks are summed pairwise, halving them at each level (``log2(n)`` vectorised steps: a
    loop over 1024 ranks was ~16,000 numpy calls per emitted group), each step a TwoSum whose
    error terms are kept: ``sum(v) == s + sum(errors)`` exactly, whatever the order. The ``n - 1``
    error terms are then summed as floats, ``u``, whose own error is at most ``(n - 2) * 2**-53 /
    (1 - (n - 2) * 2**-53)`` times the sum of their magnitudes in any order of summation
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 4.2): ``spread`` bounds it.

    The sums run on keys x ranks x steps (a key group's emit builds ``v`` as a view of that
    layout; any other ``v`` is copied into it): each half of a level is then a run of contiguous
    rows, its sums add whole rows, and each TwoSum reuses its temporaries. Over the ranks' own
    axis, the last, every operand was strided and every sum a reduction of 2-4 elements per step,
    which took twice as long at 4 and 8 ranks (``python -m benchmarks.exact_sums``;
    docs/performance.md, round 32).
    """
    n = v.shape[-1]
    s = np.moveaxis(v, -1, 1)
    if n > 1:
        s = np.ascontiguousarray(s)
    u = np.zeros(v.shape[:-1])
    spread = np.zeros(v.shape[:-1])
    while s.shape[1] > 1:
        half = s.shape[1] // 2
        a, b = s[:, :half], s[:, half : 2 * half]
        t = a + b
        bp = t - a
        e = t - bp  # a's share of t, then a's rounding error, then the TwoSum's error term
        np.subtract(a, e, out=e)
        np.subtract(b, bp, out=bp)  # b's rounding error
        np.add(e, bp, out=e)
        u += e.sum(axis=1)
        spread += np.abs(e, out=e).sum(axis=1)
        s = np.concatenate((t, s[:, 2 * half :]), axis=1) if s.shape[1] % 2 else t
    spread *= 2.0 * n * 2.0**-53  # covers the bound above and the roundings of these sums
    s = s[:, 0]
    res = s + u
    bp = res - s
    g = (s - (res - bp)) + (u - bp)
    a = np.abs(res)
    half_gap = _half_gap(a)
    ok = np.isfinite(res) & (a > 0.0) & ((np.abs(g) + spread) * _MARGIN < half_gap)
    res[~ok] = np.nan
    return res
