"""Hugging Face ``Trainer`` under real torchrun (2 processes, gloo, CPU) with ``CoordinatorCallback``.

The worker (``workers/hf_trainer.py``) trains a tiny model defined in code on random data:
nothing is downloaded (``HF_HUB_OFFLINE=1``, ``report_to="none"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import ROOT, Result, torchrun

pytest.importorskip("transformers")

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

STEPS = 6
RANKS = 2
_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _user_value(rank: int, step: int) -> float:
    return rank * 100.0 + step * 0.5  # as workers/hf_trainer.py's user_value


def _run(store_dir: Path, out: Path, *args: str) -> Result:
    out.mkdir()
    return torchrun(
        "hf_trainer.py", "--out", str(out), "--steps", str(STEPS), *args,
        nproc=RANKS, store=store_dir, timeout=240, extra_env=_ENV,
    )  # fmt: skip


def _no_aggregator_left(run_id: str) -> None:
    left = [p for p in psutil.process_iter(["cmdline"]) if run_id in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes of run {run_id} left behind: {[p.info['cmdline'] for p in left]}"


def test_trainer_on_two_ranks_every_point_once_user_mean_hparams_eval_after_train(
    store_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _run(store_dir, out).check()
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    run_id = results[0]["run_id"]
    assert {r["run_id"] for r in results} == {run_id}, "every process must log to one run"

    [info] = list_runs(store_dir)
    assert info.id == run_id
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        ri = s.run_info()
        assert ri.state == "finished", ri.report
        steps = list(range(1, STEPS + 1))

        # The user's rank-dependent metric: every point once per rank, main series = mean of the ranks.
        for rank in range(RANKS):
            pts = s.values("user/rank_value", rank)
            assert [st for st, _ in pts] == steps, f"rank {rank}: steps lost or doubled"
            assert [v for _, v in pts] == [_user_value(rank, st) for st in steps]
        main = s.values("user/rank_value", MAIN_RANK)
        assert [st for st, _ in main] == steps
        for st, v in main:
            assert v == pytest.approx(sum(_user_value(r, st) for r in range(RANKS)) / RANKS)
        assert {c for _, c in s.contributors("user/rank_value")} == {RANKS}

        # The Trainer's own series: logged on every process at global_step; the loss is all-gathered,
        # so the ranks' series are equal, and so is the main series.
        for key in ("train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"):
            per_rank = [s.values(key, r) for r in range(RANKS)]
            assert [st for st, _ in per_rank[0]] == steps, (key, per_rank[0])
            assert all(p == per_rank[0] for p in per_rank), (key, per_rank)
            assert [v for _, v in s.values(key, MAIN_RANK)] == pytest.approx([v for _, v in per_rank[0]])
        assert s.values("train/learning_rate", 0)[0] == (1, pytest.approx(0.01))

        # evaluate() and predict() after train() still log, at the last global step, on every rank.
        for key, result_key in (("eval/loss", "eval_loss"), ("test/loss", "test_loss")):
            for r in range(RANKS):
                assert s.values(key, r) == [(STEPS, pytest.approx(results[r][result_key]))], key
            assert len(s.values(key, MAIN_RANK)) == 1
        assert s.values("eval/runtime", 0) and s.values("eval/runtime", 1)

        fields = s.fields()
        assert fields["hparams/learning_rate"] == ("float", 0.01)
        assert fields["hparams/max_steps"] == ("int", STEPS)
        assert fields["hparams/per_device_train_batch_size"] == ("int", 4)
        assert fields["hparams/model/width"] == ("int", 8)
        assert fields["hparams/model/model_type"] == ("str", "coordinator-tiny")
        assert not any("hub_token" in p for p in fields), "a token was recorded"
        assert "hparams/local_rank" not in fields  # per-process: would be a conflict
        assert not any("hf_not_to_be_stored" in repr(v) for v in fields.values())
        for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"):
            assert f"summary/{key}" in fields, key
            assert not s.values(f"train/{key}", 0), f"{key} is a summary field, not a series"
        assert s.conflicts() == [], "every process wrote the same hyperparameters: no conflict"

        rep = ri.report
        assert rep is not None
        assert rep["duplicate_batches"] == 0 and rep["replaced_points"] == 0 and rep["late_points"] == 0
        assert all(rep["per_rank"][str(r)]["lost_points"] == 0 for r in range(RANKS))
    finally:
        s.close()
    _no_aggregator_left(run_id)


def test_training_step_raising_on_rank_1_fails_the_run_naming_rank_1_and_the_message(
    store_dir: Path, tmp_path: Path
) -> None:
    res = _run(store_dir, tmp_path / "out", "--fail-rank", "1", "--fail-at", "3")
    assert res.returncode != 0, "torchrun must report the failed worker"
    assert "injected failure on rank 1" in res.stderr
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        ri = s.run_info()
        assert ri.state == "failed", ri.report
        rep = ri.report
        assert rep is not None
        assert rep["failed_ranks"]["1"] == "RuntimeError: injected failure on rank 1 at forward call 3"
        # What was logged before the failure (steps 1 and 2) is stored once per rank.
        for rank in range(RANKS):
            assert [st for st, _ in s.values("user/rank_value", rank)] == [1, 2]
            assert [st for st, _ in s.values("train/loss", rank)] == [1, 2]
        assert s.fields()["hparams/learning_rate"] == ("float", 0.01)
    finally:
        s.close()
    _no_aggregator_left(info.id)


def test_example_hf_trainer_runs_under_torchrun(store_dir: Path, tmp_path: Path) -> None:
    """examples/hf_trainer.py trains, logs every rank's own loss, and stores one finished run."""
    steps = 20
    res = torchrun(
        str(ROOT / "examples" / "hf_trainer.py"), "--max-steps", str(steps), "--output-dir", str(tmp_path / "hf"),
        nproc=RANKS, store=store_dir, timeout=240, extra_env=_ENV,
    )  # fmt: skip
    res.check()
    assert "eval/loss" in res.stdout and "coordinator show" in res.stdout
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.run_info().state == "finished"
        per_rank = [dict(s.values("local/loss", r)) for r in range(RANKS)]
        assert all(sorted(p) == list(range(1, steps + 1)) for p in per_rank)
        for st, v in s.values("local/loss", MAIN_RANK):
            assert v == pytest.approx(sum(p[st] for p in per_rank) / RANKS)
        assert [st for st, _ in s.values("train/loss", MAIN_RANK)] == [10, 20]
        assert len(s.values("eval/loss", MAIN_RANK)) == 1
        assert s.fields()["hparams/model/hidden"] == ("int", 64)
    finally:
        s.close()
    _no_aggregator_left(info.id)
