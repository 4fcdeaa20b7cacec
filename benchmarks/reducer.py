"""Micro-benchmark of the aggregator's cross-rank reducer (``Reducer.add`` + ``emit``), in process.

Feeds one :class:`~coordinator.aggregator.reduce.Reducer` the way the aggregator loop does: per
commit window every rank adds a few steps of every key, then one ``emit``. Two shapes: *paced*
(4 ranks, 100 keys, 2-3 steps per key per window: the CPU-per-point job of section 7) and *bulk*
(4 ranks, 100 keys, 500 steps per key per window: a rank logging at full speed). Every emitted
group is checked (its step, the mean of the ranks' values, 4 contributors), so a faster variant
that changes the result fails here. CPU time (``time.process_time``) per point added; median of
repeats. Each shape runs key by key (``add``, ``emit``: the per-key path) and as blocks (a rank's
100 keys as one ``add_block`` with a keys x steps numpy matrix, ``emit_blocks``: the key-group
path the aggregator takes for a dict logged at a step).
Usage: ``python -m benchmarks.reducer [--repeats 5] [--seconds 1.0] [--keys 100]`` (``--keys 10``: the
shapes with 10 keys, where the per-step work weighs ten times more per point).
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array

import numpy as np

from coordinator.aggregator.reduce import Reducer
from coordinator.core.policies import PolicyTable

__all__ = ["main", "measure"]


def measure(
    ranks: int, keys: int, steps_per_window: float, seconds: float, *, blocks: bool = False, emit_every: int = 1
) -> float:
    """CPU µs per point added (add + emit), over about ``seconds`` of windows; checks every group."""
    red = Reducer(ranks, PolicyTable({}, "mean"), group_timeout_s=60.0)
    names = [f"train/metric_{i:03d}" for i in range(keys)]
    tup = tuple(names)
    step = 0
    carry = 0.0
    points = 0
    emitted = 0
    t_end = time.process_time() + seconds
    t0 = time.process_time()
    window = 0
    while time.process_time() < t_end or window % emit_every:
        carry += steps_per_window
        n = int(carry)
        carry -= n
        steps = array("q", range(step, step + n))
        for r in range(ranks):
            vals = array("d", (float(s + r) for s in steps))
            if blocks and n:
                red.add_block(tup, r, steps, np.tile(np.frombuffer(vals), (keys, 1)), 1.0)
                continue
            for k in names:
                red.add(k, r, steps, vals, 1.0)
        points += ranks * keys * n
        step += n
        window += 1
        if window % emit_every:
            continue
        out, emitted_blocks = red.emit_blocks(1.0)
        for b in emitted_blocks:
            want = np.array(b.steps, dtype=np.float64) + (ranks - 1) / 2
            if not (b.values == want).all() or set(b.counts) != {ranks}:
                raise AssertionError(f"wrong block at steps {list(b.steps)}")
            emitted += len(b.keys) * len(b.steps)
        for e in out.values():
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
    ap.add_argument("--keys", type=int, default=100, help="keys per rank and window (logged together)")
    ap.add_argument("--emit-every", type=int, default=1, help="windows per emit (the aggregator: ~5 paced, 1 MiB bulk)")
    a = ap.parse_args()
    for name, per_window, blocks in (
        ("paced", 2.5, False),
        ("paced, blocks", 2.5, True),
        ("bulk", 500.0, False),
        ("bulk, blocks", 500.0, True),
    ):
        runs = [
            measure(4, a.keys, per_window, a.seconds, blocks=blocks, emit_every=a.emit_every) for _ in range(a.repeats)
        ]
        print(f"{name}: {statistics.median(runs):.3f} µs CPU per point (runs: {', '.join(f'{x:.3f}' for x in runs)})")


if __name__ == "__main__":
    main()
