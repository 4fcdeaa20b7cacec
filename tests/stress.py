"""Run one pytest selection many times at once, to find the races a single run rarely shows.

A multi-process test that counts every point once can pass for weeks and fail one run in forty
when the machine is loaded: the window of a race between the training thread and the sender is
a few bytecodes wide until something (another job, a GIL release added elsewhere) widens it.
Running several copies at once on a small machine is what widened it enough to see the double
cut of round 12 (docs/performance.md). Usage::

    python -m tests.stress --copies 5 --rounds 16 -- tests/integration/test_frames.py -k per_key_calls_mixed_in

Each round starts ``--copies`` pytest processes at once, each with its own ``--basetemp`` (its
stores and logs apart from the others'), and waits for all of them; a copy still running after
``--timeout`` seconds is killed with its process group and counted as timed out. The output of
every copy that did not pass is kept under ``--out`` and its path printed. Exit status 0 when
every copy passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Copy", "main", "run_round"]


@dataclass(slots=True)
class Copy:
    """One pytest process of a round and how it ended."""

    name: str
    log: Path
    rc: int | None = None
    """pytest's exit status; None when it was killed at the timeout."""

    @property
    def passed(self) -> bool:
        return self.rc == 0


def run_round(args: list[str], copies: int, out: Path, name: str, timeout_s: float) -> list[Copy]:
    """Start ``copies`` pytest processes of ``args`` at once and wait for them (each within ``timeout_s``)."""
    procs: list[tuple[Copy, subprocess.Popen[bytes]]] = []
    for j in range(copies):
        c = Copy(f"{name}-{j + 1}", out / f"{name}-{j + 1}.log")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
        cmd += [f"--basetemp={out / ('tmp-' + c.name)}", *args]
        with c.log.open("wb") as f:
            procs.append((c, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)))
    deadline = time.monotonic() + timeout_s
    for c, p in procs:
        try:
            c.rc = p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
    for c, p in procs:
        if c.rc is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # anything a finished copy left in its session
            except ProcessLookupError:
                pass  # the usual case: the session ended with pytest
    return [c for c, _ in procs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=5, help="pytest processes at once (default 5)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds of --copies (default 8)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take (default 300)")
    ap.add_argument("--out", type=Path, default=None, help="where the copies' logs go (default: a new temp dir)")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: what pytest runs")
    a = ap.parse_args(argv)
    args = a.pytest_args[1:] if a.pytest_args[:1] == ["--"] else a.pytest_args
    if not args:
        ap.error("give pytest's arguments after --")
    if a.copies < 1 or a.rounds < 1:
        ap.error("--copies and --rounds must be at least 1")
    out = a.out or Path(tempfile.mkdtemp(prefix="coordinator-stress-"))
    out.mkdir(parents=True, exist_ok=True)
    failed: list[Copy] = []
    total = 0
    for r in range(a.rounds):
        got = run_round(args, a.copies, out, f"r{r + 1}", a.timeout)
        total += len(got)
        bad = [c for c in got if not c.passed]
        failed += bad
        print(f"round {r + 1}/{a.rounds}: {len(got) - len(bad)} of {len(got)} passed", flush=True)
    timed_out = sum(c.rc is None for c in failed)
    print(f"{total - len(failed)} of {total} copies passed, {len(failed)} failed ({timed_out} timed out)")
    for c in failed:
        print(f"  {c.name}: {'timed out' if c.rc is None else f'exit {c.rc}'}, log {c.log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
