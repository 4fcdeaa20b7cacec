"""Lightning's launchers (Trainer ddp / ddp_spawn, torchrun, Fabric) with ``CoordinatorLogger`` on 2 CPU processes.

Each job runs ``workers/lightning_job.py`` in a child process of its own session; Lightning starts
the second rank itself (ddp re-runs the script, ddp_spawn and ddp_fork start two workers), or
torchrun does. Every rank logs ``train/rank_metric = 1000 * rank + step`` without ``sync_dist``:
each rank's series must hold exactly what it logged, once, and the main series the mean at every
step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from tests.integration._torchrun import ROOT, WORKERS, torchrun

pytest.importorskip("lightning")
pytest.importorskip("torch")

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

STEPS = 8
JOB_TIMEOUT_S = 240


def _job(launcher: str, out: Path, store: Path, *args: str) -> tuple[int, str, str]:
    """Run one Lightning job to its end (bounded); then wait until none of its processes is left."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, COORDINATOR_DIR=str(store), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    cmd = [sys.executable, str(WORKERS / "lightning_job.py"), "--launcher", launcher, "--out", str(out)]
    cmd += ["--steps", str(STEPS), *args]
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out, start_new_session=True
    )
    try:
        stdout, stderr = p.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=30)
        pytest.fail(f"lightning {launcher} job hung for {JOB_TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    _no_process_left(str(out))
    return p.returncode, stdout, stderr


def _no_process_left(marker: str, timeout: float = 60) -> None:
    """No rank of the job (its command line names ``marker``) nor its aggregator is left (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and (
                marker in cmdline or _is_aggregator_of(cmdline, marker)
            ):
                left.append((proc.pid, cmdline))
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes left behind: {left}")
        time.sleep(0.2)


def _is_aggregator_of(cmdline: str, marker: str) -> bool:
    out = Path(marker)
    runs = [json.loads(f.read_text())["run_id"] for f in out.glob("rank*.json")] if out.is_dir() else []
    return "coordinator.aggregator" in cmdline and any(r in cmdline for r in runs)


def _results(out: Path) -> list[dict[str, Any]]:
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["run_id"] == results[1]["run_id"], results
    return results


def _stored(store: Path) -> tuple[Any, LocalStore]:
    [info] = list_runs(store)
    return info, LocalStore(info.path / "run.db", readonly=True)


def _check_every_point_once_and_mean(s: LocalStore, results: list[dict[str, Any]]) -> None:
    """Each rank's series is exactly what it logged (each step once); the main series is the mean."""
    for rank, r in enumerate(results):
        logged = [(int(st), float(v)) for st, v in r["logged"]]
        assert [st for st, _ in logged] == list(range(STEPS))
        assert s.values("train/rank_metric", rank) == logged, f"rank {rank}: points lost, doubled or changed"
        assert [st for st, _ in s.values("train/loss", rank)] == list(range(STEPS))
    main = s.values("train/rank_metric", MAIN_RANK)
    assert main == [(st, 500.0 + st) for st in range(STEPS)]  # mean of 1000 * 0 + st and 1000 * 1 + st
    assert {c for _, c in s.contributors("train/rank_metric")} == {2}


def _check_hparams(fields: dict[str, Any]) -> None:
    assert fields["hparams/lr"] == ("float", 0.05)
    assert fields["hparams/hidden"] == ("int", 8)
    assert fields["hparams/optimizer/name"] == ("str", "sgd")
    assert fields["sys/world_size"] == ("int", 2)


@pytest.mark.parametrize("launcher", ["ddp", "ddp_spawn", "ddp_fork"])
def test_trainer_every_rank_logs_its_own_series_and_the_main_series_is_the_mean(
    launcher: str, store_dir: Path, tmp_path: Path
) -> None:
    """``self.log`` without sync_dist on 2 ranks: per-rank series exact, main = mean, hparams, checkpoint."""
    out = tmp_path / "out"
    rc, stdout, stderr = _job(launcher, out, store_dir, *(["--log-model"] if launcher == "ddp" else []))
    assert rc == 0, f"{stdout[-3000:]}\n{stderr[-6000:]}"
    results = _results(out)
    info, s = _stored(store_dir)
    try:
        assert info.id == results[0]["run_id"]
        assert info.state == "finished", info.report
        _check_every_point_once_and_mean(s, results)
        fields = s.fields()
        _check_hparams(fields)
        assert fields["sys/name"] == ("str", launcher)
        if launcher == "ddp":  # log_model=True: the last checkpoint was uploaded with the run
            kind, record = fields["checkpoints/last"]
            assert kind == "artifact" and record[0] == "last.ckpt", record
        rep = info.report
        assert rep["points"] == 2 * 3 * STEPS  # train/rank_metric, train/loss, epoch
        assert rep["duplicate_batches"] == 0 and rep["replaced_points"] == 0 and not rep["failed_ranks"]
    finally:
        s.close()


def test_trainer_under_torchrun(store_dir: Path, tmp_path: Path) -> None:
    """torchrun starts the ranks (Lightning's TorchElastic environment): same guarantees."""
    out = tmp_path / "out"
    out.mkdir()
    torchrun(
        "lightning_job.py", "--launcher", "ddp", "--out", str(out), "--steps", str(STEPS), nproc=2, store=store_dir
    ).check()
    results = _results(out)
    info, s = _stored(store_dir)
    try:
        assert info.id == results[0]["run_id"] and info.state == "finished", info.report
        _check_every_point_once_and_mean(s, results)
        _check_hparams(s.fields())
    finally:
        s.close()
    _no_process_left(str(out))


def test_fabric_log_dict_on_every_rank(store_dir: Path, tmp_path: Path) -> None:
    """``Fabric(loggers=[CoordinatorLogger])``, ``fabric.log_dict`` on 2 ranks: same guarantees."""
    out = tmp_path / "out"
    rc, stdout, stderr = _job("fabric", out, store_dir)
    assert rc == 0, f"{stdout[-3000:]}\n{stderr[-6000:]}"
    results = _results(out)
    info, s = _stored(store_dir)
    try:
        assert info.id == results[0]["run_id"] and info.state == "finished", info.report
        _check_every_point_once_and_mean(s, results)
        _check_hparams(s.fields())
        assert info.report["points"] == 2 * 2 * STEPS and info.report["replaced_points"] == 0
    finally:
        s.close()


def test_a_training_step_that_raises_on_rank_1_fails_the_run_naming_rank_1_and_the_message(
    store_dir: Path, tmp_path: Path
) -> None:
    """Rank 1 raises at step 3: the run is failed with rank 1's exception; its steps 0-2 are stored; nothing left."""
    out = tmp_path / "out"
    rc, _, stderr = _job("ddp", out, store_dir, "--fail-rank", "1", "--fail-step", "3")
    assert rc != 0
    assert "boom on rank 1 at step 3" in stderr
    info, s = _stored(store_dir)
    try:
        assert info.state == "failed", info.report
        assert info.report["failed_ranks"]["1"] == "RuntimeError: boom on rank 1 at step 3"
        assert s.values("train/rank_metric", 1) == [(0, 1000.0), (1, 1001.0), (2, 1002.0)]
    finally:
        s.close()
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if info.id in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, "aggregator process left behind"


def test_example_lightning_train_runs(store_dir: Path, tmp_path: Path) -> None:
    """``python examples/lightning_train.py`` trains on 2 processes and stores one finished run with both ranks."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)
    cmd = [sys.executable, str(ROOT / "examples" / "lightning_train.py"), "--epochs", "1", "--max-steps", "4"]
    p = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = p.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
        pytest.fail("the example hung")
    assert p.returncode == 0, stderr[-6000:]
    assert "4 steps" in stdout, stdout
    info, s = _stored(store_dir)
    try:
        assert info.state == "finished", info.report
        summary = {x["key"]: x for x in s.series_summary()}
        assert summary["train/loss"]["points"] == 4
        assert summary["train/loss"]["per_rank"] == {0: 4, 1: 4}
        assert s.fields()["hparams/lr"] == ("float", 0.05)
    finally:
        s.close()
    _no_process_left(str(ROOT / "examples" / "lightning_train.py"))


def test_in_one_process_namespace_hparams_failure_message_and_interrupt(store_dir: Path) -> None:
    """No launcher: Namespace hyperparameters flattened; logging goes on after ``finalize("success")`` (test after
    fit); ``finalize("failed")`` inside an ``except`` records the exception, a KeyboardInterrupt is no failure."""
    from coordinator.integrations.lightning import CoordinatorLogger

    logger = CoordinatorLogger("unit", "one")
    assert logger.name == "one" and logger.save_dir is None
    logger.log_hyperparams(argparse.Namespace(lr=0.1, model={"layers": [4, 4], "act": None}))
    logger.log_metrics({"loss": 1.5, "epoch": 0}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    run_id = logger.version
    logger.finalize("success")  # the end of fit(): waits, keeps the run open for test()
    logger.log_metrics({"loss": 0.25}, step=2)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        logger.finalize("failed")  # Ctrl-C: left to the run (interrupted), not a failure
    try:
        raise ValueError("diverged at step 1")
    except ValueError:
        logger.finalize("failed")
    logger.close()
    logger.close()
    with pytest.raises(Exception, match="closed"):
        logger.log_metrics({"loss": 0.1}, step=3)
    info, s = _stored(store_dir)
    try:
        assert info.id == run_id and info.state == "failed"
        assert info.report["failed_ranks"] == {"0": "ValueError: diverged at step 1"}
        fields = s.fields()
        assert fields["hparams/lr"] == ("float", 0.1)
        assert fields["hparams/model/layers"] == ("list", [4, 4])
        assert fields["hparams/model/act"] == ("str", "None")
        assert s.values("loss", 0) == [(0, 1.5), (1, 0.5), (2, 0.25)]
    finally:
        s.close()


def test_epoch_in_the_training_and_the_validation_dict_of_a_step_is_logged_once(store_dir: Path) -> None:
    """Lightning adds ``epoch`` to the training and the validation dict of a step: the same number at the same
    step goes once (no replacement in the report); another number at that step is logged, and counted."""
    from coordinator.integrations.lightning import CoordinatorLogger

    logger = CoordinatorLogger("unit", "epochs")
    logger.log_metrics({"train/loss": 1.0, "epoch": 0}, step=3)
    logger.log_metrics({"val/loss": 2.0, "epoch": 0}, step=3)
    logger.log_metrics({"train/loss": 0.5, "epoch": 0}, step=4)
    logger.log_metrics({"val/loss": 1.5, "epoch": 1}, step=4)  # another number at step 4: a replacement
    logger.log_metrics({"train/loss": 0.25, "epoch": 1}, step=5)
    logger.finalize("success")
    logger.close()
    info, s = _stored(store_dir)
    try:
        assert s.values("epoch", 0) == [(3, 0.0), (4, 1.0), (5, 1.0)]
        assert s.values("val/loss", 0) == [(3, 2.0), (4, 1.5)]
        assert info.report["replaced_points"] == 1
    finally:
        s.close()
