"""How well the aggregator's straggler check reads a rank's lag through the flush grid, in process.

The aggregator times a step by the arrival of the batch holding it, and every rank flushes on the
same grid of ``--interval`` s, so each step's lag behind the median rank arrives rounded to whole
intervals. This simulates a job of 4 ranks logging ``--rate`` steps a second for 20 s, rank 3
``lag`` s behind the others (each step's log time jittered by up to 2 ms, its arrival 0.5-3 ms
after the flush that carries it), feeds the arrivals to :class:`Health` in time order, and takes
a snapshot every 100 ms from 2 s on. Per true lag it prints the median ``lag_s`` rank 3 was given
and the share of snapshots that flagged it a straggler (``straggler_lag_s`` 50 ms).

    python -m benchmarks.lag_grid [--rate 50] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from typing import Any

from coordinator.aggregator.health import Health

__all__ = ["main", "simulate", "snapshots"]

_LAGS_MS = (0, 10, 20, 30, 40, 45, 60, 80, 100, 200)


def snapshots(lag: float, rate: float, interval: float, seed: int = 0) -> list[dict[int, dict[str, Any]]]:
    """Rank 3 ``lag`` s behind the others: the health snapshot taken every 100 ms from 2 s to 20 s."""
    rnd = random.Random(seed)
    h = Health(4, 0.05, interval)
    arrivals = []
    for s in range(int(20 * rate)):
        for r in range(4):
            t = s / rate + (lag if r == 3 else 0.0) + rnd.uniform(0, 0.002)
            arrivals.append((math.ceil(t / interval) * interval + rnd.uniform(0.0005, 0.003), r, s))
    arrivals.sort()
    out = []
    i = 0
    for tick in range(1, 200):
        now = tick * 0.1
        while i < len(arrivals) and arrivals[i][0] <= now:
            h.progress(arrivals[i][1], arrivals[i][2], arrivals[i][0])
            i += 1
        if now >= 2.0:
            out.append(h.snapshot(now, {0, 1, 2, 3}))
    return out


def simulate(lag: float, rate: float, interval: float, seed: int = 0) -> tuple[float, float]:
    """Rank 3 ``lag`` s behind: (median ``lag_s`` over the snapshots, share of snapshots flagging it)."""
    snaps = [snap[3] for snap in snapshots(lag, rate, interval, seed)]
    return statistics.median(s["lag_s"] for s in snaps), sum(bool(s["straggler"]) for s in snaps) / len(snaps)


def main(argv: list[str] | None = None) -> None:
    """Print rank 3's read lag and how often it was flagged, per true lag."""
    ap = argparse.ArgumentParser(prog="benchmarks.lag_grid", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="steps per second")
    ap.add_argument("--interval", type=float, default=0.05, help="the ranks' flush interval (s)")
    args = ap.parse_args(argv)
    for ms in _LAGS_MS:
        got, share = simulate(ms / 1000, args.rate, args.interval)
        print(f"true lag {ms:4d} ms: read {got * 1000:6.1f} ms (median), flagged in {share:4.0%} of snapshots")


if __name__ == "__main__":
    main()
