"""What a longer flush interval buys: the paced job's logging CPU at several ``flush_interval_s``.

A paced job's logging CPU is per wake-up, not per point (docs/performance.md, rounds 14, 30 and
33): each sender wakes once per flush interval, its ZeroMQ I/O thread once per send and per ACK,
and the aggregator once per arrival, commit and sweep, each time on a CPU the training processes
just had. The flush interval sets how often all of that happens, and it is also how much a
SIGKILLed rank may lose (its points not yet cut). This runs the paced job of
``benchmarks.rank_threads`` (``torchrun``, every rank a 100-key dict at 50 steps/s) once per
interval and repeat, the intervals interleaved, with ``COORDINATOR_FLUSH_INTERVAL_S`` set and
``COORDINATOR_RINGS=0`` (every point over the socket: the flush interval is that path's; with
rings, the library's default, the sender does not flush), and prints per interval (medians over
the repeats):

* the ranks' logging threads (every thread of a rank but its training thread: the sender, its
  ZeroMQ I/O thread, the system sampler, rank 0's supervisor): CPU a second, wake-ups a second;
* the aggregator's (every thread): the same;
* their sum per logged point of the job: the logging's CPU beyond the ``log()`` calls themselves
  (those run on the training thread, whose CPU here is mostly the loop's own and is not counted);
* the training threads' CPU inside their ``log()`` calls (``rank_threads`` times each call with the
  thread's CPU clock), and the sum per point with it: all of the logging's CPU in the job;
* what a SIGKILLed rank may lose: the interval; and in the double fault (its aggregator gone
  too before committing) the interval plus the ack deadline, ``max(interval, 200 ms)``.

An interval written ``0.5/0.05`` also sets ``COORDINATOR_KILL_WINDOW_S`` to the second number:
the sender copies the uncut points every 50 ms between its 500 ms flushes and writes every cut
ahead to the spool (:mod:`coordinator.transport.copies`), so a SIGKILLed rank may lose 50 ms, and
as much in the double fault (its batches are on disk before they are sent).

    python -m benchmarks.flush_intervals [--intervals 0.05,0.1,0.2,0.5,0.5/0.05] [--repeats 2] [--seconds 10]

``--tensor-loss`` makes one value of each step's dict a CPU tensor, as a training loop's loss;
``--no-step`` logs each step's dict without a step (the sender numbers it).
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

__all__ = ["label", "main", "measure", "parse_variant", "summarize"]

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


def measure(
    interval_s: float,
    ranks: int,
    seconds: float,
    timeout_s: float = 300.0,
    *,
    kill_window_s: float | None = None,
    tensor_loss: bool = False,
    no_step: bool = False,
) -> dict[str, float]:
    """Run the paced job once with ``flush_interval_s=interval_s`` (and ``kill_window_s``); its :func:`summarize`.

    ``tensor_loss``: one value of each step's dict is a CPU tensor (``rank_threads --tensor-loss``);
    ``no_step``: the dict is logged without a step (``--no-step``).

    Raises:
        RuntimeError: the job failed.
    """
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="flush-intervals-") as d:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
        env["COORDINATOR_RINGS"] = "0"  # the flush interval is the socket path's (module's notes)
        env["COORDINATOR_FLUSH_INTERVAL_S"] = repr(interval_s)
        env.pop("COORDINATOR_KILL_WINDOW_S", None)
        if kill_window_s is not None:
            env["COORDINATOR_KILL_WINDOW_S"] = repr(kill_window_s)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd += ["-m", "benchmarks.rank_threads", "--seconds", str(seconds), "--out", d]
        cmd += ["--tensor-loss"] if tensor_loss else []
        cmd += ["--no-step"] if no_step else []
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
    ap.add_argument("--tensor-loss", action="store_true", help="one value of each step's dict is a CPU tensor")
    ap.add_argument("--no-step", action="store_true", help="log each step's dict without a step (numbered)")
    args = ap.parse_args(argv)
    try:
        variants = [parse_variant(x) for x in args.intervals.split(",") if x]
    except ValueError as e:
        ap.error(f"--intervals: {e}")
    if not variants:
        ap.error("--intervals: none given")
    runs: dict[tuple[float, float | None], list[dict[str, float]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:
            m = measure(
                v[0], args.ranks, args.seconds, kill_window_s=v[1], tensor_loss=args.tensor_loss, no_step=args.no_step
            )
            runs[v].append(m)
            print(f"# repeat {rep + 1}, {label(v)}: {runs[v][-1]}", file=sys.stderr)
    print(
        "| flush interval | a SIGKILLed rank may lose | with its aggregator gone too | ranks' logging threads "
        "ms/s (wake-ups/s) | aggregator ms/s (wake-ups/s) | µs of CPU per point | `log()` calls ms/s "
        "| µs per point with them |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in variants:
        x, kill = v
        m = {k: statistics.median(r[k] for r in runs[v]) for k in runs[v][0]}
        per = ", ".join(f"{r['us_per_point']:.2f}" for r in runs[v])
        per_log = ", ".join(f"{r['us_per_point_log']:.2f}" for r in runs[v])
        loses, double = (x, x + ack_deadline(x)) if kill is None else (kill, kill)
        print(
            f"| {label(v)} | {loses * 1e3:g} ms | {double * 1e3:g} ms "
            f"| {m['ranks_ms']:.1f} ({m['ranks_wakeups']:.0f}) "
            f"| {m['aggregator_ms']:.1f} ({m['aggregator_wakeups']:.0f}) "
            f"| {m['us_per_point']:.2f} ({per}) | {m['log_ms']:.1f} | {m['us_per_point_log']:.2f} ({per_log}) |"
        )


def parse_variant(text: str) -> tuple[float, float | None]:
    """``"0.5"`` -> (0.5, None); ``"0.5/0.05"`` -> (0.5, 0.05): a flush interval and a kill window below it.

    Raises:
        ValueError: not seconds in (0, 10], or a kill window not below the interval.
    """
    head, _, tail = text.partition("/")
    interval = float(head)
    kill = float(tail) if tail else None
    if not 0 < interval <= 10:
        raise ValueError(f"{text!r}: a flush interval in seconds in (0, 10]")
    if kill is not None and not 0 < kill < interval:
        raise ValueError(f"{text!r}: a kill window in seconds above 0 and below the flush interval")
    return interval, kill


def label(v: tuple[float, float | None]) -> str:
    """A variant as the table's first column."""
    return f"{v[0] * 1e3:g} ms" + ("" if v[1] is None else f", copies every {v[1] * 1e3:g} ms")


if __name__ == "__main__":
    main()
