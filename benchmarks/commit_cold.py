"""One paced commit of the aggregator, back to back and after a sleep: what a cold CPU adds.

Inside the paced job (``benchmarks.paced_parts``) ``LocalStore.commit`` of one round costs about
460 µs of the aggregator thread's CPU. This writes the same round into a temporary store, in
process: the staged blocks of ``--ranks`` ranks (``--keys`` keys, ``--steps`` steps each, as
``Aggregator.commit`` hands them over) and the senders' rows, ``--commits`` times, first back to
back, then with a ``--sleep-ms`` sleep before each (the job commits every 100 ms). Each commit is
timed with the thread's CPU clock; the store must then hold every staged point.

    python -m benchmarks.commit_cold [--commits 250] [--sleep-ms 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from coordinator.journal.records import StagedBlock, TxnData
from coordinator.journal.store import LocalStore

__all__ = ["main", "measure"]

_WARM_UP = 20
"""Commits before the timed ones in each phase."""


def _round(keys: tuple[str, ...], ranks: int, steps: int, seq: int) -> TxnData:
    """One commit round: every rank's block of ``steps`` steps of ``keys``, and its sender row."""
    now = time.time()
    first = seq * steps
    blocks: list[StagedBlock] = [
        StagedBlock(keys, r, 0, seq, now, array("q", range(first, first + steps)), np.random.rand(len(keys), steps))
        for r in range(ranks)
    ]
    senders = {
        (r, 0): (seq, (seq + 1) * steps * len(keys), seq + 1, 0.0, now, "live", None, None) for r in range(ranks)
    }
    return TxnData(staged=blocks, senders=senders)


def measure(commits: int, sleep_s: float, ranks: int = 4, keys: int = 100, steps: int = 5) -> dict[str, list[float]]:
    """CPU µs of each timed commit, back to back (``"warm"``) and after ``sleep_s`` (``"cold"``).

    Raises:
        AssertionError: the store does not hold every staged point.
    """
    names = tuple(f"train/m{i:03d}" for i in range(keys))
    out: dict[str, list[float]] = {"warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as d:
        store = LocalStore(Path(d) / "run.db")
        try:
            store.start_checkpoints()
            store.commit(TxnData(key_policies=dict.fromkeys(names, "mean")))
            seq = 0
            for phase, pause in (("warm", 0.0), ("cold", sleep_s)):
                for i in range(_WARM_UP + commits):
                    data = _round(names, ranks, steps, seq)
                    seq += 1
                    if pause:
                        time.sleep(pause)
                    t0 = time.thread_time_ns()
                    store.commit(data)
                    if i >= _WARM_UP:
                        out[phase].append((time.thread_time_ns() - t0) / 1e3)
            held = store.staged_points()
        finally:
            store.close()
    if held != seq * ranks * keys * steps:
        raise AssertionError(f"the store holds {held} staged points, {seq * ranks * keys * steps} were committed")
    return out


def main() -> None:
    """Run and print the medians."""
    ap = argparse.ArgumentParser(prog="benchmarks.commit_cold", description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=250)
    ap.add_argument("--sleep-ms", type=float, default=100.0)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    t = measure(args.commits, args.sleep_ms / 1e3, args.ranks, args.keys, args.steps)
    for phase, label in (("warm", "back to back"), ("cold", f"after {args.sleep_ms:g} ms asleep")):
        v = sorted(t[phase])
        print(
            f"LocalStore.commit, {label}: median {statistics.median(v):.0f} µs of CPU, "
            f"p10 {v[len(v) // 10]:.0f}, p90 {v[9 * len(v) // 10]:.0f} ({len(v)} commits)"
        )


if __name__ == "__main__":
    main()
