"""The aggregator's second of the paced job through its rings, in process, by logging pattern; every point checked.

Lightning and transformers put ``epoch`` in the training dict they log every step and in the validation dict
they log now and then: two dicts that share a key. This feeds an in-process ``Aggregator`` with ``--ranks``
attached rings, written as the paced job writes them (50 steps a second, one drain, commit and emit a second,
as the server loop does), for each pattern:

* ``dict``: a 100-key dict a step;
* ``epoch``: the same dict with ``epoch`` as its last key, and every tenth step a validation dict
  ``{val/loss, epoch, val/acc}`` after it;
* ``wider``: every tenth step the dict has one key more (``val/acc``);
* ``repeat``: the dict, and once (step 200) rank 0 logs a step's dict twice (the later replaces the earlier).

It times the aggregator's three parts with the thread's CPU clock (``drain``: reading the rings and taking in
their rows; ``commit``; ``emit``), after three warm-up seconds; ``--cold`` touches 32 MiB before each part
(the paced aggregator wakes on caches the training processes had). At the end the run is finalized and read
back: every rank's series and the main series of a training key, ``epoch`` and ``val/loss`` hold every step
once with its value (the main one the ranks' mean).

    python -m benchmarks.shared_keys [--seconds 20] [--ranks 4] [--patterns dict,epoch,wider,repeat] [--cold]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.aggregator.rings import Rings
from coordinator.journal.store import MAIN_RANK, LocalStore
from coordinator.transport import wire
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter

__all__ = ["PATTERNS", "main", "measure"]

PATTERNS = ("dict", "epoch", "wider", "repeat")
_KEYS = 100
_RATE = 50
_WARM = 3
_VAL_EVERY = 10
_REPEAT_AT = 200
"""The step rank 0 logs twice in the ``repeat`` pattern (in the first timed second)."""
_RUN = "shared"


def _rows(pattern: str, rank: int, step: int) -> list[tuple[tuple[str, ...], list[float]]]:
    """What rank ``rank`` logs at ``step``: (keys, values) per call."""
    n = _KEYS - 1 if pattern == "epoch" else _KEYS
    keys = tuple(f"train/m{j:03d}" for j in range(n))
    vals = [step * 0.001 + j + rank for j in range(n)]
    val_step = step % _VAL_EVERY == _VAL_EVERY - 1
    if pattern == "epoch":
        epoch = step // 100 + 0.5 * rank
        out = [((*keys, "epoch"), [*vals, epoch])]
        if val_step:
            out.append((("val/loss", "epoch", "val/acc"), [-step - rank, epoch, rank + 0.25]))
        return out
    if pattern == "wider" and val_step:
        return [((*keys, "val/acc"), [*vals, rank + 0.25])]
    if pattern == "repeat" and step == _REPEAT_AT and rank == 0:
        return [(keys, vals), (keys, [v + 0.5 for v in vals])]  # the step again: the later write replaces
    return [(keys, vals)]


def measure(pattern: str, seconds: int, ranks: int, cold: bool = False) -> dict[str, float]:
    """CPU (µs) a second of each part (``drain``, ``commit``, ``emit``, ``total``) and ``per_point`` (µs)."""
    if pattern not in PATTERNS:
        raise ValueError(f"{pattern!r}: not one of {', '.join(PATTERNS)}")
    cpu: Counter[str] = Counter()
    junk = np.zeros(4 << 20)
    points = 0
    clock = time.thread_time_ns
    with tempfile.TemporaryDirectory(prefix="shared-keys-") as d:
        agg = Aggregator(AggregatorConfig(run_id=_RUN, store_path=str(Path(d) / "run.db"), world_size=ranks))
        rings = Rings(agg, look_in=())
        t0 = time.time()
        writers = []
        for r in range(ranks):
            env = wire.decode_envelope(wire.encode_envelope(wire.HELLO, _RUN, r, 1, 0))
            agg.hello(env, {"pid": 100 + r, "host": "bench"}, t0)
            path = Path(d) / f"coordinator-{_RUN}-r{r}.ring"
            writers.append(RowWriter(RingWriter(path, 1 << 24)))
            rings.attach(r, 1, path)
        step = 0
        for sec in range(_WARM + seconds):
            timed = sec >= _WARM
            for _ in range(_RATE):
                for r, w in enumerate(writers):
                    for keys, vals in _rows(pattern, r, step):
                        if not w.row(keys, step, vals):
                            raise RuntimeError("a ring is full: the benchmark drains too seldom")
                        points += len(keys) * timed
                step += 1
            now = t0 + sec
            for name in ("drain", "commit", "emit"):
                if cold:
                    junk += 1.0
                a = clock()
                if name == "drain":
                    rings.drain(now)
                elif name == "commit":
                    agg.commit(stage=True, now=now)
                else:
                    agg.emit(now, all_keys=True, hold=False)
                cpu[name] += (clock() - a) * timed
                if name == "commit":
                    rings.committed()
        rings.close()
        agg.finalize()
        _check(Path(d) / "run.db", pattern, step, ranks)
    out = {k: v / seconds / 1e3 for k, v in cpu.items()}
    out["total"] = sum(out.values())
    out["per_point"] = sum(cpu.values()) / 1e3 / points
    return out


def _check(path: Path, pattern: str, steps: int, ranks: int) -> None:
    """Every rank's series and the main series of a training key, ``epoch`` and ``val/loss`` hold each step
    once with its value (the main one the ranks' mean)."""
    want: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for r in range(ranks):
        for s in range(steps):
            for keys, vals in _rows(pattern, r, s):
                for k, v in zip(keys, vals, strict=True):
                    if k in ("train/m007", "epoch", "val/loss", "val/acc"):
                        got = want.setdefault(k, {}).setdefault(r, [])
                        if got and got[-1][0] == s:
                            got[-1] = (s, v)  # the later write of a step replaces the earlier
                        else:
                            got.append((s, v))
    store = LocalStore(path, readonly=True)
    try:
        for k, by_rank in want.items():
            for r, series in by_rank.items():
                if store.values(k, r) != series:
                    raise AssertionError(f"{pattern}: {k} of rank {r} read back is not what was written")
            mean = [(s, sum(by_rank[r][i][1] for r in range(ranks)) / ranks) for i, (s, _) in enumerate(by_rank[0])]
            main = store.values(k, MAIN_RANK)
            if [s for s, _ in main] != [s for s, _ in mean] or any(
                abs(a - b) > 1e-9 for (_, a), (_, b) in zip(main, mean, strict=True)
            ):
                raise AssertionError(f"{pattern}: the main series of {k} read back is not the ranks' mean")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.shared_keys", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20, help="seconds of the paced job per pattern (after 3 warm-up)")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--patterns", default=",".join(PATTERNS), help=f"some of {','.join(PATTERNS)}")
    ap.add_argument("--cold", action="store_true", help="touch 32 MiB before each part")
    args = ap.parse_args(argv)
    logging.getLogger("coordinator").setLevel(logging.ERROR)  # ``epoch`` twice at a validation step is a repeat
    print(f"{args.ranks} ranks, {args.seconds} s{', cold' if args.cold else ''}; the aggregator's CPU, µs a second:")
    print("| pattern | drain | commit | emit | total | µs a point |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for pattern in args.patterns.split(","):
        t = measure(pattern, args.seconds, args.ranks, args.cold)
        cells = " | ".join(f"{t[p]:,.0f}" for p in ("drain", "commit", "emit", "total"))
        print(f"| {pattern} | {cells} | {t['per_point']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
