"""The health-snapshot micro-benchmark times snapshots it checks."""

from __future__ import annotations

from benchmarks.health_snapshot import build, measure


def test_each_repeat_is_timed_and_checked() -> None:
    t = measure(16, 3)
    assert len(t) == 3 and all(x > 0 for x in t)


def test_some_ranks_are_left_behind_and_rank_0_is_not() -> None:
    h, behind = build(32)
    assert behind and 0 not in behind and len(behind) < 32
    assert all(h.last_step(r) == h.last_step(0) - 3 for r in behind)
