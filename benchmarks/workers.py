"""The parent <-> worker-process line protocol: ``Worker`` (parent side), ``emit`` and ``wait_go`` (worker side).

A worker is ``python -m <module> <sub-command> '<config as JSON>'``; it reports on stdout with
lines ``@@BENCH <TAG> <JSON>`` (anything else it prints is ignored) and takes its cues (``GO
<start time>``, ``STOP``) as lines on stdin. Its stderr goes to a file of the trial directory.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, kill_tree

__all__ = ["PROTO", "Worker", "emit", "wait_go"]

PROTO = "@@BENCH "
"""Prefix of the worker -> parent protocol lines on the worker's stdout."""


def emit(tag: str, payload: dict[str, Any]) -> None:
    """Worker side: send one protocol line to the parent."""
    sys.stdout.write(f"{PROTO}{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def wait_go() -> float | None:
    """Worker side: wait for ``GO <t>`` on stdin, then until monotonic time ``t``; None on anything else."""
    line = sys.stdin.readline()
    if not line.startswith("GO "):
        return None
    t_start = float(line.split()[1])
    while True:  # coarse sleep, then spin the last millisecond
        left = t_start - time.monotonic()
        if left <= 0:
            return t_start
        time.sleep(left - 0.001 if left > 0.002 else 0)


class Worker:
    """One worker process and a thread turning its protocol lines into a queue."""

    def __init__(
        self,
        cfg: dict[str, Any],
        env: dict[str, str],
        stderr_path: Path,
        module: str = "benchmarks.throughput",
        sub: str = "_worker",
    ) -> None:
        """Start ``python -m <module> <sub> '<cfg as JSON>'``."""
        self.rank = cfg.get("rank", 0)
        self.stderr_path = stderr_path
        # The child keeps its own copy of the stderr file's descriptor: ours is closed once it has started.
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, sub, json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"bench-reader-{self.rank}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                self.lines.put(line[len(PROTO) :])
        self.lines.put(None)

    def expect(self, tag: str, deadline: float) -> dict[str, Any]:
        """The payload of the next protocol line, which must be ``tag``, before monotonic ``deadline``.

        Raises:
            RuntimeError: another tag, the worker exited, or the deadline passed.
        """
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"rank {self.rank}: no {tag} before the deadline") from None
        if line is None:
            raise RuntimeError(
                f"rank {self.rank}: exited (code {self.proc.poll()}) before {tag}; "
                f"see {self.stderr_path}:\n{self.stderr_tail()}"
            )
        got, _, payload = line.partition(" ")
        if got != tag:
            raise RuntimeError(f"rank {self.rank}: expected {tag}, got {line!r:.200}")
        data: dict[str, Any] = json.loads(payload)
        return data

    def send(self, line: str) -> None:
        """One line to the worker's stdin (a worker that already exited is reported by ``close``)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def stderr_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the worker's stderr file."""
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self, timeout: float) -> int | None:
        """Wait for exit; kill this worker and its descendants (by pid) if it overstays (then None)."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            kill_tree(self.proc.pid)
            self.proc.wait(10)
        self._reader.join(5)
        return code
