"""The chunk summaries of one block's rows, timed in process, every summary checked against the definition.

A commit writes a rank's held block (every 2 s) and a key group's held main series as one chunk
row per key, each with its summary (``journal.blockrows.block_summaries``: step range, first and
last, smallest and largest value). This times that call on a block of ``--keys`` keys and
``--steps`` steps: each row's values grow from ``--first`` (0.0 by default: a row whose smallest
value is a zero keeps its first zero, the case that used to run Python's ``min``/``max`` over the
row), and every summary must equal ``summarize_small``'s, the plain-Python definition.

    python -m benchmarks.block_summaries [--keys 100] [--steps 30000] [--first 0.0] [--calls 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from array import array

import numpy as np

from coordinator.journal.blockrows import block_summaries
from coordinator.journal.records import StagedBlock
from coordinator.journal.summary import summarize_small

__all__ = ["main", "measure"]


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, and -0.0 told from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b and type(a) is type(b)


def measure(keys: int, steps: int, first: float, calls: int) -> list[float]:
    """ms of wall time of each of ``calls`` calls of ``block_summaries`` on one block.

    Raises:
        AssertionError: a row's summary differs from ``summarize_small``'s.
    """
    values = np.tile(first + np.arange(steps, dtype=np.float64) * 8.0, (keys, 1))
    b = StagedBlock(tuple(f"m{i:03d}" for i in range(keys)), 0, 0, 1, 1.0, array("q", range(steps)), values)
    got = block_summaries(b)
    out: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        got = block_summaries(b)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    for i, g in enumerate(got):
        want = summarize_small(b.steps, array("d", values[i].tobytes()))
        if not all(_same(x, y) for x, y in zip(g, want, strict=True)):
            raise AssertionError(f"row {i}: {g} is not the definition's {want}")
    return out


def main() -> None:
    """Run and print the median and spread."""
    ap = argparse.ArgumentParser(prog="benchmarks.block_summaries", description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--first", type=float, default=0.0, help="each row's first value (0.0: a zero minimum)")
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    t = sorted(measure(args.keys, args.steps, args.first, args.calls))
    print(
        f"block_summaries, {args.keys} keys x {args.steps} steps, rows from {args.first:g}: median "
        f"{statistics.median(t):.2f} ms, p10 {t[len(t) // 10]:.2f}, p90 {t[9 * len(t) // 10]:.2f} "
        f"({len(t)} calls, every summary equal to summarize_small's)"
    )


if __name__ == "__main__":
    main()
