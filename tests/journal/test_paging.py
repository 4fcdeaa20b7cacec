"""Paged reads of a series: every page in step order, the pages together exactly the series, summaries exact."""

from __future__ import annotations

import math
import random
from array import array
from pathlib import Path

import pytest

from coordinator.core.incarnations import resolve, start_order
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from tests.untyped import bad


def _reference(chunks: list[ChunkRow], rank: int) -> list[tuple[int, float]]:
    """The series by the rule, computed the slow way over every point."""
    mine = [c for c in chunks if c.rank == rank]
    if rank == MAIN_RANK:
        latest: dict[int, float] = {}
        for c in mine:
            latest.update(zip(c.steps, c.values, strict=True))
        return sorted(latest.items())
    by_inc: dict[int, list[tuple[int, float]]] = {}
    started: dict[int, float] = {}
    for c in mine:
        by_inc.setdefault(c.incarnation, []).extend(zip(c.steps, c.values, strict=True))
        started[c.incarnation] = min(c.ts, started.get(c.incarnation, c.ts))
    pts = resolve([by_inc[i] for i in start_order(started)])
    return sorted(dict(pts).items())


def _random_chunks(rng: random.Random) -> list[ChunkRow]:
    chunks: list[ChunkRow] = []
    step = {0: 0, 1: 0}
    for i in range(rng.randint(1, 40)):
        rank = rng.choice([MAIN_RANK, 0, 1])
        inc = rng.choice([1, 2, 3]) if rank >= 0 else 0
        n = rng.randint(0, 30)
        kind = rng.random()
        if kind < 0.6:  # in order, continuing
            start = step.get(rank, 0)
            steps = list(range(start, start + n))
            step[rank] = start + n
        elif kind < 0.8:  # a rewind / resume from an earlier step
            start = rng.randint(0, max(0, step.get(rank, 0)))
            steps = list(range(start, start + n))
        else:  # anything: repeats, out of order
            steps = [rng.randint(0, 60) for _ in range(n)]
        vals = [rng.choice([rng.uniform(-5, 5), math.inf, -1.0]) for _ in steps]
        chunks.append(ChunkRow("k", rank, inc, i + 1, float(inc * 10 + i), array("q", steps), array("d", vals)))
    return chunks


@pytest.mark.parametrize("seed", range(40))
def test_pages_concatenate_to_the_series_the_rule_defines(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    chunks = _random_chunks(rng)
    s = LocalStore(tmp_path / "run.db")
    try:
        for c in chunks:
            s.commit(TxnData(chunks=[c], key_policies={"k": "mean"}))
        for rank in (MAIN_RANK, 0, 1):
            want = _reference(chunks, rank)
            assert s.values("k", rank) == want
            limit = rng.randint(1, 7)
            got: list[tuple[int, float]] = []
            after, pages = -1, 0
            while True:
                page = s.values_page("k", rank, after, limit)
                assert len(page.steps) <= limit and list(page.steps) == sorted(set(page.steps))
                got.extend(zip(page.steps, page.values, strict=True))
                pages += 1
                if page.next is None:
                    break
                assert page.next == page.steps[-1]
                after = page.next
            assert got == want and pages <= len(want) // limit + 2
            stats = s.series_stats("k", rank)
            assert stats.points == len(want)
            assert stats.first == (want[0] if want else None) and stats.last == (want[-1] if want else None)
            assert stats.min == (min(v for _, v in want) if want else None)
            assert stats.max == (max(v for _, v in want) if want else None)
            assert s.last_point("k", rank) == (want[-1] if want else None)
            mid = want[len(want) // 2][0] if want else 0
            assert list(zip(*s.values_page("k", rank, mid, 5)[:2], strict=True)) == [p for p in want if p[0] > mid][:5]
    finally:
        s.close()


def test_page_arguments_are_checked(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "run.db")
    try:
        assert s.values_page("nothing", 0) == (array("q"), array("d"), None)
        with pytest.raises(ValueError, match="limit"):
            s.values_page("k", 0, -1, 0)
        with pytest.raises(ValueError, match="limit"):
            s.values_page("k", 0, -1, 1_000_001)
        with pytest.raises(TypeError):
            s.values_page("k", 0, bad("0"), 10)
    finally:
        s.close()


def test_nan_values_are_kept_and_left_out_of_min_and_max(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "run.db")
    try:
        vals = array("d", [math.nan, 2.0, math.nan, -3.0, math.nan])
        s.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 1, 1.0, array("q", range(5)), vals)], key_policies={"k": "mean"}))
        page = s.values_page("k", 0)
        assert [math.isnan(v) for v in page.values] == [True, False, True, False, True]
        st = s.series_stats("k", 0)
        assert st.first is not None and st.last is not None
        assert (st.points, st.min, st.max, st.first[0], st.last[0]) == (5, -3.0, 2.0, 0, 4)
        assert math.isnan(st.first[1]) and math.isnan(st.last[1])
    finally:
        s.close()


def test_last_steps_of_a_resumed_rank_follow_its_newest_incarnation(tmp_path: Path) -> None:
    """A later incarnation that re-logs from step 50 replaces the earlier 50..99: the last step is its own."""
    s = LocalStore(tmp_path / "run.db")

    def q(a: int, b: int) -> array[int]:
        return array("q", range(a, b))

    def d(a: int, b: int) -> array[float]:
        return array("d", map(float, range(a, b)))

    try:
        s.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 1, 1.0, q(0, 100), d(0, 100))], key_policies={"k": "mean"}))
        s.commit(TxnData(chunks=[ChunkRow("k", 0, 2, 1, 2.0, q(50, 60), d(50, 60))]))
        s.commit(TxnData(chunks=[ChunkRow("j", 0, 2, 2, 2.0, q(0, 3), d(0, 3))], key_policies={"j": "mean"}))
        assert s.last_steps(0) == {"k": 59, "j": 2}
        assert s.series_stats("k", 0).points == 60 and s.last_steps(1) == {}
    finally:
        s.close()
