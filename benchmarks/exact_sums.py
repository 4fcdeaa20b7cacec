"""The key group's correctly rounded sums over the ranks, timed in process, every result checked.

An emit of a key group reduces a keys x steps x ranks matrix with
:func:`~coordinator.aggregator.sums.exact_sums` (``math.fsum``'s result, vectorised and
certified per element). This times it on the shapes the suite's workloads make: the paced job's
emission once a second (100 keys, 50 steps, 4 ranks), a flat-out job's (100 keys, a full batch's
655 steps, 4 and 8 ranks) and 1024 ranks (``--shapes`` picks others). Each call's result must
equal ``math.fsum`` of its ranks, element by element, bit for bit.

    python -m benchmarks.exact_sums [--calls 30] [--shapes 100x50x4,100x655x8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from coordinator.aggregator.sums import exact_sums

__all__ = ["SHAPES", "main", "measure"]

SHAPES = ((100, 50, 4), (100, 50, 8), (100, 655, 4), (100, 655, 8), (100, 50, 1024))
"""keys x steps x ranks of the default run."""


def measure(shape: tuple[int, int, int], calls: int, seed: int = 0) -> list[float]:
    """µs of wall time of each of ``calls`` calls of ``exact_sums`` on one random matrix of ``shape``.

    Raises:
        AssertionError: a sum differs from ``math.fsum`` of its ranks.
    """
    rng = np.random.default_rng(seed)
    # Magnitudes spread over a few decades, signs mixed: cancellation, as real metrics across ranks have.
    v = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)
    mask = np.ones(shape[1:], dtype=bool)
    out: list[float] = []
    got = exact_sums(v, mask)  # a first call outside the timing (numpy's own first-call costs)
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        got = exact_sums(v, mask)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    want = np.array([[math.fsum(v[i, j]) for j in range(shape[1])] for i in range(shape[0])])
    if not np.array_equal(got, want):
        raise AssertionError(f"{shape}: {int((got != want).sum())} sums differ from math.fsum")
    return out


def _shape(text: str) -> tuple[int, int, int]:
    """``"100x50x4"`` -> (100, 50, 4)."""
    parts = tuple(int(p) for p in text.split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is keys x steps x ranks, each >= 1: {text!r}")
    return parts[0], parts[1], parts[2]


def main() -> None:
    """Run and print each shape's median and spread."""
    ap = argparse.ArgumentParser(prog="benchmarks.exact_sums", description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--shapes", type=lambda t: [_shape(s) for s in t.split(",")], default=list(SHAPES))
    args = ap.parse_args()
    for shape in args.shapes:
        t = sorted(measure(shape, args.calls))
        k, m, n = shape
        print(
            f"exact_sums {k} keys x {m} steps x {n} ranks: median {statistics.median(t):,.0f} µs "
            f"({statistics.median(t) * 1e3 / (k * m * n):.2f} ns a value), p10 {t[len(t) // 10]:,.0f}, "
            f"p90 {t[9 * len(t) // 10]:,.0f} ({len(t)} calls, each result equal to math.fsum)"
        )


if __name__ == "__main__":
    main()
