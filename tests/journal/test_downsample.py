"""The one downsampler: buckets against brute force, exact means, even grids, sparklines, the rank band,
and a 20-million-point series in bounded memory."""

from __future__ import annotations

import math
import random
import time
import tracemalloc
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.journal.downsample import MAX_BUCKETS, band, downsample, grid, series_sketch
from coordinator.journal.records import MAIN_RANK
from coordinator.journal.store import ChunkRow, LocalStore, TxnData, run_dir
from coordinator.transport import wire
from coordinator.ui.source import RunSource
from tests.aggregator.helpers import env, payload
from tests.ui._stores import brute, write_run


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    ("lo", "hi", "buckets"), [(0, 999, 50), (0, 999, 1000), (0, 999, 7), (123, 611, 40), (990, 2000, 9)]
)
@pytest.mark.parametrize("rank", [MAIN_RANK, 0, 2])
@pytest.mark.parametrize("read", ["boundaries", "all"])
def test_buckets_equal_brute_force(tmp_path: Path, lo: int, hi: int, buckets: int, rank: int, read: Any) -> None:
    write_run(tmp_path, "r1")
    with RunSource(tmp_path, "r1") as src:
        pts = src.reader.values("loss", rank)  # the series as fetch_values reads it (rewound steps resolved)
        s = src.series("loss", rank)
        assert s is not None
        got = downsample(s, lo, hi, buckets, read=read)
    width, count = grid(lo, hi, buckets)
    assert count <= buckets and (got.lo, got.width, len(got.n)) == (lo, width, count)
    assert got.starts.tolist() == [lo + width * i for i in range(count)]
    want = brute([p for p, _ in pts], [v for _, v in pts], lo, hi, width)
    assert got.points == sum(e[0] for e in want.values()) > 0
    for b in range(count):
        if b not in want:
            assert got.n[b] == 0
            continue
        n, mn, mx, first, last = want[b]
        assert got.n[b] == n, b
        for name, a, w in (
            ("min", got.min[b], mn),
            ("max", got.max[b], mx),
            ("first", got.first[b], first),
            ("last", got.last[b], last),
        ):
            assert _same(float(a), w), (b, name, a, w)
    if read == "all":  # every point read: the mean is exact
        assert got.exact_mean
        for b in range(count):
            real = [v for p, v in pts if lo <= p <= hi and (p - lo) // width == b and not math.isnan(v)]
            m = float(got.mean[b])
            assert (math.isnan(m) and not real) or m == pytest.approx(sum(real) / len(real)), b


FLOAT_STEP: Any = 10.0
BAD_READ: Any = "some"


def test_bad_grid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty step range"):
        grid(5, 4, 10)
    with pytest.raises(ValueError, match="buckets"):
        grid(0, 10, MAX_BUCKETS + 1)
    with pytest.raises(TypeError):
        grid(0, FLOAT_STEP, 10)
    write_run(tmp_path, "r1")
    with RunSource(tmp_path, "r1") as src:
        s = src.series("loss")
        assert s is not None
        with pytest.raises(ValueError, match="read must be one of"):
            downsample(s, 0, 10, 5, read=BAD_READ)
    with pytest.raises(ValueError, match="at least one"):
        band([])


def test_mean_per_bucket_with_pages_cut_anywhere_equals_brute_force(tmp_path: Path) -> None:
    """Sparse steps, NaN points, chunks of any size: min, max and (read="all") mean per bucket."""
    rng = random.Random(7)
    steps = sorted(rng.sample(range(0, 100_000), 20_000))
    values = [rng.uniform(-5, 5) if i % 97 else math.nan for i in range(len(steps))]
    s = LocalStore(run_dir(tmp_path, "m") / "run.db")
    try:
        s.create_run("m", "p", "m", 1, time.time())
        txn = TxnData(key_policies={"x": "mean"})
        for a in range(0, len(steps), 1234):  # chunks cut anywhere: buckets span chunks
            txn.chunks.append(
                ChunkRow("x", MAIN_RANK, 0, 0, 1.0, array("q", steps[a : a + 1234]), array("d", values[a : a + 1234]))
            )
        s.commit(txn)
    finally:
        s.close()
    with RunSource(tmp_path, "m") as src:
        series = src.series("x")
        assert series is not None
        got = downsample(series, 0, 99_999, 300, read="all")
    want: dict[int, list[float]] = {}
    for st, v in zip(steps, values, strict=True):
        if not math.isnan(v):
            want.setdefault(st // got.width, []).append(v)
    assert got.width == 334 and len(got.n) <= 300
    for b in range(len(got.n)):
        if b not in want:
            assert math.isnan(got.min[b]) and math.isnan(got.mean[b])
            continue
        assert got.min[b] == min(want[b]) and got.max[b] == max(want[b])
        assert got.mean[b] == pytest.approx(sum(want[b]) / len(want[b]))


def test_band_spans_the_ranks_per_bucket(tmp_path: Path) -> None:
    write_run(tmp_path, "r1")
    with RunSource(tmp_path, "r1") as src:
        parts = []
        for r in (0, 1, 2):
            s = src.series("loss", r)
            assert s is not None
            parts.append(downsample(s, 0, 999, 100))
        other = src.series("loss", 0)
        assert other is not None
        coarse = downsample(other, 0, 999, 10)
    lo, hi = band(parts)
    for b in range(100):
        assert _same(float(lo[b]), float(np.fmin.reduce([p.min[b] for p in parts])))
        assert _same(float(hi[b]), float(np.fmax.reduce([p.max[b] for p in parts])))
    with pytest.raises(ValueError, match="one grid"):
        band([parts[0], coarse])


def test_even_grid_has_exactly_the_buckets_asked_for(tmp_path: Path) -> None:
    """101 steps into 24 buckets: 24 near-equal ranges (a whole-step grid would make 21)."""
    write_run(tmp_path, "r1", steps=101)
    with RunSource(tmp_path, "r1") as src:
        s = src.series("loss")
        assert s is not None
        got = downsample(s, 0, 100, 24, read="all", even=True)
        whole = downsample(s, 0, 100, 24)
    assert len(got.n) == 24 and got.width == 0 and len(whole.n) == 21
    assert got.points == 101 and got.edges[0] == 0 and got.edges[-1] == 101
    assert all(4 <= e <= 5 for e in np.diff(got.edges).tolist())


# ------------------------------------------------------------------ sparklines (coordinator show)

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


def test_short_series_sketch_bucket_means(tmp_path: Path) -> None:
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


def test_long_series_sketch_reads_only_the_summaries(tmp_path: Path) -> None:
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
        odd = series_sketch(st, "loss", MAIN_RANK, points=4000, buckets=7, exact_below=1000)  # chunks cross buckets
        exact7 = [float(np.mean([s for s in range(4000) if s * 7 // 4000 == b])) for b in range(7)]
        for g, e in zip(odd, exact7, strict=True):
            assert g is not None and abs(g - e) <= 50, (odd, exact7)
        assert queries and not any("vals" in q for q in queries), queries
        assert series_sketch(st, "nan", points=4000, exact_below=1000) == [None] * 24
    finally:
        st._db.set_trace_callback(None)
        st.close()


# ------------------------------------------------------------------ 20 million points

N = 20_000_000
CHUNK = 16_384
MEMORY_BOUND = 32 * 2**20
"""Python allocations while downsampling 20M points (16 bytes each: 320 MB if it read them all at once)."""


def write_big(root: Path, run_id: str = "big", ranks: int = 0, n: int = N) -> None:
    """A run whose main series (and, with ``ranks``, each rank's series) holds ``n`` points, sin(step / 1e5)."""
    s = LocalStore(run_dir(root, run_id) / "run.db")
    try:
        s.create_run(run_id, "big", run_id, max(1, ranks), time.time())
        for rank in (MAIN_RANK, *range(ranks)):
            for lo in range(0, n, CHUNK * 64):
                txn = TxnData(key_policies={"loss": "mean"} if lo == 0 and rank == MAIN_RANK else {})
                for a in range(lo, min(n, lo + CHUNK * 64), CHUNK):
                    st = np.arange(a, min(n, a + CHUNK), dtype=np.int64)
                    steps, vals = array("q"), array("d")
                    steps.frombytes(st.tobytes())
                    vals.frombytes((np.sin(st / 1e5) + max(rank, 0)).tobytes())
                    txn.chunks.append(ChunkRow("loss", rank, 0 if rank < 0 else 1, 0, 1.0, steps, vals, None))
                s.commit(txn)
        s.finish_run("finished", {"points": n * (ranks + 1)})
    finally:
        s.close()


def test_twenty_million_points_downsample_in_bounded_memory(tmp_path: Path) -> None:
    t = time.perf_counter()
    write_big(tmp_path)
    print(f"\nwrote {N:,} points in {time.perf_counter() - t:.1f} s")
    with RunSource(tmp_path, "big") as src:
        s = src.series("loss")
        assert s is not None
        for lo, hi, buckets in ((0, N - 1, 1000), (0, N - 1, 1920), (5_000_000, 5_100_000, 1000)):
            tracemalloc.start()
            t = time.perf_counter()
            got = downsample(s, lo, hi, buckets)
            took = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"downsample [{lo}, {hi}] into {buckets} buckets: {took:.2f} s, peak {peak / 2**20:.1f} MiB")
            assert got.points == hi - lo + 1
            assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.1f} MiB"
            x = np.arange(lo, hi + 1, dtype=np.int64)  # the truth, for the first and last buckets
            for b in (0, len(got.n) - 1):
                sel = np.sin(x[(x - lo) // got.width == b] / 1e5)
                assert (got.min[b], got.max[b], got.first[b], got.last[b]) == (sel.min(), sel.max(), sel[0], sel[-1])
        tracemalloc.start()
        t = time.perf_counter()
        sketch = series_sketch(src.reader, "loss", points=N)
        took = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"sparkline of {N:,} points from summaries: {took:.2f} s, peak {peak / 2**20:.1f} MiB")
        assert len(sketch) == 24 and peak < MEMORY_BOUND
