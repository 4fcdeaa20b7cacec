"""The aggregator's work for one second of the paced job, in process: where its CPU goes, hot.

The paced job of ``benchmarks.cpu_per_point`` and ``benchmarks.rank_threads`` (4 ranks, a 100-key
dict per step, 50 steps/s, 50 ms flushes) gives the aggregator, each second, 80 batches of 2-3
steps (one block each), 10 commits (one per light window, each staging its round's rank points) and
one emission (the server loop's sweep: every key, the main series written). This feeds an
in-process ``Aggregator`` exactly that, in the server loop's order, from payloads encoded
beforehand as a sender encodes them, and times its three parts with the thread's CPU clock:
``batch`` (decoding and ingesting), ``commit`` (the staging commits and the materializations of the
held rank points, which happen every ``RANK_HOLD_S``) and ``emit``. It is a hot loop: the paced
job's aggregator wakes ~28 times a second on a cold CPU and spends about twice this
(``rank_threads`` prints it), but the parts move together, and a change measured here is measured
without the paced job's run-to-run spread.

After the timed seconds the run is finalized and read back: the series of the first, middle and
last rank and the main series of the first and the last key hold every step once, the main values
are the means.

    python -m benchmarks.aggregator_cycle [--seconds 20] [--repeats 3]

``--ranks 1024 --keys 10 --seconds 2`` is the same pace from 1024 ranks (512,000 points a second,
each emission reducing over 1024 ranks): the many-sender side of goal 5, in process.
``--flush-ms 200`` makes every rank flush every 200 ms instead of 50 (a batch of ~10 steps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.journal.store import MAIN_RANK, LocalStore
from coordinator.transport import wire

__all__ = ["main", "measure"]

_RANKS = 4
_KEYS = 100
_FLUSHES = 20
"""Flushes a second per rank (50 ms)."""
_RUN = "cycle"


def _env(kind: int, rank: int, seq: int) -> wire.Envelope:
    return wire.decode_envelope(wire.encode_envelope(kind, _RUN, rank, 1, seq))


def _values(rank: int, steps: range, n_keys: int) -> np.ndarray:
    """Rank ``rank``'s values at ``steps``, step-major (steps x keys): known, so they can be checked."""
    s = np.asarray(steps, dtype=np.float64)[:, None]
    return s * 0.001 + np.arange(n_keys, dtype=np.float64)[None, :] + rank


def measure(seconds: int, n_keys: int = _KEYS, ranks: int = _RANKS, every: int = 1) -> dict[str, float]:
    """Milliseconds of CPU per second of the paced job: ``batch``, ``commit``, ``emit`` and ``total``.

    ``every``: each rank flushes every ``every`` 50 ms ticks (a ``flush_interval_s`` of
    ``0.05 * every``), its batch holding the steps of those ticks.
    """
    keys = tuple(f"train/m{j:03d}" for j in range(n_keys))
    warm = 3
    # Every tick's steps (2 or 3: 50 steps a second); a flush sends the steps of its ticks.
    ticks: list[range] = []
    step = 0
    for f in range((warm + seconds) * _FLUSHES):
        n = 3 if f % 2 else 2
        ticks.append(range(step, step + n))
        step += n
    flushes: list[range | None] = [
        range(ticks[f - every + 1].start, ticks[f].stop) if (f + 1) % every == 0 else None for f in range(len(ticks))
    ]
    step = max(st.stop for st in flushes if st is not None)
    bodies = [
        None
        if st is None
        else [
            wire.encode_chunks([], [], 1.0, None, [(keys, array("q", st).tobytes(), _values(r, st, n_keys).tobytes())])
            for r in range(ranks)
        ]
        for st in flushes
    ]
    cpu: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="aggregator-cycle-") as d:
        cfg = AggregatorConfig(run_id=_RUN, store_path=str(Path(d) / "run.db"), world_size=ranks)
        agg = Aggregator(cfg)
        clock = time.thread_time_ns
        t0 = time.time()
        for r in range(ranks):
            agg.hello(_env(wire.HELLO, r, 0), {"pid": 100 + r, "host": "bench"}, t0)
        seq = 0
        for f, per_rank in enumerate(bodies):
            timed = f >= warm * _FLUSHES
            now = t0 + f / _FLUSHES
            if per_rank is not None:
                seq += 1
                for r, body in enumerate(per_rank):
                    e = _env(wire.BATCH, r, seq)
                    a = clock()
                    agg.batch(e, body, now)
                    cpu["batch"] += (clock() - a) * timed
            if f % 2:  # a light window: a commit every 100 ms (none when nothing came)
                a = clock()
                agg.commit(stage=True, now=now)
                cpu["commit"] += (clock() - a) * timed
                if f % _FLUSHES == 1:  # the server loop's sweep, once a second: every key, what is held written
                    a = clock()
                    agg.emit(now, all_keys=True, hold=False)
                    cpu["emit"] += (clock() - a) * timed
        agg.finalize()
        _check(Path(d) / "run.db", keys, step, ranks)
    out = {k: v / seconds / 1e6 for k, v in cpu.items()}
    out["total"] = sum(out.values())
    return out


def _check(path: Path, keys: tuple[str, ...], steps: int, ranks: int) -> None:
    """The first, middle and last rank's series and the main series of the first and last key hold every
    step once, with its value (the main one the mean over all ``ranks``)."""
    want = list(range(steps))
    store = LocalStore(path, readonly=True)
    try:
        for j in (0, len(keys) - 1):
            for r in sorted({0, ranks // 2, ranks - 1}):
                got = store.values(keys[j], r)
                if [s for s, _ in got] != want or any(v != s * 0.001 + j + r for s, v in got):
                    raise AssertionError(f"{keys[j]} rank {r}: the series read back is not what was sent")
            main = store.values(keys[j], MAIN_RANK)
            mean = (ranks - 1) / 2
            if [s for s, _ in main] != want or any(abs(v - (s * 0.001 + j + mean)) > 1e-9 for s, v in main):
                raise AssertionError(f"{keys[j]}: the main series read back is not the ranks' mean")
    finally:
        store.close()


def main() -> None:
    """Run the repeats and print each part's median."""
    ap = argparse.ArgumentParser(prog="benchmarks.aggregator_cycle", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20, help="seconds of the paced job per repeat (after 3 warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keys", type=int, default=_KEYS)
    ap.add_argument("--ranks", type=int, default=_RANKS, help="ranks (1024 with --keys 10: goal 5's aggregator, paced)")
    ap.add_argument("--flush-ms", type=int, default=50, help="each rank's flush interval, a multiple of 50 ms")
    args = ap.parse_args()
    if args.flush_ms < 50 or args.flush_ms % 50:
        ap.error("--flush-ms must be a positive multiple of 50")
    runs = [measure(args.seconds, args.keys, args.ranks, args.flush_ms // 50) for _ in range(args.repeats)]
    parts = ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in ("batch", "commit", "emit"))
    totals = ", ".join(f"{r['total']:.2f}" for r in runs)
    print(
        f"aggregator CPU per second of the paced job ({args.ranks} ranks, {args.keys} keys, 50 steps/s, "
        f"{args.flush_ms} ms flushes), ms: "
        f"median total {statistics.median(r['total'] for r in runs):.2f} ({totals}); {parts}"
    )


if __name__ == "__main__":
    main()
