"""Micro-benchmark of the aggregator's cross-rank reducer (``Reducer.add`` + ``emit``), in process.

Feeds one :class:`~coordinator.aggregator.reduce.Reducer` the way the aggregator loop does: per
commit window every rank adds a few steps of every key, then one ``emit``. Two shapes: *paced*
(4 ranks, 100 keys, 2-3 steps per key per window: the CPU-per-point job of section 7) and *bulk*
(4 ranks, 100 keys, 500 steps per key per window: a rank logging at full speed). Every emitted
group is checked (its step, the mean of the ranks' values, 4 contributors), so a faster variant
that changes the result fails here. CPU time (``time.process_time``) per point added; median of
repeats. Usage: ``python -m benchmarks.reducer [--repeats 5] [--seconds 1.0]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array

from coordinator.aggregator.reduce import Reducer
from coordinator.core.policies import PolicyTable

__all__ = ["main", "measure"]


def measure(ranks: int, keys: int, steps_per_window: float, seconds: float) -> float:
    """CPU µs per point added (add + emit), over about ``seconds`` of windows; checks every group."""
    red = Reducer(ranks, PolicyTable({}, "mean"), group_timeout_s=60.0)
    names = [f"train/metric_{i:03d}" for i in range(keys)]
    step = 0
    carry = 0.0
    points = 0
    emitted = 0
    t_end = time.process_time() + seconds
    t0 = time.process_time()
    while time.process_time() < t_end:
        carry += steps_per_window
        n = int(carry)
        carry -= n
        steps = array("q", range(step, step + n))
        for r in range(ranks):
            vals = array("d", (float(s + r) for s in steps))
            for k in names:
                red.add(k, r, steps, vals, 1.0)
        points += ranks * keys * n
        step += n
        for e in red.emit(1.0).values():
            for s, v, c in zip(e.steps, e.values, e.counts, strict=True):
                if v != s + (ranks - 1) / 2 or c != ranks:
                    raise AssertionError(f"wrong group at step {s}: {v} from {c} ranks")
            emitted += len(e.steps)
    cpu = time.process_time() - t0
    if emitted != keys * step:
        raise AssertionError(f"{emitted} groups emitted, {keys * step} expected")
    return 1e6 * cpu / points


def main() -> None:
    """Print the median CPU µs per point of each shape."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    for name, per_window in (("paced", 2.5), ("bulk", 500.0)):
        runs = [measure(4, 100, per_window, a.seconds) for _ in range(a.repeats)]
        print(f"{name}: {statistics.median(runs):.3f} µs CPU per point (runs: {', '.join(f'{x:.3f}' for x in runs)})")


if __name__ == "__main__":
    main()
