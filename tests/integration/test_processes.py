"""Several real rank processes without torch (file rendezvous), and readers in other processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import coordinator
from coordinator.journal.store import LocalStore, list_runs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "workers" / "plain_rank.py"


def _spawn(world: int, out: Path, store: Path, *args: str) -> list[subprocess.Popen[str]]:
    procs = []
    job = str(random.randrange(20_000, 60_000))  # what a launcher gives each job (MASTER_PORT)
    for r in range(world):
        env = dict(
            os.environ,
            RANK=str(r),
            WORLD_SIZE=str(world),
            COORDINATOR_DIR=str(store),
            PYTHONPATH=str(ROOT),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=job,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "--out", str(out), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _reap(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    """Each process's (exit code, stdout, stderr); fails the test, with every rank's last messages, if one hangs."""
    deadline = time.monotonic() + timeout
    res = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a rank process hung; what each rank said last:\n{_kill_all(procs)}")
        res.append((p.returncode, out, err))
    return res


def _kill_all(procs: list[subprocess.Popen[str]]) -> str:
    """Ask each running process for its state (SIGUSR1: the plain worker dumps its sender and stacks), kill, reap.

    Returns the tail of every process's stderr and stdout, for the failure message.
    """
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGUSR1)
    time.sleep(2)
    tails = []
    for i, p in enumerate(procs):
        p.kill()
        out, err = p.communicate(timeout=30)
        tails.append(f"--- process {i} (exit {p.returncode}) stdout:\n{out[-2000:]}\n--- stderr:\n{err[-6000:]}")
    return "\n".join(tails)


def _aggregators(run_id: str) -> list[psutil.Process]:
    """The live aggregator processes of ``run_id`` (``python -m coordinator.aggregator --run <run_id>``)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        argv = p.info["cmdline"] or []
        if p.info["status"] == psutil.STATUS_ZOMBIE or "coordinator.aggregator" not in argv or "--run" not in argv:
            continue
        at = argv.index("--run") + 1
        if at < len(argv) and argv[at] == run_id:
            found.append(p)
    return found


def test_wait_then_a_reader_in_another_process_sees_everything(store_dir: Path) -> None:
    """After wait() returns, a separate process reading the store counts every point logged before it."""
    with coordinator.init_run() as run:
        for s in range(20_000):
            run.log({"a": float(s), "b": 1.0}, step=s)
        run.wait(timeout=60)
        [info] = list_runs(store_dir)
        code = (
            "import sys; from coordinator.journal.store import LocalStore as S; "
            f"s = S({str(info.path / 'run.db')!r}, readonly=True); "
            "print(len(s.values('a', 0)), len(s.values('b', 0)))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["20000", "20000"]


def test_three_processes_file_rendezvous_equal_fields_once_conflicts_recorded(store_dir: Path, tmp_path: Path) -> None:
    """Ranks found through the file rendezvous; equal writes stored once; a conflict keeps rank 0's value."""
    out = tmp_path / "out"
    out.mkdir()
    res = _reap(_spawn(3, out, store_dir, "--points", "3000", "--conflict"))
    for code, _, err in res:
        assert code == 0, err[-3000:]
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for r in range(3):
            assert [st for st, _ in s.values("m", r)] == list(range(3000))
        main = s.values("m", -1)
        assert main == [(st, float(10_000 + st)) for st in range(3000)]  # mean of r*10000+st over r=0..2
        assert s.values("tp", -1) == [(0, 6.0)] and s.key_policies()["tp"] == "sum"
        assert s.values("mx", -1) == [(0, 2.0)] and s.key_policies()["mx"] == "max"
        f = s.fields()
        assert f["cfg/same"] == ("str", "equal-everywhere")
        assert f["cfg/x"] == ("int", 0)
        conflicts = s.conflicts()
        assert {c["rank"] for c in conflicts if c["kept_rank"] == 0} | {c["kept_rank"] for c in conflicts} >= {0}
        assert {c["path"] for c in conflicts} == {"cfg/x"}
        assert info.report is not None and info.report["conflicts"] == len(conflicts) >= 2
    finally:
        s.close()


def test_rank0_killed_aggregator_drains_others_and_marks_run_failed(store_dir: Path, tmp_path: Path) -> None:
    """SIGKILL of rank 0: the aggregator keeps the other ranks' data, exits, and records why."""
    out = tmp_path / "out"
    out.mkdir()
    procs = _spawn(3, out, store_dir, "--points", "2000", "--hang-after", "1000", "--liveness", "3")
    # Every rank stops after 1000 acked points. Rank 0 is SIGKILLed; the others die without closing,
    # so the aggregator must notice both the dead parent and the silent ranks on its own.
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "HUNG":
            for q in procs:
                q.kill()
            pytest.fail(f"a rank did not reach its hang point: {line!r}\n{p.communicate(timeout=30)[1][-3000:]}")
    run_id = (out / "rank0.id").read_text()
    assert len(_aggregators(run_id)) == 1
    procs[0].kill()
    procs[0].wait(30)
    for p in procs[1:]:
        p.terminate()
    _reap(procs)
    deadline = time.monotonic() + 60
    while _aggregators(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _aggregators(run_id), "aggregator outlived its job"
    [info] = list_runs(store_dir)
    assert info.state == "failed"
    assert info.report is not None
    assert any("rank 0" in r for r in info.report["reasons"])
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        for r in range(3):
            assert len(s.values("m", r)) >= 1001, r
    finally:
        s.close()
