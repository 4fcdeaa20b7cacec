"""Tags across ranks and from the command line (issue 13, item 3): a union, filterable with ``runs --tag``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import coordinator
from coordinator.cli.main import main
from coordinator.journal.store import LocalStore


def _two_ranks(
    root: Path, monkeypatch: pytest.MonkeyPatch, tags0: list[str], tags1: list[str]
) -> list[coordinator.Run]:
    """Rank 0 and rank 1 of one 2-rank job, in this process (as tests/forward/test_forwarder.py's make_run)."""

    def settings(rank: int) -> coordinator.Settings:
        return coordinator.Settings(dir=str(root), rank=rank, world_size=2, handle_sigterm=False)

    r0 = coordinator.init_run(project="tagged", name="two", tags=tags0, settings=settings(0))
    with monkeypatch.context() as m:
        assert r0.endpoint is not None
        m.setenv("COORDINATOR_ENDPOINT", r0.endpoint)
        m.setenv("COORDINATOR_RUN_ID", r0.id)
        try:
            r1 = coordinator.init_run(project="tagged", name="two", tags=tags1, settings=settings(1))
        except BaseException:
            r0.stop(30)
            raise
    return [r0, r1]


def test_tags_of_two_ranks_are_a_union_seen_by_every_rank_and_by_runs_tag(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = _two_ranks(store_dir, monkeypatch, ["common", "r0"], ["common", "r1"])
    try:
        r0, r1 = runs
        r1["sys/tags"].add("from-1")
        r0["sys/tags"].remove("r0")
        for r in runs:
            r.wait(60)
        for r in runs:
            r.sync(timeout=60)
            assert r["sys/tags"].fetch() == {"common", "r1", "from-1"}
            r.log({"loss": 1.0}, step=0)
    finally:
        for r in reversed(runs):
            r.stop(60)
    with coordinator.init_run(project="other", tags=["common"]) as other:
        other_id = other.id
    rid = runs[0].id
    st = LocalStore(Path(runs[0].store_path or ""), readonly=True)
    try:
        assert st.conflicts() == []  # a union, never a conflict
    finally:
        st.close()
    ro = coordinator.init_run(with_id=rid, mode="read-only")
    try:
        assert ro["sys/tags"].fetch() == {"common", "r1", "from-1"}
    finally:
        ro.stop()
    capsys.readouterr()

    def listed(*args: str) -> list[str]:
        assert main(["runs", "--json", *args]) == 0
        return [r["id"] for r in json.loads(capsys.readouterr().out)]

    assert listed() == [rid, other_id]
    assert listed("--tag", "common") == [rid, other_id]
    assert listed("--tag", "common", "--tag", "r1") == [rid]
    assert listed("--tag", "r0") == []
    assert listed("--tag", "common", "--project", "other") == [other_id]
    assert listed("--state", "finished", "--tag", "from-1") == [rid]
    assert listed("--state", "failed") == []
    assert main(["runs", "--json", "--tag", "r1"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["tags"] == ["common", "from-1", "r1"] and row["state"] == "finished"
    db = Path(row["path"]) / "run.db"
    assert row["size_bytes"] >= db.stat().st_size > 0
    assert main(["runs", "--tag", "r1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "SIZE" in lines[0] and lines[0].endswith("TAGS")
    assert lines[1].startswith(rid) and lines[1].endswith("common,from-1,r1") and " KiB " in lines[1]
    assert main(["runs", "--tag", "nothing"]) == 0
    assert "match the filters" in capsys.readouterr().out


def test_the_cli_reads_tags_of_a_run_made_in_another_process(store_dir: Path) -> None:
    """A separate process tags its run; ``coordinator runs --tag`` (the console entry) finds it."""
    code = (
        "import coordinator\n"
        "with coordinator.init_run(project='x', tags=['proc']) as r:\n"
        "    r['sys/tags'].add('late')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=dict(os.environ))
    res = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "runs", "--tag", "late", "--tag", "proc"],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("late,proc")
