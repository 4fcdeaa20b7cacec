"""Frames end to end under real torchrun: dicts at explicit steps as wire blocks, every point stored exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.journal.records import RunInfo
from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import torchrun
from tests.integration.workers.frame_rank import KEYS, TEXT_KEY, text, texts_at, value

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]


def test_framed_dicts_with_per_key_calls_mixed_in_are_stored_exactly_once_in_call_order(store_dir: Path) -> None:
    """4 ranks x 12 keys x 400 steps, batches of at most 50 points (frames split by rows), a spill every 7 steps."""
    n = 400
    torchrun(
        "frame_rank.py", "--steps", str(n), store=store_dir, extra_env={"COORDINATOR_MAX_BATCH_POINTS": "50"}
    ).check()
    info, s = _finished(store_dir)
    try:
        got = _rank_points(s)
        for rank in range(4):
            _assert_in_call_order(got, rank, n)
        assert len(got) == 4 * len(KEYS)
        for j, key in enumerate(KEYS):
            contributors = dict(s.contributors(key))
            assert all(contributors[2 * st] == 4 for st in range(n))
            main = dict(s.values(key, MAIN_RANK))
            assert main[2 * (n - 1)] == pytest.approx(1_500_000 + 2 * (n - 1) + j / 100)
        assert info.report is not None and info.report["late_points"] == 0
    finally:
        s.close()


def test_texts_and_framed_dicts_logged_while_the_sender_cuts_are_stored_exactly_once(store_dir: Path) -> None:
    """2 ranks: the frames job plus a text every third step, cut every 5 ms, so the training thread
    keeps opening frames and text series while the sender encodes the generation before."""
    n = 400
    env = {"COORDINATOR_MAX_BATCH_POINTS": "50", "COORDINATOR_FLUSH_INTERVAL_S": "0.005"}
    torchrun("frame_rank.py", "--steps", str(n), "--texts", nproc=2, store=store_dir, extra_env=env).check()
    _, s = _finished(store_dir)
    try:
        got = _rank_points(s)
        for rank in range(2):
            _assert_in_call_order(got, rank, n)
            assert list(s.texts(TEXT_KEY, rank)) == [(st, text(rank, st)) for st in texts_at(n)], rank
        assert len(got) == 2 * len(KEYS)
    finally:
        s.close()


def _finished(store_dir: Path) -> tuple[RunInfo, LocalStore]:
    """The store's one run, checked finished, and its journal opened read-only."""
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    return info, LocalStore(info.path / "run.db", readonly=True)


def _rank_points(s: LocalStore) -> dict[tuple[int, str], list[tuple[int, float]]]:
    """Every rank's stored (step, value) pairs per key, in journal order."""
    got: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for c in s.chunks_after(0, 1 << 30):
        if c.rank != MAIN_RANK:
            got.setdefault((c.rank, c.key), []).extend(zip(c.steps, c.values, strict=True))
    return got


def _assert_in_call_order(got: dict[tuple[int, str], list[tuple[int, float]]], rank: int, n: int) -> None:
    """``rank`` logged by ``frame_rank.py``: each key's points once, in call order (spills included)."""
    for j, key in enumerate(KEYS):
        want = []
        for st in range(n):
            want.append((2 * st, value(rank, 2 * st, j)))
            if j == 0 and st % 7 == 3:
                want.append((2 * st + 1, value(rank, 2 * st + 1, 0)))
        assert got[(rank, key)] == want, (rank, key)
