"""Progress bars of ``sync --to``, ``export`` and ``purge``: drawn on a terminal, absent from piped output."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli._stores import RUN, write_run

ROOT = Path(__file__).resolve().parents[2]
BAR = "━"
"""The character rich draws bars with."""


def _in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``coordinator ARGS`` with a terminal as stdin/stdout/stderr; (exit status, what it wrote)."""
    master, slave = os.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="120")
    p = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            data = b""
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child is gone and the terminal drained
                    data = b""
            if data:
                out += data
            elif p.poll() is not None:
                break
        else:
            p.kill()
        return p.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(master)


@pytest.fixture
def store(store_dir: Path) -> Path:
    write_run(store_dir)
    return store_dir


def test_export_draws_a_bar_on_a_terminal_only(store: Path, tmp_path: Path) -> None:
    code, text = _in_pty(["--dir", str(store), "export", RUN, "--ranks", "all", "-o", str(tmp_path / "a.csv")])
    assert code == 0, text
    assert BAR in text and f"export {RUN}" in text
    assert re.search(r"\b(\d+)/\1\s+100%", re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)), text  # done: every point
    piped = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--dir", str(store), "export", RUN, "-o", str(tmp_path / "b.csv")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and BAR not in piped.stderr and "exported 440 points" in piped.stderr


def test_sync_to_draws_a_bar(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb"
    code, text = _in_pty(["--dir", str(store), "sync", RUN, "--to", "tensorboard", "--option", f"logdir={logdir}"])
    assert code == 0, text
    assert BAR in text and "tensorboard" in text and "points sent" in text


def test_purge_draws_a_bar(store: Path) -> None:
    code, text = _in_pty(["--dir", str(store), "purge", "--all"])
    assert code == 0, text
    assert BAR in text and "deleting" in text and "1/1" in text
    assert not (store / "runs" / RUN).exists()
