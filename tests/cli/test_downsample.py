"""Min/max per pixel column against brute force, fed page by page."""

from __future__ import annotations

import math
import random
from array import array

import pytest

from coordinator.cli.downsample import Columns, ema

np = pytest.importorskip("numpy")


def test_columns_equal_brute_force_min_max_mean_per_bucket() -> None:
    rng = random.Random(7)
    steps = sorted(rng.sample(range(0, 100_000), 20_000))
    values = [rng.uniform(-5, 5) if i % 97 else math.nan for i in range(len(steps))]
    cols = Columns(0, 99_999, 300)
    for lo in range(0, len(steps), 1234):  # pages cut anywhere, buckets spanning pages
        cols.add(array("q", steps[lo : lo + 1234]), array("d", values[lo : lo + 1234]))
    got = cols.reduced()
    want: dict[int, list[float]] = {}
    for s, v in zip(steps, values, strict=True):
        if not math.isnan(v):
            want.setdefault(s // cols.bucket, []).append(v)
    assert cols.bucket == 334 and len(got.x) == len(want) <= 300
    for i, b in enumerate(sorted(want)):
        assert got.x[i] == b * cols.bucket
        assert got.min[i] == min(want[b]) and got.max[i] == max(want[b])
        assert got.mean[i] == pytest.approx(sum(want[b]) / len(want[b]))
    x, y = got.envelope()
    assert len(x) == len(y) == 2 * len(got.x)


def test_a_short_range_is_kept_exactly_and_the_band_spans_the_parts() -> None:
    a, b = Columns(0, 9, 100), Columns(0, 9, 100)
    a.add(array("q", range(10)), array("d", [float(s) for s in range(10)]))
    b.add(array("q", range(0, 10, 2)), array("d", [s + 3.0 for s in range(0, 10, 2)]))
    ra = a.reduced()
    assert ra.exact and ra.x.tolist() == list(range(10)) and ra.envelope()[1].tolist() == [float(s) for s in range(10)]
    band = Columns.band([a, b])
    assert band is not None
    assert band.min.tolist() == [float(s) for s in range(10)]
    assert band.max.tolist() == [s + 3.0 if s % 2 == 0 else float(s) for s in range(10)]
    a.add(array("q", [-5, 50]), array("d", [1e9, 1e9]))  # outside the range: ignored
    assert a.reduced().max.max() == 9.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Columns(5, 4, 10)
    with pytest.raises(ValueError):
        Columns(0, 4, 0)
    with pytest.raises(ValueError):
        ema(np.zeros(3), 1.0)
    assert ema(np.array([2.0, 2.0, 2.0]), 0.9).tolist() == pytest.approx([2.0, 2.0, 2.0])  # debiased
