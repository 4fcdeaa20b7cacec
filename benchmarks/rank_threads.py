"""Where one paced rank's logging CPU goes: per thread of the rank, and its aggregator, per point.

One process (rank 0 of a 1-rank run, its aggregator started as usual) logs a 100-key dict at
50 steps/s, as ``benchmarks.cpu_per_point`` does per rank, without a DDP step around it. After
a 1 s warm-up it reads every thread's CPU time (``/proc/self/task/*/stat``, utime + stime) and
the aggregator's (``/proc/<pid>/stat``), logs for ``--seconds``, reads them again, and prints
each thread's share per logged point. Python threads are named by ``threading`` (the training
thread is ``MainThread``, the sender ``coordinator-sender-r0``), the others as the kernel knows
them (``ZMQbg/IO/0``). The ticks are 10 ms, so use windows of 10 s or more.

Without the DDP step's run-to-run swing this separates the rank's own threads from the
aggregator, which ``cpu_per_point`` (the whole job minus a baseline) cannot on a shared 2-core
machine.

    python -m benchmarks.rank_threads --seconds 15
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import coordinator

__all__ = ["main"]

_HZ = os.sysconf("SC_CLK_TCK")
_RATE = 50.0
_KEYS = 100


def _cpu_fields(stat: str) -> float:
    """utime + stime in seconds from a ``/proc/.../stat`` line."""
    f = stat.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / _HZ


def _threads() -> dict[tuple[str, str], float]:
    """(thread id, name) -> CPU seconds, for every thread of this process."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out: dict[tuple[str, str], float] = {}
    task = Path("/proc/self/task")
    for t in os.listdir(task):
        try:
            comm = names.get(t) or (task / t / "comm").read_text().strip()
            out[(t, comm)] = _cpu_fields((task / t / "stat").read_text())
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
    return out


def _children() -> list[int]:
    """Pids of this process's children (the aggregator)."""
    me = os.getpid()
    kids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                kids.append(int(p))
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    return kids


def main(argv: list[str] | None = None) -> None:
    """Run the paced loop and print the per-thread CPU per point."""
    ap = argparse.ArgumentParser(prog="benchmarks.rank_threads", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="measured window (after a 1 s warm-up)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rank-threads-"))
    settings = coordinator.Settings(dir=str(root), handle_sigterm=False, capture_env=False)
    run = coordinator.init_run(project="bench", name="rank-threads", settings=settings)
    keys = [f"train/m{j:03d}" for j in range(_KEYS)]
    step = 0

    def paced(n: int) -> None:
        nonlocal step
        t = time.monotonic()
        for _ in range(n):
            run.log(dict(zip(keys, [0.5 + j for j in range(_KEYS)], strict=True)), step=step)
            step += 1
            t += 1.0 / _RATE
            d = t - time.monotonic()
            if d > 0:
                time.sleep(d)

    paced(int(_RATE))
    kids = _children()
    a, ak = _threads(), {k: _cpu_fields(Path(f"/proc/{k}/stat").read_text()) for k in kids}
    n = int(args.seconds * _RATE)
    paced(n)
    b, bk = _threads(), {k: _cpu_fields(Path(f"/proc/{k}/stat").read_text()) for k in kids}
    points = n * _KEYS
    total = 0.0
    for k in sorted(b):
        d = b[k] - a.get(k, 0.0)
        total += d
        if d:
            print(f"rank thread {k[1]:24s} {d * 1e3:8.1f} ms  {d / points * 1e6:6.2f} µs/point")
    print(f"rank, all threads             {total * 1e3:8.1f} ms  {total / points * 1e6:6.2f} µs/point")
    for k in kids:
        d = bk[k] - ak[k]
        print(f"aggregator (pid {k})           {d * 1e3:8.1f} ms  {d / points * 1e6:6.2f} µs/point")
    run.stop(60)


if __name__ == "__main__":
    main()
