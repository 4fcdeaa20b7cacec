"""What the aggregator pays to read a rank's ring, by the pattern of calls that filled it.

A ring's rows are records of a size set by their frame's key count (:mod:`coordinator.transport.ringrows`).
A training loop that makes one kind of call fills it with records of one size; one that alternates
kinds (a 2-key dict, then an ``append()``, at every step) fills it with records whose sizes change
at every record. This writes ``--points`` points of each pattern into a ring with the library's
:class:`RowWriter`, then times :meth:`RowReader.read` taking them all in one pass (the aggregator's
drain after a burst, or at the end of a run), ``--repeats`` times, and checks that every point came
back once, in order, with its value. Each pattern is read twice over: its records found by the C walk
(:mod:`coordinator.transport.ringscan`, where the extension was built) and by the Python loop
(``COORDINATOR_PUREPYTHON=1``). Reported per pattern and walk: the best pass's microseconds per point
and per record, and the median's per point.

    python -m benchmarks.ring_read [--points 600000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from coordinator.core.env import COORDINATOR_PUREPYTHON
from coordinator.transport import ringscan
from coordinator.transport.ring import RingReader, RingWriter
from coordinator.transport.ringrows import RowReader, RowWriter

__all__ = ["PATTERNS", "main", "measure"]

Step = list[tuple[str, ...]]
"""A step's calls: each a frame (its keys), one record each."""

PATTERNS: dict[str, Step] = {
    "a 100-key dict": [tuple(f"m/{i}" for i in range(100))],
    "the suite's realistic step: a 100-key dict, 20 scalars": [
        tuple(f"m/{i}" for i in range(100)),
        *[(f"s/{i}",) for i in range(20)],
    ],
    "100 scalars key by key": [(f"s/{i}",) for i in range(100)],
    "a 2-key dict and an append()": [("x", "y"), ("z",)],
    "a 5-key dict, a 2-key dict and an append()": [tuple(f"a/{i}" for i in range(5)), ("x", "y"), ("z",)],
}


def _fill(w: RowWriter, step: Step, points: int) -> tuple[int, int]:
    """Write whole steps of ``step`` until ``points`` points are in; (points, records) written."""
    per = sum(len(f) for f in step)
    n = max(1, points // per)
    for s in range(n):
        for keys in step:
            if not w.row(keys, s, [float(s)] * len(keys)):
                raise RuntimeError("the ring is full: give it more room or write fewer points")
    return n * per, n * len(step)


def _check(rows: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]], step: Step, steps: int) -> None:
    """Every key's points once, steps 0..steps-1 in order, each value its step."""
    want = sorted({k for f in step for k in f})
    got: dict[str, list[np.ndarray]] = {}
    for keys, (st, vals, _) in rows.items():
        for j, k in enumerate(keys):
            got.setdefault(k, []).append(np.stack([st.astype(np.float64), vals[:, j]]))
    if sorted(got) != want:
        raise AssertionError(f"keys {sorted(got)[:5]}... read back, not {want[:5]}...")
    for k, parts in got.items():
        [a] = parts
        if not (np.array_equal(a[0], np.arange(steps)) and np.array_equal(a[1], a[0])):
            raise AssertionError(f"{k}: its points did not come back once each, in order, with their values")


def measure(name: str, step: Step, points: int, repeats: int, directory: Path, pure: bool) -> dict[str, float]:
    """Fill a ring with ``points`` points of ``step``; time ``repeats`` passes reading them all (with ``pure``, the
    records found by the Python loop)."""
    path = directory / name.replace(" ", "_").replace(",", "").replace(":", "").replace("/", "")[:40]
    w = RowWriter(RingWriter(path, 1 << 27))
    n, records = _fill(w, step, points)
    r = RowReader(RingReader(path))
    times: list[float] = []
    was = os.environ.pop(COORDINATOR_PUREPYTHON, None)
    if pure:
        os.environ[COORDINATOR_PUREPYTHON] = "1"
    try:
        for _ in range(repeats):
            r.reader.cursor = 0
            t0 = time.perf_counter()
            rows = r.read(final=True)
            times.append(time.perf_counter() - t0)
            _check(rows, step, records // len(step))
    finally:
        os.environ.pop(COORDINATOR_PUREPYTHON, None)
        if was is not None:
            os.environ[COORDINATOR_PUREPYTHON] = was
        r.close()
        w.close()
        path.unlink()
        path.with_name(path.name + ".names").unlink()
    best, med = min(times), statistics.median(times)
    return {
        "points": n,
        "records": records,
        "us_per_point": best / n * 1e6,
        "us_per_record": best / records * 1e6,
        "median_us_per_point": med / n * 1e6,
    }


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    """Measure every pattern and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=600_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    out(f"`python -m benchmarks.ring_read --points {a.points} --repeats {a.repeats}`: one pass over the whole ring\n")
    walks = [("C walk", False)] if ringscan.built() else []
    walks.append(("Python walk", True))
    out("| pattern (one step) | points | records | walk | µs/point (best) | µs/record (best) | µs/point (median) |")
    out("|---|---:|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        for name, step in PATTERNS.items():
            for walk, pure in walks:
                m = measure(name, step, a.points, a.repeats, Path(d), pure)
                out(
                    f"| {name} | {m['points']:,} | {m['records']:,} | {walk} | {m['us_per_point']:.3f} | "
                    f"{m['us_per_record']:.3f} | {m['median_us_per_point']:.3f} |"
                )


if __name__ == "__main__":
    main()
