"""A real process writing into a ring, for the tests that kill it (test_ring.py, test_ringrows.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def writer_process(script: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` (given ``path`` as its argument) in a process of its own, yielded once it printed
    "ready"; killed, if still running, and reaped at the end."""
    p = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        if p.stdout is not None:
            p.stdout.close()


def sigkill(p: subprocess.Popen[str]) -> None:
    """Kill ``p`` with SIGKILL, as the kernel would a rank, and reap it."""
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL
