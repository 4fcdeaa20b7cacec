"""What a longer flush interval buys: the paced job's logging CPU at several ``flush_interval_s``.

A paced job's logging CPU is per wake-up, not per point (docs/performance.md, rounds 14, 30 and
33): each sender wakes once per flush interval, its ZeroMQ I/O thread once per send and per ACK,
and the aggregator once per arrival, commit and sweep, each time on a CPU the training processes
just had. The flush interval sets how often all of that happens, and it is also how much a
SIGKILLed rank may lose (its points not yet cut). This runs the paced job of
``benchmarks.rank_threads`` (``torchrun``, every rank a 100-key dict at 50 steps/s) once per
interval and repeat, the intervals interleaved, with ``COORDINATOR_FLUSH_INTERVAL_S`` set, and
prints per interval (medians over the repeats):

* the ranks' logging threads (every thread of a rank but its training thread: the sender, its
  ZeroMQ I/O thread, the system sampler, rank 0's supervisor): CPU a second, wake-ups a second;
* the aggregator's (every thread): the same;
* their sum per logged point of the job: the logging's CPU beyond the ``log()`` calls themselves
  (those run on the training thread, whose CPU here is mostly the loop's own and is not counted);
* the training threads' CPU inside their ``log()`` calls (``rank_threads`` times each call with the
  thread's CPU clock), and the sum per point with it: all of the logging's CPU in the job;
* what a SIGKILLed rank may lose: the interval; and in the double fault (its aggregator gone
  too before committing) the interval plus the ack deadline, ``max(interval, 200 ms)``.

    python -m benchmarks.flush_intervals [--intervals 0.05,0.1,0.2,0.5] [--repeats 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from coordinator.transport.pipeline import ack_deadline

__all__ = ["main", "measure", "summarize"]

_TRAINING_THREAD = "MainThread"


def summarize(found: list[dict[str, Any]]) -> dict[str, float]:
    """One job's ``rank_threads --out`` files as ms and wake-ups a second and µs per point.

    Keys: ``ranks_ms``, ``ranks_wakeups`` (the ranks' threads but their training threads),
    ``aggregator_ms``, ``aggregator_wakeups``, ``training_ms`` (the training threads),
    ``log_ms`` (the training threads inside ``log()``), ``us_per_point`` (ranks' logging threads
    and aggregator, per point logged by the job) and ``us_per_point_log`` (the same and the
    ``log()`` calls).

    Raises:
        ValueError: no file, or none with the aggregator's threads (rank 0's).
    """
    if not found:
        raise ValueError("no rank wrote its threads")
    seconds = statistics.fmean(f["seconds"] for f in found)
    points = sum(f["points"] for f in found)
    ranks = [t for f in found for t in f["threads"] if t["name"] != _TRAINING_THREAD]
    training = [t for f in found for t in f["threads"] if t["name"] == _TRAINING_THREAD]
    aggregator = [t for f in found for t in f["aggregator"]]
    if not aggregator:
        raise ValueError("no rank saw the aggregator's threads (rank 0 starts it)")
    ranks_s = sum(t["cpu_s"] for t in ranks)
    agg_s = sum(t["cpu_s"] for t in aggregator)
    log_s = sum(f["log_cpu_s"] for f in found)
    return {
        "ranks_ms": 1e3 * ranks_s / seconds,
        "ranks_wakeups": sum(t["wakeups"] for t in ranks) / seconds,
        "aggregator_ms": 1e3 * agg_s / seconds,
        "aggregator_wakeups": sum(t["wakeups"] for t in aggregator) / seconds,
        "training_ms": 1e3 * sum(t["cpu_s"] for t in training) / seconds,
        "log_ms": 1e3 * log_s / seconds,
        "us_per_point": 1e6 * (ranks_s + agg_s) / points,
        "us_per_point_log": 1e6 * (ranks_s + agg_s + log_s) / points,
    }


def measure(interval_s: float, ranks: int, seconds: float, timeout_s: float = 300.0) -> dict[str, float]:
    """Run the paced job once with ``flush_interval_s=interval_s``; its :func:`summarize`.

    Raises:
        RuntimeError: the job failed.
    """
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="flush-intervals-") as d:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
        env["COORDINATOR_FLUSH_INTERVAL_S"] = repr(interval_s)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd += ["-m", "benchmarks.rank_threads", "--seconds", str(seconds), "--out", d]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if p.returncode:
            raise RuntimeError(f"the paced job failed ({p.returncode}): {p.stderr[-2000:]}")
        found = [json.loads(f.read_text()) for f in sorted(Path(d).glob("rank*.json"))]
    if len(found) != ranks:
        raise RuntimeError(f"{len(found)} of {ranks} ranks wrote their threads")
    return summarize(found)


def main(argv: list[str] | None = None) -> None:
    """Run every interval ``--repeats`` times, interleaved, and print the medians as a table."""
    ap = argparse.ArgumentParser(prog="benchmarks.flush_intervals", description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", default="0.05,0.1,0.2,0.5", help="flush intervals in seconds, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="rank_threads' measured window")
    ap.add_argument("--ranks", type=int, default=4)
    args = ap.parse_args(argv)
    intervals = [float(x) for x in args.intervals.split(",") if x]
    if not intervals or any(not 0 < x <= 10 for x in intervals):
        ap.error("--intervals: seconds in (0, 10]")
    runs: dict[float, list[dict[str, float]]] = {x: [] for x in intervals}
    for rep in range(args.repeats):
        for x in intervals:
            runs[x].append(measure(x, args.ranks, args.seconds))
            print(f"# repeat {rep + 1}, {x * 1e3:g} ms: {runs[x][-1]}", file=sys.stderr)
    print(
        "| flush interval | a SIGKILLed rank may lose | with its aggregator gone too | ranks' logging threads "
        "ms/s (wake-ups/s) | aggregator ms/s (wake-ups/s) | µs of CPU per point | `log()` calls ms/s "
        "| µs per point with them |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in intervals:
        m = {k: statistics.median(r[k] for r in runs[x]) for k in runs[x][0]}
        per = ", ".join(f"{r['us_per_point']:.2f}" for r in runs[x])
        per_log = ", ".join(f"{r['us_per_point_log']:.2f}" for r in runs[x])
        print(
            f"| {x * 1e3:g} ms | {x * 1e3:g} ms | {(x + ack_deadline(x)) * 1e3:g} ms "
            f"| {m['ranks_ms']:.1f} ({m['ranks_wakeups']:.0f}) "
            f"| {m['aggregator_ms']:.1f} ({m['aggregator_wakeups']:.0f}) "
            f"| {m['us_per_point']:.2f} ({per}) | {m['log_ms']:.1f} | {m['us_per_point_log']:.2f} ({per_log}) |"
        )


if __name__ == "__main__":
    main()
