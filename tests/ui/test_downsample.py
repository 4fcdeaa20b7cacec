"""Downsampling against brute force, and a 20-million-point series in bounded memory."""

from __future__ import annotations

import math
import time
import tracemalloc
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData, run_dir
from coordinator.ui.downsample import MAX_BUCKETS, downsample, grid
from coordinator.ui.source import RunSource
from tests.ui._stores import brute, write_run


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    ("lo", "hi", "buckets"), [(0, 999, 50), (0, 999, 1000), (0, 999, 7), (123, 611, 40), (990, 2000, 9)]
)
@pytest.mark.parametrize("rank", [MAIN_RANK, 0, 2])
def test_buckets_equal_brute_force(tmp_path: Path, lo: int, hi: int, buckets: int, rank: int) -> None:
    write_run(tmp_path, "r1")
    with RunSource(tmp_path, "r1") as src:
        pts = src.reader.values("loss", rank)  # the series as fetch_values reads it (rewound steps resolved)
        s = src.series("loss", rank)
        assert s is not None
        got = downsample(s, lo, hi, buckets)
    width, count = grid(lo, hi, buckets)
    assert count <= buckets and (got.lo, got.width, len(got.n)) == (lo, width, count)
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


FLOAT_STEP: Any = 10.0


def test_bad_grid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="empty step range"):
        grid(5, 4, 10)
    with pytest.raises(ValueError, match="buckets"):
        grid(0, 10, MAX_BUCKETS + 1)
    with pytest.raises(TypeError):
        grid(0, FLOAT_STEP, 10)


N = 20_000_000
CHUNK = 16_384
MEMORY_BOUND = 32 * 2**20
"""Python allocations while downsampling 20M points (16 bytes each: 320 MB if it read them all at once)."""


def _write_big(root: Path) -> None:
    s = LocalStore(run_dir(root, "big") / "run.db")
    try:
        s.create_run("big", "big", "big", 1, time.time())
        for lo in range(0, N, CHUNK * 64):
            txn = TxnData(key_policies={"loss": "mean"} if lo == 0 else {})
            for a in range(lo, min(N, lo + CHUNK * 64), CHUNK):
                st = np.arange(a, min(N, a + CHUNK), dtype=np.int64)
                steps, vals = array("q"), array("d")
                steps.frombytes(st.tobytes())
                vals.frombytes(np.sin(st / 1e5).tobytes())
                txn.chunks.append(ChunkRow("loss", MAIN_RANK, 0, 0, 1.0, steps, vals, None))
            s.commit(txn)
        s.finish_run("finished", {"points": N})
    finally:
        s.close()


def test_twenty_million_points_downsample_in_bounded_memory(tmp_path: Path) -> None:
    t = time.perf_counter()
    _write_big(tmp_path)
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
