"""Launch a worker script under real torchrun and collect its result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

WORKERS = Path(__file__).parent / "workers"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    """Exit code and output of one torchrun job."""

    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        """Fail the test with the job's output unless it exited 0."""
        assert self.returncode == 0, (
            f"torchrun exited {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-6000:]}"
        )
        return self


def torchrun(
    script: str,
    *args: str,
    nproc: int = 4,
    store: Path,
    timeout: float = 240,
    extra_env: dict[str, str] | None = None,
    torchrun_args: tuple[str, ...] = (),
    standalone: bool = True,
) -> Result:
    """Run ``workers/<script>`` (or an absolute path) on ``nproc`` ranks with ``torchrun --standalone``; fail on a hang.

    The job runs in its own session so a hang is killed whole (workers and aggregator too). The
    aggregator runs in a session of its own and may outlive torchrun by a moment (a killed rank 0
    leaves it to finish the run and remove rank 0's rendezvous file): it is waited for too.
    """
    pytest.importorskip("torch")
    env = dict(os.environ, COORDINATOR_DIR=str(store), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *(["--standalone"] if standalone else []),  # False: torchrun_args name the rendezvous
        f"--nproc_per_node={nproc}",
        *torchrun_args,
        str(WORKERS / script) if not os.path.isabs(script) else script,
        *args,
    ]
    store.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=store.parent,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        pytest.fail(f"torchrun {script} hung for {timeout} s:\n{out}\n{err[-6000:]}")
    wait_for_aggregators(store)
    return Result(p.returncode, out, err)


def wait_for_aggregators(store: Path, timeout: float = 60) -> None:
    """Wait until every aggregator of jobs writing to ``store`` has exited; kill and fail past ``timeout``."""

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "coordinator.aggregator" in (proc.info["cmdline"] or []) and (
                    proc.environ().get("COORDINATOR_DIR") == str(store)
                ):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # gone meanwhile, or not ours to read
        return found

    _, alive = psutil.wait_procs(ours(), timeout=timeout)
    for proc in alive:
        proc.kill()
    assert not alive, f"aggregators still running {timeout} s after their job: {[a.pid for a in alive]}"
