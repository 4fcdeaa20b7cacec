"""What a row written into a ring costs the calling thread, against a ``log()`` call of the same dict today.

Back to back on one thread (warm caches: the floor of each, not the paced cost), ``--calls`` calls
of each kind, alternated ``--repeats`` times; µs of CPU a call (thread time):

* ``ring row``: :meth:`coordinator.transport.ringrows.RowWriter.row` of the dict's values at a
  new step, into a ring in ``/dev/shm`` (the reader takes and releases them between slices of
  calls, outside the timing);
* ``run.log``: ``Run.log(dict, step=...)`` of an offline run with ``rings=False``: the path
  without rings, every point into the rank's buffer for its sender thread (which runs beside, as
  in a job; its CPU is not counted here); an offline run takes no ring anyway, and the explicit
  ``rings=False`` keeps this side off them whatever the defaults become;
* ``run.log, rings``: the same calls on a live run with rings (rank 0 and its aggregator, which
  drains the ring beside; every row checked to have gone into the ring). Rings are the library's
  default; ``COORDINATOR_RINGS`` is set to 1 around the run's start, so that an environment that
  turns them off (``COORDINATOR_RINGS=0``) cannot make this side the socket's;
* ``ring read``: the reader's CPU a row (:meth:`RowReader.read`, as many passes as it takes), timed
  separately.

With ``--shared`` every dict also holds one key they all share (``shared``), so that the frames the calls
cycle over have a key in common: the reader hands such frames back split by key (round 53; before, a
pass stopped at each row of another frame with that key, one pass a row).

    python -m benchmarks.ring_calls [--keys 100,1] [--calls 20000] [--repeats 3] [--frames 1] [--shared]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import coordinator
from benchmarks.common import med, rings_on
from coordinator.transport.ring import RingReader, RingWriter
from coordinator.transport.ringrows import RowReader, RowWriter

__all__ = ["CallCosts", "main", "measure"]

_SLICE = 500
"""Calls between two reads of the ring (what a drain every 50 ms would find at 10,000 calls a second)."""


@dataclass(slots=True)
class CallCosts:
    """µs of CPU a call (or a row read), one repeat."""

    ring_row: float
    run_log: float
    ring_read: float
    run_log_rings: float


def measure(keys: int, calls: int, directory: Path, frames: int = 1, shared: bool = False) -> CallCosts:
    """One repeat: ``calls`` rows into a fresh ring, then ``calls`` ``log()`` calls of an offline run.

    ``frames`` above 1 cycles the calls over that many dicts of distinct keys, each call at a new
    step (with one key: the "100 scalars at new steps" pattern); ``shared`` adds a key to every dict.

    Raises:
        AssertionError: the ring did not hand every point back.
    """
    dicts = [{f"f{f}/m{j:03d}": float(j) for j in range(keys)} for f in range(frames)]
    if shared:
        for d in dicts:
            d["shared"] = 1.0
    tuples = [tuple(d) for d in dicts]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ring-{keys}-{time.monotonic_ns()}"
    w = RowWriter(RingWriter(path, 1 << 22))
    r = RowReader(RingReader(path))
    write_ns = read_ns = 0
    got = 0
    for lo in range(0, calls, _SLICE):
        t = time.thread_time_ns()
        for step in range(lo, min(calls, lo + _SLICE)):
            w.row(tuples[step % frames], step, dicts[step % frames].values())
        t1 = time.thread_time_ns()
        while rows := r.read():
            got += sum(len(s) * len(k) for k, (s, _, _) in rows.items())
        r.reader.release(r.reader.cursor)
        write_ns += t1 - t
        read_ns += time.thread_time_ns() - t1
    w.close()
    r.close()
    for p in (path, path.with_name(path.name + ".names")):
        p.unlink()
    width = len(dicts[0])
    if got != calls * width:
        raise AssertionError(f"the ring handed back {got} points of {calls * width}")
    offline = coordinator.Settings(dir=directory / f"runs-{keys}", rings=False)
    run = coordinator.init_run(mode="offline", settings=offline)
    try:
        t = time.thread_time_ns()
        for step in range(calls):
            run.log(dicts[step % frames], step=step)
        log_ns = time.thread_time_ns() - t
    finally:
        run.stop()
    settings = coordinator.Settings(dir=directory / f"live-{keys}", ring_dir=str(directory))
    with rings_on():
        run = coordinator.init_run(settings=settings)
    try:
        t = time.thread_time_ns()
        for step in range(calls):
            run.log(dicts[step % frames], step=step)
        rings_ns = time.thread_time_ns() - t
        if run.stats().get("ring_points") != calls * width:
            raise AssertionError(f"the ring took {run.stats().get('ring_points')} points of {calls * width}")
    finally:
        run.stop()
    return CallCosts(write_ns / calls / 1e3, log_ns / calls / 1e3, read_ns / calls / 1e3, rings_ns / calls / 1e3)


def main() -> None:
    """Measure each ``--keys`` size ``--repeats`` times; print each repeat and the medians."""
    ap = argparse.ArgumentParser(prog="benchmarks.ring_calls", description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="100,1", help="dict sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=1, help="dicts of distinct keys the calls cycle over")
    ap.add_argument("--shared", action="store_true", help="every dict also holds one key they all share")
    args = ap.parse_args()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    for keys in (int(k) for k in args.keys.split(",")):
        costs = []
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory(dir=base) as d:
                costs.append(measure(keys, args.calls, Path(d), args.frames, args.shared))
            c = costs[-1]
            print(
                f"{keys} keys, repeat {i + 1}: ring row {c.ring_row:.2f} µs a call, run.log {c.run_log:.2f}, "
                f"run.log with rings {c.run_log_rings:.2f}, ring read {c.ring_read:.2f} a row"
            )
        row = med([c.ring_row for c in costs])
        print(
            f"{keys} keys x {args.frames} frames{' + a shared key' if args.shared else ''}, median of "
            f"{args.repeats}: ring row {row:.2f} µs, "
            f"run.log {med([c.run_log for c in costs]):.2f}, "
            f"run.log with rings {med([c.run_log_rings for c in costs]):.2f}, "
            f"ring read {med([c.ring_read for c in costs]):.2f}"
        )


if __name__ == "__main__":
    main()
