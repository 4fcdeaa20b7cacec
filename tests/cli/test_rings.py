"""``coordinator rings``: the rings found where a job's may be, in use or left, and only left ones removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import coordinator.cli.rings as rings_cli
from coordinator.cli.doctor import left_rings_line
from coordinator.cli.main import main
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter, names_path

_HOLD = """
import sys, time
from pathlib import Path
from coordinator.transport.ring import RingWriter
w = RingWriter(Path(sys.argv[1]), 4096)
print("ready", flush=True)
time.sleep(60)
"""


def test_rings_lists_in_use_and_left_rings_and_removes_only_the_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shm, spool, extra = tmp_path / "shm", tmp_path / "store" / "spool" / "run-b", tmp_path / "extra"
    for d in (shm, spool, extra):
        d.mkdir(parents=True)
    monkeypatch.setattr(rings_cli, "SHM", shm)  # never the machine's /dev/shm: other jobs' rings live there
    monkeypatch.delenv("COORDINATOR_RING_DIR", raising=False)
    left = RowWriter(RingWriter(shm / "coordinator-run-a-0-1.ring", 4096))
    assert left.row(("loss",), 0, [1.0])
    left.close()
    names_path(left.ring.path).write_bytes(b"names")
    RingWriter(spool / "coordinator-run-b-1-2.ring", 4096).close()
    held = extra / "coordinator-run-c-0-1.ring"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        base = ["--dir", str(tmp_path / "store"), "rings", "--in", str(extra)]
        assert main(base) == 0
        text = capsys.readouterr().out
        assert "left    run-a rank 0 incarnation 1" in text and "in use  run-c rank 0 incarnation 1" in text
        assert "2 left (" in text and "coordinator sync <run>" in text
        assert main([*base, "--remove", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert [(r["run"], r["state"]) for r in got["rings"]] == [
            ("run-a", "left"),
            ("run-b", "left"),
            ("run-c", "in use"),
        ]
        assert [(r["run"], r["unread_bytes"] > 0) for r in got["removed"]] == [("run-a", True), ("run-b", False)]
        assert sorted(p.name for p in tmp_path.rglob("coordinator-*")) == ["coordinator-run-c-0-1.ring"]
        assert got["rings"][2]["writer_pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert main([*base, "--remove"]) == 0
    assert "removed " + str(held) in capsys.readouterr().out
    assert main(base) == 0 and capsys.readouterr().out == "no rings\n"


def test_doctor_says_how_many_rings_were_left_and_their_memory(tmp_path: Path) -> None:
    assert left_rings_line(tmp_path) == f"rings: none left in {tmp_path} by jobs that died"
    held = RingWriter(tmp_path / "coordinator-a-0-1.ring", 4096)
    RingWriter(tmp_path / "coordinator-b-0-1.ring", 1 << 20).close()
    line = left_rings_line(tmp_path)
    assert line.startswith(f"rings: 1 left in {tmp_path} by jobs that died (1.0 MiB)"), line
    held.close()
    assert left_rings_line(tmp_path).startswith(f"rings: 2 left in {tmp_path}")
    for p in tmp_path.iterdir():
        p.unlink()
