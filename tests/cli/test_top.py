"""``coordinator top --once``: one frame of a stored run (ranks, restarts, spool bytes, forwarding lag)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coordinator.cli.main import main
from coordinator.cli.series import ReadOnlyRun
from coordinator.cli.snapshot import spool_root_of
from coordinator.forward.cursor import CursorFile, CursorState
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import LocalStore, run_dir
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


def test_the_spool_root_the_aggregator_recorded_is_read_and_spool_dir_overrides_it(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job with Settings.spool_dir elsewhere: top finds its spools from the run's config meta row."""
    db = write_run(store_dir)
    elsewhere = tmp_path / "fast-disk" / "spools"
    (elsewhere / "rank-3-1").mkdir(parents=True)
    (elsewhere / "rank-3-1" / "seg-0.spool").write_bytes(b"x" * 5000)
    st = LocalStore(db)
    try:
        cfg = json.loads(st.meta("config") or "{}")
        st.set_meta("config", json.dumps({**cfg, "spool_root": str(elsewhere)}))
    finally:
        st.close()

    def spool_col(args: list[str]) -> dict[int, str]:
        assert main(["--dir", str(store_dir), "top", "--once", *args]) == 0
        lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if re.match(r"rank \d", ln)]
        return {int(w[1]): " ".join(w) for w in lines}

    rows = spool_col([])
    assert "4.9 KiB" in rows[3] and "KiB" not in rows[0]
    rows = spool_col(["--spool-dir", str(tmp_path / "other")])
    assert not any("KiB" in row for row in rows.values()), "--spool-dir overrides what the run recorded"


def test_a_config_row_that_is_not_json_falls_back_to_the_default_spool_root(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = write_run(store_dir)
    st = LocalStore(db)
    try:
        st.set_meta("config", "{not json")
    finally:
        st.close()
    with ReadOnlyRun(db) as run:
        assert spool_root_of(run, store_dir, RUN) == spool_dir(store_dir, RUN)
    assert "not JSON" in caplog.text
