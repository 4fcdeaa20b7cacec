"""Health snapshots: lags against the median rank over the newest steps every rank reached (a trimmed mean)."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import numpy as np
import pytest

from benchmarks.lag_grid import snapshots
from coordinator.aggregator.health import (
    _KEEP_STEPS,
    _LAG_STEPS,
    _RATE_WINDOW_S,
    _TRIM_EVERY,
    STRAGGLER_CLEAR_RATIO,
    Health,
    _column_trimmed_means,
)


def _trimmed_mean(vals: list[float]) -> float:
    """The mean of ``vals`` less its lowest and highest eighth (``len // 8`` each side), summed in sorted order."""
    v = sorted(vals)
    k = len(v) // 8
    mid = v[k : len(v) - k]
    return sum(mid) / len(mid)


def _reference(h: Health, now: float, ranks: set[int]) -> dict[int, dict[str, Any]]:
    """The snapshot computed the plain way (every kept step tested, one median per rank behind).

    Reads the samples :meth:`Health.snapshot` appended, so call it right after that snapshot.
    """
    active = {r: st for r, st in h.ranks.items() if r in ranks} or h.ranks
    fastest = max(st.last_step for st in active.values())
    complete = sorted(s for s, by in h.reached.items() if all(r in by for r in active))
    recent = complete[-_LAG_STEPS:]
    med = {s: statistics.median(h.reached[s][x] for x in active) for s in recent}
    out: dict[int, dict[str, Any]] = {}
    for rank, st in h.ranks.items():
        old = next(((t, s) for t, s in st.samples if now - t <= _RATE_WINDOW_S), (now, st.last_step))
        rate = (st.last_step - old[1]) / (now - old[0]) if now > old[0] else 0.0
        lags = [h.reached[s][rank] - med[s] for s in recent if rank in h.reached[s]]
        lag_s = _trimmed_mean(lags) if lags else 0.0
        if st.last_step < fastest and rank in active and h.reached.get(st.last_step + 1):
            lag_s = max(lag_s, now - statistics.median(h.reached[st.last_step + 1].values()) - h.behind_grace_s)
        out[rank] = {
            "last_step": st.last_step,
            "steps_per_s": round(rate, 3),
            "lag_steps": fastest - st.last_step if rank in active else None,
            "lag_s": round(max(0.0, lag_s), 4),
            "straggler": rank in active and len(active) > 1 and lag_s > h.straggler_lag_s,
            "clear": rank not in active or len(active) <= 1 or lag_s < h.straggler_lag_s * STRAGGLER_CLEAR_RATIO,
        }
    return out


@pytest.mark.parametrize(("world", "flush"), [(1, 0.05), (2, 0.05), (5, 0.05), (64, 0.05), (64, 0.4)])
def test_snapshot_matches_the_plain_computation(world: int, flush: float) -> None:
    """Ranks at different paces, some behind, some missing steps, some not counted: the same figures."""
    rnd = random.Random(world)
    h = Health(world, 0.05, flush)
    for s in range(3 * _LAG_STEPS):
        for r in range(world):
            if rnd.random() < 0.85:
                h.progress(r, s + (r % 3) * rnd.randint(0, 2), s * 0.02 + rnd.random() * 0.03 + r * 0.001)
    for now, ranks in ((10.0, set(range(world))), (10.5, set(range(0, world, 2))), (11.0, set())):
        got = h.snapshot(now, ranks)
        assert got == _reference(h, now, ranks)


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9, 16, 17, 64])
def test_column_trimmed_means_are_each_columns_mean_less_its_lowest_and_highest_eighth(rows: int) -> None:
    """Holes, all-NaN columns, ties, negatives, counts below and past a multiple of 8: each column's figure."""
    rnd = random.Random(rows)
    t = np.array([[rnd.choice([math.nan, 0.25, -1.5, rnd.uniform(-1, 1)]) for _ in range(40)] for _ in range(rows)])
    t[:, 0] = math.nan
    got = _column_trimmed_means(t).tolist()
    for j in range(t.shape[1]):
        vals = [x for x in t[:, j].tolist() if not math.isnan(x)]
        if vals:
            assert got[j] == pytest.approx(_trimmed_mean(vals), rel=1e-12, abs=1e-15), (j, vals)
        else:
            assert math.isnan(got[j]), j
    counts = {int(np.count_nonzero(~np.isnan(t[:, j]))) for j in range(40)}
    assert rows < 8 or any(c >= 8 for c in counts)  # some column had values trimmed


def test_a_few_slow_steps_do_not_make_a_rank_lag() -> None:
    """Rank 1 paused for 2 s at 7 of the last 64 steps (a checkpoint, a collection): under an eighth, no lag."""
    h = Health(3, 0.05)
    for s in range(_LAG_STEPS):
        for r in range(3):
            h.progress(r, s, s * 0.1 + (2.0 if r == 1 and s % 9 == 4 else 0.0))
    snap = h.snapshot(_LAG_STEPS * 0.1 + 2.5, {0, 1, 2})
    assert sum(1 for s in range(_LAG_STEPS) if s % 9 == 4) == 7
    assert snap[1]["lag_s"] == 0.0 and not snap[1]["straggler"]


@pytest.mark.parametrize(("lag", "straggler"), [(0.01, False), (0.03, False), (0.04, False), (0.08, True), (0.2, True)])
def test_a_ranks_lag_measured_through_the_flush_grid_is_its_true_lag(lag: float, straggler: bool) -> None:
    """Four ranks at 50 steps/s whose steps arrive on a 50 ms flush grid, rank 3 ``lag`` s behind
    (``benchmarks.lag_grid``): its median lag over the snapshots is within 8 ms of the true one, and
    it is a straggler in every snapshot or in none.

    The median over steps (before round 26) put a rank 30 or 40 ms behind at ~49 ms (a hair from
    the 50 ms threshold; the ranks' jitter decided it) and one 80 ms behind at ~99 ms.
    """
    snaps = snapshots(lag, 50.0, 0.05, seed=int(lag * 1000))
    lags = sorted(s[3]["lag_s"] for s in snaps)
    assert abs(lags[len(lags) // 2] - lag) < 0.008, (lag, lags[len(lags) // 2])
    assert {s[3]["straggler"] for s in snaps} == {straggler}
    assert not any(s[r]["straggler"] for s in snaps for r in (0, 1, 2))


def test_the_lag_is_taken_over_the_newest_complete_steps_only() -> None:
    """Rank 1 was late long ago and is on time over the last _LAG_STEPS steps: no lag now."""
    h = Health(2, 0.5)
    n = 4 * _LAG_STEPS
    for s in range(n):
        late = 5.0 if s < n - _LAG_STEPS else 0.0
        h.progress(0, s, float(s))
        h.progress(1, s, float(s) + late)
    snap = h.snapshot(float(n), {0, 1})
    assert snap[1]["lag_s"] == 0.0 and not snap[1]["straggler"]


def test_ranks_behind_in_steps_lag_by_the_time_since_the_median_rank_reached_their_next_step() -> None:
    h = Health(5, 1.0, 0.05)
    for s in range(10):
        for r in range(5):
            h.progress(r, s, float(s))
    for r in (2, 3, 4):  # three ranks reach step 10 at 10, 11, 12; ranks 0 and 1 never do
        h.progress(r, 10, 8.0 + r)
    snap = h.snapshot(20.0, {0, 1, 2, 3, 4})
    for r in (0, 1):  # 9 s since the median rank reached step 10, less the 50 ms flush interval
        assert snap[r]["lag_steps"] == 1 and snap[r]["lag_s"] == 8.95 and snap[r]["straggler"]
    assert all(snap[r]["lag_s"] == 0.0 for r in (2, 3, 4))


def test_the_kept_steps_stay_within_their_bound_and_are_the_newest() -> None:
    """Thousands of steps from 3 ranks, one behind: at most _KEEP_STEPS + _TRIM_EVERY steps kept, the newest."""
    h = Health(3, 0.5)
    sizes = []
    for s in range(5000):
        for r in range(3):
            h.progress(r, s - (40 if r == 2 else 0), s * 0.01)
        sizes.append(len(h.reached))
    assert max(sizes) == _KEEP_STEPS + _TRIM_EVERY
    assert min(sizes[1000:]) == _KEEP_STEPS
    assert sorted(h.reached) == list(range(5000 - len(h.reached), 5000))
    assert h.reached[4999] == {0: 49.99, 1: 49.99}


def test_a_rank_one_step_behind_for_less_than_a_flush_interval_is_not_a_straggler() -> None:
    """A rank whose step is still in its buffer is not behind; past the interval it is, at any interval.

    Ranks 0-2 reached step 10 at 10.0 s; ranks 3 and 4 have not flushed it yet. Their time behind
    counts from one interval after the median rank reached the step: at 400 ms flushes 0.3 s
    later they lag 0, 0.5 s later 0.1 s: stragglers. At 50 ms flushes, 0.064 s later (seen in a
    lockstep DDP job: the step logged just after a flush) they lag 0.014 s, not stragglers; 0.3 s
    later 0.25 s, stragglers.
    """
    for flush, after, lag in ((0.4, 0.3, 0.0), (0.4, 0.5, 0.1), (0.05, 0.064, 0.014), (0.05, 0.3, 0.25)):
        h = Health(5, 0.05, flush)
        for s in range(10):
            for r in range(5):
                h.progress(r, s, float(s))
        for r in (0, 1, 2):
            h.progress(r, 10, 10.0)
        snap = h.snapshot(10.0 + after, set(range(5)))
        for r in (3, 4):
            assert snap[r]["lag_steps"] == 1 and snap[r]["lag_s"] == pytest.approx(lag), (flush, after)
            assert snap[r]["straggler"] == (lag > 0.05)
