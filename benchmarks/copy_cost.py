"""One copy of the uncut generation (``kill_window_s``), back to back and after a sleep: what a cold CPU adds.

With copies the training thread copies the points logged since the last copy inside the
``log()`` call that finds one due (:mod:`coordinator.transport.copies`), so a copy is what the
slowest calls of a paced loop cost (docs/performance.md, round 39: at ~1,000 calls a second one
call in ~25 copies). This makes the copies of a real buffer into a real copy file, in process:
``--points`` points of one scalar column (or, with ``--keys K``, rows of a K-key frame) logged
before each copy, ``--copies`` copies, first back to back, then with ``--sleep-ms`` asleep before
each (a paced loop's step). Each copy is timed with the wall clock (the training thread waits
for it whole); the copy file must then read back every point, in order, once.

    python -m benchmarks.copy_cost [--copies 400] [--sleep-ms 25] [--dir /dev/shm/copies]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from array import array
from pathlib import Path

from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from coordinator.transport.copyread import read_copies
from coordinator.transport.frames import Frame

__all__ = ["main", "measure"]

_WINDOW_S = 0.05
"""The kill window (the buffer's clock is moved by one window before each copy, so each is due)."""


def _log(b: Buffer, keys: int, first: int, points: int) -> None:
    """``points`` points from step ``first``: a scalar column's, or rows of a ``keys``-key frame (lock held)."""
    if keys <= 1:
        steps, values = b.cols.setdefault("loss", (array("q"), array("d")))
        steps.extend(range(first, first + points))
        values.extend(map(float, range(first, first + points)))
        b.pending += points
        return
    kt = tuple(f"m{j:03d}" for j in range(keys))
    fr = b.frames.get(kt)
    if fr is None:
        fr = b.frames[kt] = Frame(kt)
        b.framed.update(dict.fromkeys(kt, fr))
    for s in range(first, first + points):
        fr.steps.append(s)
        fr.values.extend([float(s)] * keys)
    b.pending += points * keys


def measure(copies: int, sleep_s: float, points: int = 25, keys: int = 1, directory: Path | None = None) -> list[float]:
    """Wall µs of each copy, ``copies`` of them after ``sleep_s`` asleep each (0: back to back).

    Raises:
        AssertionError: the copy file does not read back every step once, in order, with its value.
    """
    with tempfile.TemporaryDirectory(dir=directory) as d:
        b = Buffer(1 << 40)
        b.wake_at(1 << 40, lambda: None)  # a sender to wake, should a copy ask for a cut
        now = [100.0]
        c = Copies(d, b, rank=0, window_s=_WINDOW_S, clock=lambda: now[0])
        out: list[float] = []
        try:
            for i in range(copies):
                with b.lock:
                    _log(b, keys, i * points, points)
                now[0] += _WINDOW_S
                if sleep_s:
                    time.sleep(sleep_s)
                with b.lock:
                    t0 = time.perf_counter_ns()
                    c.check()
                    out.append((time.perf_counter_ns() - t0) / 1e3)
            [g] = read_copies(d)
        finally:
            c.close(keep_uncut=True)
    want = list(range(copies * points))
    for key, (steps, values) in g.columns.items():
        if list(steps) != want or list(values) != [float(s) for s in want]:
            raise AssertionError(f"the copies of {key!r} read back {len(steps)} points, not steps 0..{len(want) - 1}")
    if c.copies != copies or len(g.columns) != keys:
        raise AssertionError(f"{c.copies} copies of {len(g.columns)} keys, {copies} of {keys} made")
    return out


def main() -> None:
    """Run and print the percentiles of each phase."""
    ap = argparse.ArgumentParser(prog="benchmarks.copy_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=400)
    ap.add_argument("--sleep-ms", type=float, default=25.0, help="asleep before each copy of the cold phase")
    ap.add_argument("--points", type=int, default=25, help="steps logged before each copy")
    ap.add_argument("--keys", type=int, default=1, help="1: a scalar column; more: a frame of that many keys")
    ap.add_argument("--dir", type=Path, default=None, help="where the copy files go (default: the temp dir)")
    args = ap.parse_args()
    what = "a scalar column" if args.keys <= 1 else f"a {args.keys}-key frame"
    for label, pause in (("back to back", 0.0), (f"after {args.sleep_ms:g} ms asleep", args.sleep_ms / 1e3)):
        v = sorted(measure(args.copies, pause, args.points, args.keys, args.dir))
        n = len(v)
        print(
            f"a copy of {args.points} steps of {what}, {label}: p50 {v[n // 2]:.1f} µs, p90 {v[9 * n // 10]:.1f}, "
            f"p99 {v[99 * n // 100]:.1f}, max {v[-1]:.1f} ({n} copies)"
        )


if __name__ == "__main__":
    main()
