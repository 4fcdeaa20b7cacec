"""The sender a rank starts: its flush interval follows the job's size unless it is set."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import coordinator
from coordinator.transport import wire
from coordinator.transport.spool import spool_records

pytestmark = pytest.mark.integration


def _spooled_batches(store_dir: Path, world_size: int, seconds: float) -> tuple[int, list[int]]:
    """Log a point every 5 ms for ``seconds`` as rank 0 of an offline ``world_size``-rank job.

    Returns the batches the sender spooled and every logged step found in them (offline, the
    spool is the run's destination: each flush that had points is one BATCH record).
    """
    with coordinator.init_run(
        mode="offline", name=f"w{world_size}", settings=coordinator.Settings(rank=0, world_size=world_size)
    ) as run:
        run_id = run.id
        step = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            run.log({"loss": float(step)}, step=step)
            step += 1
            time.sleep(0.005)
        run.wait(30)
    [spool] = [p for p in store_dir.rglob(f"*{run_id}*") if p.is_dir() and any(p.glob("rank-0-*"))]
    batches = 0
    steps: list[int] = []
    for rank_dir in spool.glob("rank-0-*"):
        for rec in spool_records(rank_dir):
            if rec.kind != wire.BATCH:
                continue
            batches += 1
            batch = wire.decode_batch(rec.payload, blocks=False)
            steps += [s for key, col, _ in batch.metrics if key == "loss" for s in col]
    assert sorted(steps) == list(range(step)), "every logged point spooled once"
    return batches, steps


def test_a_large_job_flushes_every_world_size_over_2560_seconds(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At 1024 ranks a rank flushes every 400 ms, not every 50: an eighth of the batches, every point kept.

    Rank 0 says so once in the log, with the kill window that comes with it. The same loop in an
    8-rank job flushes every 50 ms: about eight times the batches.
    """
    with caplog.at_level(logging.INFO, logger="coordinator"):
        large, _ = _spooled_batches(store_dir, 1024, 1.5)
    assert 2 <= large <= 6, f"{large} batches in 1.5 s at 1024 ranks (every 0.4 s: ~4)"
    said = [r.getMessage() for r in caplog.records if "flushes every" in r.getMessage()]
    assert said == [
        "1024 ranks: each rank flushes every 0.40 s (Settings.flush_interval_s unset), so that the aggregator "
        "receives at most ~2560 batches a second; a SIGKILLed rank may lose its last 0.40 s"
    ]
    small, _ = _spooled_batches(store_dir, 8, 1.5)
    print(f"batches in 1.5 s: {large} at 1024 ranks, {small} at 8")
    assert small > large + 8, f"{small} batches at 8 ranks against {large} at 1024"
