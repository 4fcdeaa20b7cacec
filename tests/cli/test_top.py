"""``coordinator top --once``: one frame of a stored run (ranks, restarts, spool bytes, forwarding lag)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.cli.main import main
from coordinator.forward.cursor import CursorFile, CursorState
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import run_dir
from tests.cli._stores import RUN, WORLD, write_run


def test_once_prints_every_rank_spools_and_forwarders(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = write_run(store_dir)
    spool = spool_dir(store_dir, RUN) / "rank-1-1"
    spool.mkdir(parents=True)
    (spool / "seg-0.spool").write_bytes(b"x" * 3000)  # what a rank that could not deliver leaves
    cursor = CursorFile(run_dir(store_dir, RUN), "mlflow", "http://127.0.0.1:5000 exp")
    cursor.acquire()
    try:
        cursor.save(CursorState(cursor=10), {})
    finally:
        cursor.release()
    assert main(["--dir", str(store_dir), "top", "--once"]) == 0
    text = capsys.readouterr().out
    assert f"run {RUN}" in text and "state finished" in text
    rows = {int(line.split()[1]): line.split() for line in text.splitlines() if re.match(r"rank \d", line)}
    assert sorted(rows) == list(range(WORLD))
    assert all(rows[r][2] == "closed" for r in rows)
    assert rows[2][3] == "1" and rows[0][3] == "0"  # rank 2 restarted once
    assert "2.9 KiB" in " ".join(rows[1]) and "KiB" not in " ".join(rows[0])
    fwd = next(line for line in text.splitlines() if line.startswith("mlflow"))
    assert fwd.split()[1] == "10"  # its journal position
    assert "127.0.0.1" not in text  # the destination (it may hold credentials) is not shown
    assert db.exists()


def test_unknown_run_is_a_clear_error(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(store_dir)
    assert main(["--dir", str(store_dir), "top", "nope", "--once"]) == 2
    assert "no runs match 'nope'" in capsys.readouterr().err
