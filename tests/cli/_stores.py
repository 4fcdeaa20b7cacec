"""A finished 4-rank run written by a real in-process Aggregator, for the plot and export tests.

Every rank logs ``train/loss`` at steps 0..N-1 (value ``base(step) + rank``, so the ranks' band
around the main series is 3 wide) and ``eval/acc`` every 10 steps; rank 2 restarts halfway
(a new incarnation re-logs from step ``RESTART_STEP``), so the journal holds a restart event and
replaced points; rank 3 logs steps 20..24 again in a late batch (chunks whose step ranges overlap).
"""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.journal.store import run_dir
from coordinator.transport import wire
from tests.aggregator.helpers import env, payload

RUN = "plot-run-1a2b3c"
WORLD = 4
N = 400
RESTART_STEP = 250
BATCH = 50
RELOG = range(20, 25)
"""Steps rank 3 logs twice (its own series keeps the later batch's time)."""


def base(step: int) -> float:
    """The main series' value at ``step`` (the mean of the ranks' values minus 1.5)."""
    return 10.0 / (1.0 + step / 40.0)


def value(rank: int, step: int, incarnation: int = 1) -> float:
    """What ``rank`` logs at ``step`` (a restarted incarnation logs 0.25 more)."""
    return base(step) + rank + (0.25 if incarnation > 1 else 0.0)


def write_run(
    root: Path, run_id: str = RUN, n: int = N, *, restart: bool = True, batch: int = BATCH, shift: float = 0.0
) -> Path:
    """Write the run under store root ``root`` (``batch`` steps a batch, every value + ``shift``); its ``run.db``."""
    path = run_dir(root, run_id) / "run.db"
    a = Aggregator(AggregatorConfig(run_id=run_id, store_path=str(path), world_size=WORLD, group_timeout_s=1e9))
    seq = dict.fromkeys(range(WORLD), 0)
    now = 1000.0
    for r in range(WORLD):
        a.hello(env(wire.HELLO, r, 1, 0, run=run_id), {"pid": 100 + r, "host": "h"}, now)
    for lo in range(0, n, batch):
        now += 1.0
        for r in range(WORLD):
            if restart and r == 2 and lo >= RESTART_STEP:
                continue
            seq[r] += 1
            m = {"train/loss": {s: value(r, s) + shift for s in range(lo, min(n, lo + batch))}}
            m["eval/acc"] = {s: s / n for s in range(lo, min(n, lo + batch)) if s % 10 == 0}
            a.batch(env(wire.BATCH, r, 1, seq[r], run=run_id), payload(metrics=m, ts=now), now)
        a.commit()
    now += 1.0
    seq[3] += 1  # rank 3 logs steps RELOG again (same values) in a later batch: overlapping chunks
    m = {"train/loss": {s: value(3, s) for s in RELOG}}
    a.batch(env(wire.BATCH, 3, 1, seq[3], run=run_id), payload(metrics=m, ts=now), now)
    a.commit()
    if restart:  # rank 2 comes back as incarnation 2 and logs again from RESTART_STEP - 2*BATCH
        now += 1.0
        a.hello(env(wire.HELLO, 2, 2, 0, run=run_id), {"pid": 200, "host": "h"}, now)
        for s2, lo in enumerate(range(RESTART_STEP - 2 * BATCH, n, BATCH), start=1):
            now += 1.0
            m = {"train/loss": {s: value(2, s, 2) for s in range(lo, min(n, lo + BATCH))}}
            m["eval/acc"] = {s: s / n for s in range(lo, min(n, lo + BATCH)) if s % 10 == 0}
            a.batch(env(wire.BATCH, 2, 2, s2, run=run_id), payload(metrics=m, ts=now), now)
            a.commit()
    now += 1.0
    for r in range(WORLD):
        a.bye(env(wire.BYE, r, 2 if restart and r == 2 else 1, 0, run=run_id), {"ending": "clean"}, now)
    a.finalize()
    return path
