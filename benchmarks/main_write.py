"""Micro-benchmark of writing the held main series: one second of a paced key group, in process.

The aggregator holds the reduced (main) series for about a second (``outbox.MainHold``) and then
writes every key's held points as one chunk row. This feeds a ``MainHold`` what one second of the
paced job emits for a 100-key dict logged at 50 steps/s by 4 ranks (12 emissions of 4-5 steps,
one key group), then times ``MainHold.write`` and the store's commit of that transaction
(``time.perf_counter``, the process alone: a hot loop, not the paced job's cold wake-ups). Every
repeat's rows are read back: each key's main series holds every step once, with its value.
Prints the median and the 10th percentile of the repeats.

    python -m benchmarks.main_write [--repeats 200] [--keys 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from coordinator.aggregator.blocks import EmittedBlock
from coordinator.aggregator.counters import new_counters
from coordinator.aggregator.outbox import MainHold
from coordinator.journal.store import MAIN_RANK, LocalStore, TxnData

__all__ = ["main", "measure"]

_EMISSIONS = 12
"""Emissions held in one second (a sweep every ~0.25-0.3 s rides on a commit)."""


def measure(repeats: int, n_keys: int) -> list[float]:
    """Seconds per write + commit of one held second, per repeat; every repeat's rows checked."""
    keys = tuple(f"train/m{j:03d}" for j in range(n_keys))
    rng = np.random.default_rng(1)
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="main-write-") as d:
        store = LocalStore(Path(d) / "run.db")
        try:
            store.create_run("r", "bench", "main-write", 4, time.time())
            store.commit(TxnData(key_policies=dict.fromkeys(keys, "mean")))
            counters = new_counters()
            step = 0
            for _ in range(repeats):
                held = MainHold()
                first = step
                for e in range(_EMISSIONS):
                    n = 4 if e % 3 else 5
                    values = rng.random((n_keys, n))
                    held.add_block(
                        EmittedBlock(keys, array("q", range(step, step + n)), values, array("i", [4] * n)), 1.0
                    )
                    step += n
                last_values = values[:, -1].tolist()
                txn = TxnData()
                t0 = time.perf_counter()
                held.write(txn, counters)
                store.commit(txn)
                out.append(time.perf_counter() - t0)
                for k, v in ((keys[0], last_values[0]), (keys[-1], last_values[-1])):
                    got = store.values(k, MAIN_RANK)
                    if [s for s, _ in got[first:]] != list(range(first, step)) or got[-1][1] != v:
                        raise AssertionError(f"{k}: the main series read back is not what was written")
            if counters["main_points"] != n_keys * step:
                raise AssertionError(f"main_points {counters['main_points']} != {n_keys * step}")
        finally:
            store.close()
    return out


def main() -> None:
    """Run and print the figures."""
    ap = argparse.ArgumentParser(prog="benchmarks.main_write", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--keys", type=int, default=100)
    args = ap.parse_args()
    t = sorted(measure(args.repeats, args.keys))
    p10 = t[len(t) // 10]
    print(
        f"write + commit of one held second ({args.keys} keys, ~50 steps): "
        f"median {statistics.median(t) * 1e6:.0f} µs, p10 {p10 * 1e6:.0f} µs ({args.repeats} repeats)"
    )


if __name__ == "__main__":
    main()
