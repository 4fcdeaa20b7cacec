"""``python -m tests.stress``: copies at once, each counted, failures kept, hung copies killed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.stress import main, run_round

_TESTS = """
import os
import time


def test_ok():
    pass


def test_bad():
    assert False, "bad on purpose"


def test_hangs(tmp_path):
    (tmp_path.parent / f"pid-{os.getpid()}").write_text("")
    time.sleep(120)
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    f = tmp_path / "suite" / "test_sample.py"
    f.parent.mkdir()
    f.write_text(_TESTS)
    return f


def test_every_copy_is_counted_and_the_failures_logs_are_kept(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--copies", "2", "--rounds", "1", "--out", str(tmp_path / "ok"), "--", str(suite), "-k", "ok"]) == 0
    assert "2 of 2 copies passed, 0 failed" in capsys.readouterr().out
    out = tmp_path / "bad"
    assert main(["--copies", "2", "--rounds", "2", "--out", str(out), "--", str(suite), "-k", "bad"]) == 1
    printed = capsys.readouterr().out
    assert "0 of 4 copies passed, 4 failed (0 timed out)" in printed
    logs = sorted(out.glob("r*-*.log"))
    assert [p.name for p in logs] == ["r1-1.log", "r1-2.log", "r2-1.log", "r2-2.log"]
    assert all("bad on purpose" in p.read_text() for p in logs)
    assert all(str(p) in printed for p in logs)


def test_a_copy_past_the_timeout_is_killed_with_its_process_group(suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "hang"
    out.mkdir()
    (c,) = run_round([str(suite), "-k", "hangs"], 1, out, "r1", timeout_s=8)
    assert c.rc is None and not c.passed
    pids = [int(p.name.removeprefix("pid-")) for p in out.glob("tmp-r1-1/pid-*")]
    assert len(pids) == 1  # the test started, and its process is gone
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # signal 0: only asks whether the process exists
