"""Accelerate (real, CPU, gloo): CoordinatorTracker logs on every process into one run.

Jobs are started by ``accelerate launch --multi_gpu --num_processes 2`` (its torchrun-based
launcher; the script asks for ``Accelerator(cpu=True)``, so on this CPU-only machine it runs
``MULTI_CPU`` with gloo. ``--cpu`` alone would start a single process unless given an mpirun
hostfile). Offline: ``HF_HUB_OFFLINE=1`` and a private ``HF_HOME`` (no user accelerate config).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import ROOT, WORKERS, Result

pytest.importorskip("accelerate")
pytest.importorskip("torch")

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

PROCS = 2
STEPS = 12


def _env(store: Path, tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        COORDINATOR_DIR=str(store),
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf-home"),
        ACCELERATE_DISABLE_RICH="1",
    )


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> Result:
    """Run ``cmd`` in its own session; on a hang kill the whole job (workers and aggregator) and fail."""
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        pytest.fail(f"{cmd[2:4]} hung for {timeout} s:\n{out}\n{err[-6000:]}")
    return Result(p.returncode, out, err)


def accelerate_launch(script: Path, *args: str, store: Path, tmp: Path) -> Result:
    """``accelerate launch`` ``script`` on ``PROCS`` CPU processes, every option given (no config file)."""
    store.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={PROCS}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_port=0",  # a free port
        str(script),
        *args,
    ]
    return _run(cmd, _env(store, tmp), cwd=store.parent)


def _no_aggregator_left(run_id: str) -> None:
    left = [p for p in psutil.process_iter(["cmdline"]) if run_id in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def test_two_processes_every_point_once_mean_hparams_finished(store_dir: Path, tmp_path: Path) -> None:
    """accelerator.log on both processes: each point once per rank, main = mean, hparams, finished."""
    out = tmp_path / "out"
    out.mkdir()
    accelerate_launch(
        WORKERS / "accelerate_train.py", "--out", str(out), "--steps", str(STEPS), store=store_dir, tmp=tmp_path
    ).check()
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(PROCS)]
    run_id = results[0]["run_id"]
    assert {r["run_id"] for r in results} == {run_id}
    assert all(r["get_tracker_is_ours"] and r["unwrap_is_run"] for r in results), results
    assert all(len(r["losses"]) == STEPS for r in results)

    [info] = list_runs(store_dir)
    assert info.id == run_id and info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for rank in range(PROCS):
            assert s.values("train/rank_metric", rank) == [(st, float(rank + st)) for st in range(STEPS)]
            assert s.values("train/loss", rank) == list(enumerate(results[rank]["losses"]))
        assert s.values("train/rank_metric", MAIN_RANK) == [
            (st, sum(r + st for r in range(PROCS)) / PROCS) for st in range(STEPS)
        ]
        main_loss = s.values("train/loss", MAIN_RANK)
        assert [st for st, _ in main_loss] == list(range(STEPS))
        for st, v in main_loss:
            assert v == pytest.approx(sum(r["losses"][st] for r in results) / PROCS)
        assert {c for _, c in s.contributors("train/rank_metric")} == {PROCS}
        keys = {x["key"] for x in s.series_summary()}
        assert keys == {"train/rank_metric", "train/loss"}, "the string train/phase must be skipped"
        fields = s.fields()
        assert fields["hparams/lr"] == ("float", 0.05)
        assert fields["hparams/batch_size"] == ("int", 8)
        assert fields["hparams/model/hidden"] == ("int", 8)
        assert fields["hparams/model/act"] == ("str", "relu")
        assert fields["hparams/layers"] == ("list", [4, 8, 1])
        assert fields["sys/project"] == ("str", "acc-proj")  # init_trackers' project name
        assert fields["sys/name"] == ("str", "acc-test")
        assert s.conflicts() == []
        rep = info.report
        assert rep is not None
        assert rep["points"] == PROCS * 2 * STEPS and rep["duplicate_batches"] == 0
        assert rep["replaced_points"] == 0, "a process was handed the same log call twice"
    finally:
        s.close()
    _no_aggregator_left(run_id)


def test_step_raising_on_rank_1_fails_the_run_naming_rank_1_and_the_message(store_dir: Path, tmp_path: Path) -> None:
    """An exception in process 1's training step: run failed, rank 1 and its message recorded, nothing left."""
    out = tmp_path / "out"
    out.mkdir()
    res = accelerate_launch(
        WORKERS / "accelerate_train.py",
        *("--out", str(out), "--steps", str(STEPS), "--fail-rank", "1", "--fail-step", "3"),
        store=store_dir,
        tmp=tmp_path,
    )
    assert res.returncode != 0, res.stdout
    [info] = list_runs(store_dir)
    assert info.state == "failed", info.report
    rep = info.report
    assert rep is not None
    assert rep["failed_ranks"]["1"] == "RuntimeError: injected failure on rank 1 at step 3", rep["failed_ranks"]
    s = LocalStore(info.path / "run.db", readonly=True)
    try:  # what rank 1 logged before it raised is there, once
        assert s.values("train/rank_metric", 1) == [(st, float(1 + st)) for st in range(3)]
        assert s.fields()["hparams/lr"] == ("float", 0.05)
    finally:
        s.close()
    _no_aggregator_left(info.id)


def test_one_process_options_values_and_log_after_end(store_dir: Path, tmp_path: Path) -> None:
    """Constructor project wins; init_kwargs name and policies; nested, numpy, tensors; strings skipped."""
    store_dir.mkdir(parents=True)
    res = _run(
        [sys.executable, str(WORKERS / "accelerate_single.py")], _env(store_dir, tmp_path), cwd=tmp_path, timeout=120
    )
    res.check()
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    [info] = list_runs(store_dir)
    assert info.id == seen["run_id"] and info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        fields = s.fields()
        assert fields["sys/project"] == ("str", "mine") and fields["sys/name"] == ("str", "from-init-kwargs")
        assert fields["hparams/optim/name"] == ("str", "adamw")
        assert fields["hparams/optim/betas"] == ("list", [0.9, 0.999])
        assert fields["hparams/epochs"] == ("int", 2)
        assert s.values("a", 0) == [(0, 0.0), (1, 1.0), (2, 2.0)]
        assert s.values("t", 0) == [(0, 0.0), (1, 2.0), (2, 4.0)]
        assert s.values("nested/x", 0) == [(0, 0.0), (1, 1.0), (2, 2.0)]
        assert s.values("nested/y", 0) == [(0, 1.0), (1, 1.0), (2, 1.0)]
        assert s.values("m", 0) == [(0, 5.0), (1, 6.0)]
        assert {x["key"] for x in s.series_summary()} == {"a", "t", "nested/x", "nested/y", "sums/n", "m"}
        policies = s.key_policies()
        assert policies["sums/n"] == "sum" and policies["m"] == "max", policies
    finally:
        s.close()
    skipped = [m for m in seen["messages"] if "not a number" in m]
    assert len(skipped) == 2 and any("'text'" in m for m in skipped) and any("'vec'" in m for m in skipped), skipped
    assert any("after the coordinator run was closed" in m for m in seen["messages"]), seen["messages"]


def test_example_accelerate_train_runs_on_two_processes(store_dir: Path, tmp_path: Path) -> None:
    """examples/accelerate_train.py trains, logs on both processes and stores one finished run."""
    res = accelerate_launch(ROOT / "examples" / "accelerate_train.py", "--epochs", "1", store=store_dir, tmp=tmp_path)
    res.check()
    assert "steps of the mean train/loss" in res.stdout, res.stdout
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        summary = {x["key"]: x for x in s.series_summary()}
        steps = summary["train/loss"]["points"]
        assert steps > 0 and summary["train/loss"]["per_rank"] == {r: steps for r in range(PROCS)}
        assert s.fields()["hparams/lr"][0] == "float"
    finally:
        s.close()
    _no_aggregator_left(info.id)
