"""Plain ``mpirun`` jobs (issue 10, item 4): no torch.distributed, rank and world size from
Open MPI's environment, the aggregator found through the node-local rendezvous file.

Launched for real: ``mpirun --allow-run-as-root --oversubscribe -np 4`` (Open MPI, ``openmpi-bin``).
SLURM's variables (``srun``) are checked at the unit level.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from coordinator.transport.discovery import detect_placement, private_dir, remove_orphan_record
from tests.integration._torchrun import ROOT, WORKERS

pytestmark = [pytest.mark.integration]

NP = 4
STEPS = 50
MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(
    MPIRUN is None, reason="Open MPI's mpirun is not installed (apt-get install openmpi-bin)"
)


@dataclass
class Job:
    """Exit code and output of one mpirun job."""

    returncode: int
    output: str


def mpirun(*args: str, store: Path, timeout: float = 120, script: Path = WORKERS / "mpi_rank.py") -> Job:
    """Run ``script`` (``workers/mpi_rank.py``) on ``NP`` ranks under mpirun in its own session; fail on a hang."""
    assert MPIRUN is not None
    env = dict(os.environ, COORDINATOR_DIR=str(store), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # only Open MPI's variables say who is who
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(NP), sys.executable, str(script)]
    store.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        [*cmd, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=store.parent,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        pytest.fail(f"mpirun hung for {timeout} s:\n{out[-6000:]}")
    return Job(p.returncode, out)


def _wait_gone(run_id: str, timeout: float = 40.0) -> None:
    """Wait until neither a rank nor the aggregator of the run is running; fail after ``timeout``.

    mpirun SIGKILLs a rank 1 s after its SIGTERM, so rank 0 may be gone before its aggregator
    (its own session, reparented to init) has written the report and exited: the aggregator
    finishes the run by itself, within the liveness timeout (20 s) at worst.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in psutil.process_iter(["cmdline"]) if run_id in " ".join(p.info["cmdline"] or [])]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes of run {run_id} still running {timeout} s after mpirun: {[p.pid for p in left]}")
        time.sleep(0.1)


def _remove_records_of_killed_rank0() -> None:
    """Remove the rendezvous file a SIGKILLed rank 0 could not retract; fail on any other leftover.

    mpirun SIGKILLs a terminated rank 1 s after SIGTERM: a rank 0 still draining then (a loaded
    machine) leaves its record. It is harmless (a lookup ignores a record whose publisher is
    dead; the next run on the node removes it), but the suite's fixture counts leftovers.
    """
    for f in private_dir().glob("rdzv-*.json"):
        assert remove_orphan_record(f), f"{f}: a rendezvous record whose publisher is still running"


def _loss(rank: int, step: int) -> float:
    return float(rank * 1000 + step)


@needs_mpirun
@pytest.mark.multiprocess
def test_four_mpirun_ranks_every_point_once_mean_params_finished(store_dir: Path, tmp_path: Path) -> None:
    """4 ranks without torch: one run, every rank's points once, main series = mean, hparams, finished."""
    out = tmp_path / "out"
    out.mkdir()
    job = mpirun("--out", str(out), "--steps", str(STEPS), store=store_dir)
    assert job.returncode == 0, job.output[-6000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(NP)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(r, NP) for r in range(NP)]
    assert not any(r["torch"] for r in ranks), "a plain MPI rank imported torch"
    [info] = list_runs(store_dir)
    assert {r["run_id"] for r in ranks} == {info.id}
    _wait_gone(info.id)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.run_info().state == "finished", s.run_info().report
        for r in range(NP):
            pts = s.values("train/loss", r)
            assert [st for st, _ in pts] == list(range(STEPS)), f"rank {r}: steps lost or doubled"
            assert all(v == _loss(r, st) for st, v in pts)
            assert s.values("train/rank", r) == [(st, float(r)) for st in range(STEPS)]
        main = s.values("train/loss", MAIN_RANK)
        assert [st for st, _ in main] == list(range(STEPS))
        for st, v in main:
            assert v == pytest.approx(sum(_loss(r, st) for r in range(NP)) / NP)
        assert {c for _, c in s.contributors("train/loss")} == {NP}
        assert [st for st, _ in s.values("train/rank", MAIN_RANK)] == list(range(STEPS))
        assert all(v == pytest.approx(1.5) for _, v in s.values("train/rank", MAIN_RANK))
        fields = s.fields()
        assert fields["hparams/lr"] == ("float", 0.01)
        assert fields["hparams/batch_size"] == ("int", 32)
        assert fields["hparams/launcher"] == ("str", "mpirun")
        assert fields["sys/world_size"][1] == NP
        assert s.conflicts() == []
    finally:
        s.close()


@needs_mpirun
@pytest.mark.multiprocess
@pytest.mark.parametrize("fail_rank", [2, 0])
@pytest.mark.usefixtures("socket_path")
def test_a_raising_mpi_rank_fails_the_run_with_its_rank_and_message(
    store_dir: Path, tmp_path: Path, fail_rank: int
) -> None:
    """One rank raises at step 20; mpirun terminates the others (SIGTERM, then SIGKILL 1 s later).

    The run ends ``failed`` with that rank and message; the others are recorded interrupted or
    still running; nothing is left. A failing rank 0 waits for the other ranks at most its close
    timeout (8 s here) before it stops the aggregator.
    """
    out = tmp_path / "out"
    out.mkdir()
    job = mpirun(
        *("--out", str(out), "--steps", "1000", "--fail-rank", str(fail_rank), "--fail-at", "20"),
        *("--close-timeout", "8"),
        store=store_dir,
        timeout=120,
    )
    assert job.returncode != 0, job.output[-6000:]
    assert "ValueError: diverged at step 20" in job.output
    [info] = list_runs(store_dir)
    _wait_gone(info.id)
    _remove_records_of_killed_rank0()
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        ri = s.run_info()
        assert ri.state == "failed" and ri.report is not None, ri.report
        assert ri.report["failed_ranks"] == {str(fail_rank): "ValueError: diverged at step 20"}, ri.report
        assert set(ri.report["interrupted_ranks"]) == {str(r) for r in range(NP)} - {str(fail_rank)}, ri.report
        assert [st for st, _ in s.values("train/loss", fail_rank)] == list(range(20))
        for r in range(NP):  # what every rank logged before the end is stored, once
            steps = [st for st, _ in s.values("train/loss", r)]
            assert steps == list(range(len(steps))) and len(steps) >= 20, (r, steps[-3:])
    finally:
        s.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, (3, 4, 2)),
        ({"PMI_RANK": "1", "PMI_SIZE": "2"}, (1, 2, 0)),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (5, 8, 0)),
        ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (1, 2, 0)),  # torchrun under srun
        ({}, (0, 1, 0)),
    ],
)
def test_rank_and_world_size_from_the_launchers_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[int, int, int]
) -> None:
    """Open MPI, PMI (MPICH, Intel MPI, Horovod) and SLURM (srun) variables; torchrun's win when both are set."""
    for var in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT",
        "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
        "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = detect_placement()
    assert (p.rank, p.world_size, p.local_world_size) == expected


@needs_mpirun
@pytest.mark.multiprocess
def test_example_mpi_train_runs_under_mpirun(store_dir: Path) -> None:
    """examples/mpi_train.py: 4 ranks, every step's mean stored, per-rank fields, finished, no conflicts."""
    job = mpirun("--steps", "30", store=store_dir, script=ROOT / "examples" / "mpi_train.py")
    assert job.returncode == 0, job.output[-6000:]
    [info] = list_runs(store_dir)
    _wait_gone(info.id)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.run_info().state == "finished"
        assert [st for st, _ in s.values("train/loss", MAIN_RANK)] == list(range(30))
        assert {c for _, c in s.contributors("train/loss")} == {NP}
        fields = s.fields()
        assert fields["hparams/world_size"] == ("int", NP)
        assert all(f"summary/rank{r}/final_loss" in fields for r in range(NP))
        assert s.conflicts() == []
    finally:
        s.close()
