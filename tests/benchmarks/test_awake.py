"""The wrapper that keeps the CPUs awake during a benchmark: its spinners run, yield, and are gone after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.awake import SPIN_SOURCE, awake, main
from tests.polling import wait_until


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def test_the_spinners_run_at_the_lowest_priority_and_are_reaped_after() -> None:
    with awake(2) as pids:
        assert len(pids) == 2
        # nice is field 19 of stat (16 after the name and state); each spinner lowers its own
        assert wait_until(lambda: all((f := _stat(p)) is not None and f[16] == "19" for p in pids), 10)
        before = [int(f[11]) + int(f[12]) for p in pids if (f := _stat(p)) is not None]
        assert wait_until(
            lambda: all(
                (f := _stat(p)) is not None and int(f[11]) + int(f[12]) > b for p, b in zip(pids, before, strict=True)
            ),
            10,
        ), "the spinners did not use any CPU"
    assert all(_stat(p) is None for p in pids), "a spinner outlived the with block"


def test_main_runs_the_command_among_the_spinners_and_returns_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    code = "import os, sys; sys.exit(3)"
    assert main(["--cpus", "1", "--", sys.executable, "-c", code]) == 3
    assert "1 spinners at nice 19" in capsys.readouterr().err


def test_a_spinner_whose_wrapper_died_ends_by_itself() -> None:
    """Orphaned (the wrapper SIGKILLed before it could stop them), a spinner notices and exits."""
    starter = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys; "
            f"p = subprocess.Popen([sys.executable, '-c', {SPIN_SOURCE!r}, '19', str(os.getpid())], "
            "stdout=subprocess.DEVNULL); print(p.pid)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid = int(starter.stdout)
    ended = wait_until(lambda: (f := _stat(pid)) is None or f[0] == "Z", 10)
    if not ended:
        os.kill(pid, signal.SIGKILL)
    assert ended, "the orphaned spinner kept running"


@pytest.mark.parametrize(("cpus", "nice"), [(0, 19), (1, -1), (1, 20)])
def test_bad_arguments_are_refused(cpus: int, nice: int) -> None:
    with pytest.raises(ValueError), awake(cpus, nice):
        pass
