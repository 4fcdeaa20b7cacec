"""``coordinator sync`` finds the spools where the run's ranks wrote them: the spool root its journal records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import coordinator
from coordinator.cli.main import main
from coordinator.cli.spools import run_spool_root
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import LocalStore, run_dir


def _record_spool_root(root: Path, run_id: str, spool_root: Path | str, *, create: bool) -> None:
    """The run's ``config`` meta row as an aggregator that records its spool root writes it."""
    s = LocalStore(run_dir(root, run_id) / "run.db")
    try:
        if create:
            s.create_run(run_id, "p", "elsewhere", 1, 1000.0)
        row = {"policies": {}, "default_policy": "mean", "spool_root": str(spool_root)}
        s.set_meta("config", json.dumps(row))
    finally:
        s.close()


def test_sync_replays_the_spools_under_the_recorded_spool_root(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An offline run spooled under COORDINATOR_SPOOL_DIR; its store names that root; sync stores every point once."""
    other = tmp_path / "scratch-spool"
    monkeypatch.setenv("COORDINATOR_SPOOL_DIR", str(other))
    with coordinator.init_run(mode="offline", name="elsewhere") as run:
        for s in range(300):
            run.log({"loss": 1.0 / (s + 1)}, step=s)
        run_id = run.id
    monkeypatch.delenv("COORDINATOR_SPOOL_DIR")
    spooled = sorted(p.name for p in (other / run_id).glob("rank-*-*"))  # each run in <spool_dir>/<run id>
    assert len(spooled) == 1 and not list(spool_dir(store_dir, run_id).glob("rank-*-*"))
    other = other / run_id
    _record_spool_root(store_dir, run_id, other, create=True)
    assert run_spool_root(store_dir, run_id) == other

    capsys.readouterr()
    assert main(["sync", run_id]) == 0
    said = capsys.readouterr().out
    assert "300 points" in said and str(other) in said and "state finished" in said
    assert not list(other.glob("rank-*-*"))  # stored, then removed
    ro = coordinator.init_run(with_id=run_id, mode="read-only")
    try:
        assert ro["loss"].fetch_values(rank=0) == [(s, 1.0 / (s + 1)) for s in range(300)]
    finally:
        ro.stop()
    assert main(["sync", run_id]) == 0  # again: nothing left to store, nothing doubled
    ro = coordinator.init_run(with_id=run_id, mode="read-only")
    try:
        assert len(ro["loss"].fetch_values(rank=0)) == 300
    finally:
        ro.stop()


def test_spool_root_is_the_default_without_a_recorded_one(store_dir: Path, tmp_path: Path) -> None:
    assert run_spool_root(store_dir, "never-stored") == spool_dir(store_dir, "never-stored")  # no store yet
    with coordinator.init_run(project="p", name="plain") as run:
        run.log({"x": 1.0}, step=0)
        rid = run.id
    assert run_spool_root(store_dir, rid) == spool_dir(store_dir, rid)
    _record_spool_root(store_dir, rid, "", create=False)  # recorded as empty: the default
    assert run_spool_root(store_dir, rid) == spool_dir(store_dir, rid)
    _record_spool_root(store_dir, rid, tmp_path / "s", create=False)
    assert run_spool_root(store_dir, rid) == tmp_path / "s"


def test_sync_refuses_a_spool_root_that_other_runs_share(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs sharing COORDINATOR_SPOOL_DIR spool in their own subdirectories; a root that still holds
    another run's rank spools (the older, flat layout) is refused: they are named, and kept."""
    shared = tmp_path / "shared"
    monkeypatch.setenv("COORDINATOR_SPOOL_DIR", str(shared))
    ids = []
    for name in ("one", "two"):
        with coordinator.init_run(mode="offline", name=name) as run:
            run.log({"x": 1.0}, step=0)
            ids.append(run.id)
    monkeypatch.delenv("COORDINATOR_SPOOL_DIR")
    assert sorted(p.name for p in shared.iterdir()) == sorted(ids)
    for run_id in ids:  # the older layout: every run's rank spools directly in the shared root
        for d in (shared / run_id).iterdir():
            d.rename(shared / d.name)
        (shared / run_id).rmdir()
    before = sorted(p.name for p in shared.iterdir())
    assert len(before) == 2
    _record_spool_root(store_dir, ids[0], shared, create=True)
    capsys.readouterr()
    assert main(["sync", ids[0]]) == 2
    said = capsys.readouterr().err
    assert "also holds spools of other runs" in said and "move them out of it" in said
    assert sorted(p.name for p in shared.iterdir()) == before  # nothing read, nothing removed


def test_a_run_records_its_own_spool_root_for_the_cli(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator writes where the ranks spool into the journal: <spool_dir>/<run id>, absolute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COORDINATOR_SPOOL_DIR", "relative-spool")
    with coordinator.init_run(project="p", name="recorded") as run:
        run.log({"x": 1.0}, step=0)
        rid = run.id
    monkeypatch.delenv("COORDINATOR_SPOOL_DIR")
    assert run_spool_root(store_dir, rid) == tmp_path / "relative-spool" / rid
