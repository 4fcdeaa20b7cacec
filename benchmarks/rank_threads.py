"""Where one paced rank's logging CPU goes: per thread of the rank, and its aggregator, per point.

One process (rank 0 of a 1-rank run, its aggregator started as usual) logs a 100-key dict at
50 steps/s, as ``benchmarks.cpu_per_point`` does per rank, without a DDP step around it. After
a 1 s warm-up it reads every thread's CPU time (``/proc/self/task/*/stat``, utime + stime) and
the aggregator's (``/proc/<pid>/stat``), logs for ``--seconds``, reads them again, and prints
each thread's share per logged point. Python threads are named by ``threading`` (the training
thread is ``MainThread``, the sender ``coordinator-sender-r0``), the others as the kernel knows
them (``ZMQbg/IO/0``). CPU time is read from ``schedstat`` (nanoseconds) where the kernel has it,
else from ``stat`` (10 ms ticks: then use windows of 10 s or more). Each line also
gives the thread's wake-ups per second (its voluntary context switches, ``/proc``): at a paced
load the CPU is mostly per wake-up, so this is the count to drive down. A last line gives the
training thread's CPU inside its ``log()`` calls (``time.thread_time_ns`` around each call; part
of ``MainThread``'s line), per point and per call: the first call after the loop's sleep runs on
a cold CPU, so it costs more than the hot-path benchmark's back-to-back calls.

Without the DDP step's run-to-run swing this separates the rank's own threads from the
aggregator, which ``cpu_per_point`` (the whole job minus a baseline) cannot on a shared 2-core
machine.

    python -m benchmarks.rank_threads --seconds 15

The run takes the library's default for ``Settings.rings`` (rings: the rows go into the rank's
ring, which the aggregator reads; the sender does not flush); ``COORDINATOR_RINGS=0`` sends every
point over the socket instead (``benchmarks.flush_intervals`` and ``benchmarks.paced_parts`` run
it so).

``--rate`` and ``--keys`` change the load (``--rate 1 --keys 10``: a run that logs a 10-key dict
once a second, where the fixed cost of the threads that wake up whether or not anything was
logged dominates). ``--tensor-loss`` makes the dict's first value a CPU tensor, as a training
loop's loss is (made before the timed call): the dict then takes the per-key path, and the
tensor is read on the sender thread, or by a copy (``kill_window_s``). ``--no-step`` logs the dict
without a step (the sender numbers it; the per-key path too).

Under ``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node=4 -m
benchmarks.rank_threads``) every rank runs the same loop into one run and prints its own threads;
rank 0 also prints the aggregator's, per point of the whole job (the ranks start within a moment
of each other and log for the same length of time).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coordinator
from benchmarks.common import task_cpu_s

__all__ = ["main"]

_RATE = 50.0
_KEYS = 100


def _switches(status: str) -> int:
    """Voluntary context switches (the thread slept and was woken) from a ``/proc/.../status`` text."""
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def _threads(pid: int | str = "self") -> dict[tuple[str, str], tuple[float, int]]:
    """(thread id, name) -> (CPU seconds, wake-ups), for every thread of a process."""
    names = {str(t.native_id): t.name for t in threading.enumerate()} if pid == "self" else {}
    out: dict[tuple[str, str], tuple[float, int]] = {}
    task = Path(f"/proc/{pid}/task")
    for t in os.listdir(task):
        try:
            comm = names.get(t) or (task / t / "comm").read_text().strip()
            out[(t, comm)] = (
                task_cpu_s(task / t),
                _switches((task / t / "status").read_text()),
            )
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
    return out


def _print_delta(
    label: str,
    a: dict[tuple[str, str], tuple[float, int]],
    b: dict[tuple[str, str], tuple[float, int]],
    points: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """One line per thread that ran in the window, then the process's total; returns those threads
    (``name``, ``cpu_s``, ``wakeups`` in the window)."""
    total = 0.0
    wakes = 0
    ran: list[dict[str, Any]] = []
    for k in sorted(b):
        cpu0, sw0 = a.get(k, (0.0, 0))
        d, w = b[k][0] - cpu0, b[k][1] - sw0
        total += d
        wakes += w
        if d or w:
            ran.append({"name": k[1], "cpu_s": d, "wakeups": w})
            name = f"{label} thread {k[1]}"
            print(f"{name:38s} {d * 1e3:8.1f} ms  {d / points * 1e6:6.2f} µs/point  {w / seconds:7.1f} wake-ups/s")
    name = f"{label}, all threads"
    print(f"{name:38s} {total * 1e3:8.1f} ms  {total / points * 1e6:6.2f} µs/point  {wakes / seconds:7.1f} wake-ups/s")
    return ran


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
    ap.add_argument("--rate", type=float, default=_RATE, help=f"steps per second (default {_RATE:g})")
    ap.add_argument("--keys", type=int, default=_KEYS, help=f"keys in the dict logged each step (default {_KEYS})")
    ap.add_argument("--tensor-loss", action="store_true", help="the dict's first value is a CPU tensor")
    ap.add_argument("--no-step", action="store_true", help="log the dict without a step (the sender numbers it)")
    ap.add_argument("--out", default=None, help="also write each rank's threads to OUT/rank<r>.json (flush_intervals)")
    args = ap.parse_args(argv)
    rate, n_keys = args.rate, args.keys
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: every rank logs into rank 0's run (one store directory for all)
        root = Path(tempfile.gettempdir()) / f"rank-threads-{os.environ.get('MASTER_PORT', 'job')}"
        root.mkdir(exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="rank-threads-"))
    settings = coordinator.Settings(dir=str(root), handle_sigterm=False, capture_env=False)
    run = coordinator.init_run(project="bench", name="rank-threads", settings=settings)
    keys = [f"train/m{j:03d}" for j in range(n_keys)]
    tensor: Callable[[float], Any] | None = None
    if args.tensor_loss:
        import torch

        tensor = torch.tensor
    step = 0
    in_log = 0  # the training thread's CPU inside log() calls, ns

    def paced(n: int) -> None:
        nonlocal step, in_log
        t = time.monotonic()
        cpu = time.thread_time_ns
        for _ in range(n):
            data: dict[str, Any] = dict(zip(keys, [0.5 + j for j in range(n_keys)], strict=True))
            if tensor is not None:
                data[keys[0]] = tensor(0.25 + step)
            c0 = cpu()
            run.log(data, step=None if args.no_step else step)
            in_log += cpu() - c0
            step += 1
            t += 1.0 / rate
            d = t - time.monotonic()
            if d > 0:
                time.sleep(d)

    paced(max(1, int(rate)))
    kids = _children()
    a, ak = _threads(), {k: _threads(k) for k in kids}
    t0 = time.monotonic()
    in_log = 0
    n = max(1, int(args.seconds * rate))
    paced(n)
    b, bk = _threads(), {k: _threads(k) for k in kids}
    seconds = time.monotonic() - t0
    points = n * n_keys
    rank = run.rank
    label = f"rank {rank}" if world > 1 else "rank"
    threads = _print_delta(label, a, b, points, seconds)
    log_s = in_log / 1e9  # part of MainThread's line above
    name = f"{label} in log() calls"
    print(f"{name:38s} {log_s * 1e3:8.1f} ms  {log_s / points * 1e6:6.2f} µs/point  {in_log / n / 1e3:7.1f} µs/call")
    # per point of the whole job: every rank logs as many as this one
    aggregator = [_print_delta(f"aggregator {k}", ak[k], bk[k], points * world, seconds) for k in kids]
    run.stop(60)
    if args.out is not None:
        found = {"rank": rank, "world": world, "points": points, "seconds": seconds, "threads": threads}
        found["log_cpu_s"] = log_s
        found["aggregator"] = [t for ts in aggregator for t in ts]
        Path(args.out, f"rank{rank}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
