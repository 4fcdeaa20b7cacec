"""wait(), sync() and fetch_values(): confirmation and reads through the aggregator."""

from __future__ import annotations

from pathlib import Path

import coordinator
from tests.client.helpers import open_store


def test_wait_makes_points_durable_and_fetch_values_reads_them(store_dir: Path) -> None:
    """After wait(), the store holds every point; fetch_values returns (step, value) in step order."""
    with coordinator.init_run() as run:
        for s in range(5000):
            run.log({"loss": s * 0.5}, step=s)
        run.wait(timeout=30)
        s_ = open_store(store_dir)
        try:
            assert len(s_.values("loss", 0)) == 5000
        finally:
            s_.close()
        vals = run["loss"].fetch_values()
        assert vals == [(s, s * 0.5) for s in range(5000)]
        assert run["loss"].fetch_values(rank=0) == vals
        run.sync()
        assert run["loss"].fetch_last() == 4999 * 0.5
        assert run.stats()["pending"] == 0
