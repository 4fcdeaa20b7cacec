"""Cross-rank semantics under real torchrun: different keys and rates per rank, stragglers, a dead rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]


@pytest.mark.parametrize("rings", ["0", "1"], ids=["socket", "rings"])
def test_different_keys_and_rates_per_rank_give_correct_groups_and_the_slow_rank_is_the_straggler(
    store_dir: Path, tmp_path: Path, rings: str
) -> None:
    """eval/* from rank 0 only, train/lr from 2 ranks every 5 steps, a rank-3-only key; rank 2 sleeps each step.

    With ``Settings.rings`` too: rank 2 logs 80 ms after the others, well inside one drain of the rings."""
    out = tmp_path / "out"
    out.mkdir()
    n = 60
    torchrun(
        "health.py", "--steps", str(n), "--out", str(out), store=store_dir, extra_env={"COORDINATOR_RINGS": rings}
    ).check()
    health = json.loads((out / "health.json").read_text())
    assert health["stragglers"] == [2], health
    assert health["last_step"] == {str(r): n - 1 for r in range(4)}
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.contributors("train/loss") == [(st, 4) for st in range(n)]
        main = s.values("train/loss", MAIN_RANK)
        assert main == [(st, pytest.approx(1.5 + st / 100)) for st in range(n)]
        assert s.contributors("eval/acc") == [(st, 1) for st in range(0, n, 10)]
        assert s.values("eval/acc", MAIN_RANK) == [(st, st / 100) for st in range(0, n, 10)]
        assert s.contributors("train/lr") == [(st, 2) for st in range(0, n, 5)]
        assert s.values("train/lr", MAIN_RANK) == [(st, pytest.approx(0.15)) for st in range(0, n, 5)]
        assert s.contributors("rank3/only") == [(st, 1) for st in range(n)]
        rep = info.report
        assert rep is not None
        assert rep["late_points"] == 0
        assert (rep["ring_points"] > 0) == (rings == "1")
        assert rep["stragglers_seen"] == [2]
        assert "straggler" in [k for _, k, _, _ in s.events()]
    finally:
        s.close()


def test_rank_dying_midrun_is_reported_and_the_rest_is_stored(store_dir: Path, tmp_path: Path) -> None:
    """Rank 1 exits at step 30 without closing: the run is failed naming rank 1; its acked points are there."""
    out = tmp_path / "out"
    out.mkdir()
    res = torchrun(
        "health.py",
        "--steps",
        "60",
        "--slow-s",
        "0",
        "--die-rank",
        "1",
        "--die-at",
        "30",
        "--out",
        str(out),
        store=store_dir,
    )
    assert res.returncode != 0
    [info] = list_runs(store_dir)
    assert info.state == "failed"
    assert info.report is not None
    assert any("rank 1" in r for r in info.report["reasons"]), info.report["reasons"]
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        steps = [st for st, _ in s.values("train/loss", 1)]
        assert steps == list(range(31))
        lost = [d for _, k, r, d in s.events() if k == "rank_lost" and r == 1]
        assert lost and "last step 30" in lost[0]
    finally:
        s.close()
