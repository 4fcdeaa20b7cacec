"""A series' sparkline values: exact for short series, from chunk summaries (no point read) for long ones."""

from __future__ import annotations

import math
from pathlib import Path

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.journal.records import MAIN_RANK
from coordinator.journal.sketch import series_sketch
from coordinator.journal.store import LocalStore
from coordinator.transport import wire
from tests.aggregator.helpers import env, payload

RUN = "sketch-run"


def _store(tmp_path: Path, steps: int, per_batch: int) -> LocalStore:
    """One rank logging loss = step (rank 0) over ``steps`` steps, ``per_batch`` per batch."""
    a = Aggregator(AggregatorConfig(run_id=RUN, store_path=str(tmp_path / "run.db"), world_size=1))
    a.hello(env(wire.HELLO, 0, 1, 0, run=RUN), {}, 1.0)
    for seq, first in enumerate(range(0, steps, per_batch), start=1):
        pts = {s: float(s) for s in range(first, min(first + per_batch, steps))}
        a.batch(
            env(wire.BATCH, 0, 1, seq, run=RUN),
            payload(metrics={"loss": pts, "nan": dict.fromkeys(pts, math.nan)}),
            1.0,
        )
        a.commit()
    a.bye(env(wire.BYE, 0, 1, 0, run=RUN), {}, 2.0)
    a.finalize()
    return LocalStore(tmp_path / "run.db", readonly=True)


def test_short_series_bucket_means(tmp_path: Path) -> None:
    st = _store(tmp_path, 100, 10)
    try:
        got = series_sketch(st, "loss", points=100, buckets=4)
        assert got == [12.0, 37.0, 62.0, 87.0]  # steps 0-24, 25-49, ... averaged
        assert series_sketch(st, "loss", 0, points=100, buckets=200) == [float(s) for s in range(100)]
        assert series_sketch(st, "nan", points=100, buckets=4) == [None] * 4
        assert series_sketch(st, "missing", points=5) == []
        assert series_sketch(st, "loss", points=0) == []
    finally:
        st.close()


def test_long_series_read_only_the_summaries(tmp_path: Path) -> None:
    """Above ``exact_below`` no query reads a chunk's points: the shape comes from the summaries."""
    st = _store(tmp_path, 4000, 100)
    queries: list[str] = []
    st._db.set_trace_callback(queries.append)
    try:
        got = series_sketch(st, "loss", MAIN_RANK, points=4000, buckets=8, exact_below=1000)
        assert len(got) == 8
        exact = [sum(range(i * 500, (i + 1) * 500)) / 500 for i in range(8)]
        for g, e in zip(got, exact, strict=True):
            assert g is not None and abs(g - e) <= 50, (got, exact)  # within a chunk's width
        assert queries and not any("vals" in q for q in queries), queries
        assert series_sketch(st, "nan", points=4000, exact_below=1000) == [None] * 24
    finally:
        st._db.set_trace_callback(None)
        st.close()
