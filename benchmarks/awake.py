"""Run a benchmark with every CPU kept from idling: how much of a paced figure is the machine's wake-up cost.

On a virtual machine an idle vCPU halts (the guest's idle loop executes ``HLT``, the host takes
the vCPU off its core); the thread that wakes it next pays for the way back, and runs on caches
the host may have given to someone else meanwhile. A paced logging job wakes up often and does
little each time (the sender 20 times a second, the training thread once a step), so that toll
is charged to every wake-up: on the 2-core development VM one paced rank's threads took 4.2-4.4
µs of CPU per point with idle vCPUs and 1.6-2.4 µs with them kept busy (docs/performance.md,
round 14; in the 4-rank DDP job, whose own steps pay the toll too, it made no difference).

This wrapper starts one busy-looping process per CPU at the lowest priority (``nice 19``: a
thread that has work preempts it at once and gets ~98% of the CPU beside it), runs the command,
then stops and reaps them. The vCPUs then never halt, and what the command measures is the
logging's own CPU on a machine that is awake anyway.
The spinners are not children of the measured job, so ``benchmarks.rank_threads`` and
``benchmarks.cpu_per_point`` do not count them; a benchmark that measures wall time or
throughput should not be run under it (the spinners take the ~2% left over).

    python -m benchmarks.awake -- python -m benchmarks.rank_threads --seconds 15
    python -m benchmarks.awake -- python -m torch.distributed.run --standalone --nproc_per_node=4 \\
        -m benchmarks.cpu_per_point --seconds 5 --repeats 3

The exit status is the command's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SPIN_SOURCE", "awake", "main"]

SPIN_SOURCE = """\
import os, sys
os.nice(int(sys.argv[1]))
parent = int(sys.argv[2])
while os.getppid() == parent:  # ends by itself if the wrapper dies without stopping it
    for _ in range(200_000):
        pass
"""
"""One spinner (``argv``: its nice, the wrapper's pid): lowers its own priority, then loops until
stopped or orphaned (its parent is no longer the wrapper, even if that died before it started)."""

_STOP_TIMEOUT_S = 5.0


@contextmanager
def awake(cpus: int, nice: int = 19) -> Iterator[list[int]]:
    """Keep ``cpus`` CPUs busy with spinners at priority ``nice`` for the ``with`` block; yields their pids.

    Every spinner is terminated and reaped when the block ends (killed if it has not exited
    within 5 s).

    Raises:
        ValueError: ``cpus`` below 1 or ``nice`` outside 0..19.
    """
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be within 0..19, got {nice}")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(cpus):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SPIN_SOURCE, str(nice), str(os.getpid())], stdin=subprocess.DEVNULL
                )
            )
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(_STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    """Run the command after ``--`` with the CPUs kept awake; return its exit status."""
    ap = argparse.ArgumentParser(prog="benchmarks.awake", description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="spinners to start (default: one per CPU)")
    ap.add_argument("--nice", type=int, default=19, help="the spinners' priority (default 19, the lowest)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="after --: the benchmark to run")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    with awake(args.cpus, args.nice) as pids:
        print(f"benchmarks.awake: {len(pids)} spinners at nice {args.nice} keep the CPUs from idling", file=sys.stderr)
        rc = subprocess.call(command)
    return rc


if __name__ == "__main__":
    sys.exit(main())
