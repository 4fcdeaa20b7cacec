"""``coordinator top`` under a pseudo-terminal against a live 4-rank torchrun job: every rank shown, exit at the end."""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.journal.paths import list_runs, writer_active
from tests.integration._torchrun import ROOT, WORKERS

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


def _wait_for_live_run(store: Path, job: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended before top started: {job.communicate(timeout=30)}"
        runs = list_runs(store) if (store / "runs").is_dir() else []
        if runs and writer_active(runs[-1].path):
            return runs[-1].id
        time.sleep(0.2)
    pytest.fail(f"no live run under {store} after {timeout} s")


def _read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Everything ``proc`` writes to the terminal until it exits (and the pty drains)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if data:
                out += data
                continue
        if proc.poll() is not None:  # exited, and the terminal is drained (EIO) or quiet
            return bytes(out)
    proc.kill()
    proc.wait(timeout=30)
    pytest.fail(f"top did not exit within {timeout} s; it wrote:\n{out.decode(errors='replace')[-4000:]}")


def test_top_follows_a_live_4_rank_job_and_exits_when_it_ends(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import fcntl
    import termios

    store = tmp_path / "store"
    store.mkdir()
    env = dict(os.environ, COORDINATOR_DIR=str(store), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    job = subprocess.Popen(
        [*cmd, str(WORKERS / "top_job.py"), "--seconds", "10"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    top: subprocess.Popen[bytes] | None = None
    master, slave = os.openpty()
    try:
        run_id = _wait_for_live_run(store, job, 120)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        top = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "--dir", str(store), "top", "latest"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env, TERM="xterm-256color", COLUMNS="160", LINES="40"),
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        raw = _read_pty(master, top, 180)
        assert top.wait(timeout=30) == 0, raw.decode(errors="replace")[-4000:]
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, f"job failed:\n{out}\n{err[-6000:]}"
    finally:
        for p in (top, job):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = _ANSI.sub("", raw.decode(errors="replace"))
    assert f"run {run_id}" in text
    # top shows a live rank behind the others as "straggler" (on 2 loaded cores a rank can stay a step or two
    # behind for the whole job): live all the same
    live_rows = {int(m.group(1)) for m in re.finditer(r"rank (\d)\s+(?:live|straggler)\s+0\s+\d", text)}
    assert live_rows == {0, 1, 2, 3}, f"not every rank was shown live:\n{text[-4000:]}"
    closed_rows = {int(m.group(1)) for m in re.finditer(r"rank (\d)\s+closed\s+0\s+\d", text)}
    assert closed_rows == {0, 1, 2, 3}, text[-4000:]
    assert f"run {run_id} ended: finished" in text
