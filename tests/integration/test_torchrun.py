"""Real torchrun (gloo, CPU) jobs: every point exactly once, means right, parameters once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import ROOT, torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]


def _value(rank: int, step: int, k: int) -> float:
    return rank * 1_000_000 + step + k / 10


def test_four_ranks_every_point_once_mean_params_and_cross_rank_fetch(store_dir: Path, tmp_path: Path) -> None:
    """4 ranks x 10,000 points x 2 keys: each present once per rank, main = mean, params once, rank 3 reads rank 0."""
    out = tmp_path / "out"
    out.mkdir()
    n = 10_000
    torchrun("log_points.py", "--points", str(n), "--out", str(out), "--bad-input", store=store_dir).check()
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    run_id = results[0]["run_id"]
    assert {r["run_id"] for r in results} == {run_id}
    assert results[3]["token"] == "set-by-rank-0"
    assert all(r["lr"] == 0.01 for r in results)
    assert all(r["bad_rejected"] == 7 * 10 for r in results)
    assert all(r["stats"]["lost"] == 0 and r["stats"]["pending"] == 0 for r in results)

    [info] = list_runs(store_dir)
    assert info.id == run_id and info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for k, key in enumerate(("train/loss", "train/acc")):
            for rank in range(4):
                pts = s.values(key, rank)
                assert len(pts) == n, (key, rank, len(pts))
                assert [st for st, _ in pts] == list(range(n)), f"{key} rank {rank}: steps lost or doubled"
                assert all(v == _value(rank, st, k) for st, v in pts)
            main = s.values(key, MAIN_RANK)
            assert [st for st, _ in main] == list(range(n))
            for st, v in main:
                assert v == pytest.approx(sum(_value(r, st, k) for r in range(4)) / 4)
            assert {c for _, c in s.contributors(key)} == {4}
        fields = s.fields()
        assert fields["parameters/lr"] == ("float", 0.01)
        assert fields["parameters/layers"] == ("list", [64, 64])
        assert "parameters/bad" not in fields
        assert s.conflicts() == []
        rep = info.report
        assert rep is not None
        assert rep["points"] == 4 * 2 * n and rep["duplicate_batches"] == 0 and rep["bad_frames"] == 0
    finally:
        s.close()
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if run_id in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, "aggregator process left behind"


def test_example_ddp_train_runs_under_torchrun(store_dir: Path) -> None:
    """The README's example trains, logs every step and stores one finished run."""
    import os
    import subprocess
    import sys

    res = torchrun(str(ROOT / "examples" / "ddp_train.py"), store=store_dir)  # as the README runs it: 4 ranks
    res.check()
    assert "steps of the mean train/loss" in res.stdout
    [acc] = re.findall(r"final accuracy ([0-9.]+) on \d+ held-out samples \(4 ranks\)", res.stdout)
    assert float(acc) >= 0.85, res.stdout  # it visibly learns (chance is 0.5)
    [info] = list_runs(store_dir)
    assert info.state == "finished"
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        summary = {x["key"]: x for x in s.series_summary()}
        steps = s.fields()["summary/steps"][1]
        assert summary["train/loss"]["points"] == steps
        assert summary["train/loss"]["per_rank"] == {r: steps for r in range(4)}
    finally:
        s.close()
    show = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "show", "latest"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert show.returncode == 0, show.stderr
    assert "train/loss" in show.stdout and "finished" in show.stdout
