"""Elastic restart under real torchrun: a new incarnation resumes from a checkpoint and replaces stale steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]


def test_max_restarts_resume_from_checkpoint_replaces_stale_steps(store_dir: Path, tmp_path: Path) -> None:
    """Rank 1 crashes at step 130; torchrun restarts all 4 ranks from the step-100 checkpoint; no duplicates."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    res = torchrun(
        "elastic.py", "--ckpt", str(ckpt), store=store_dir, torchrun_args=("--max-restarts", "1"), timeout=300
    )
    res.check()
    runs = list_runs(store_dir)
    assert len(runs) == 1, [r.id for r in runs]
    [info] = runs
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for r in range(4):
            pts = s.values("loss", r)
            assert [st for st, _ in pts] == list(range(200)), f"rank {r}: duplicated or missing steps"
            for st, v in pts:
                assert v == r * 1_000_000 + st + (0.5 if st >= 100 else 0.0), (r, st, v)
        main = s.values("loss", MAIN_RANK)
        assert [st for st, _ in main] == list(range(200))
        for st, v in main:
            assert v == pytest.approx(1_500_000 + st + (0.5 if st >= 100 else 0.0)), (st, v)
        kinds = [k for _, k, _, _ in s.events()]
        assert kinds.count("rank_restarted") == 4
        assert "rank_resumed" in kinds
        assert s.run_info().state == "finished", s.run_info().report
    finally:
        s.close()
