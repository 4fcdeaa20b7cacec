"""The modes: disabled, sync, offline (then ``coordinator sync``), read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from coordinator.journal.store import MAIN_RANK, list_runs
from tests.client.helpers import open_store


def test_disabled_mode_is_a_no_op(store_dir: Path) -> None:
    """mode='disabled' accepts every call, starts nothing and writes nothing."""
    with coordinator.init_run(mode="disabled") as run:
        run.log({"a": 1.0}, step=0)
        run["x"].append(2.0)
        run["p"] = 3
        run.wait()
        run.sync()
    assert not store_dir.exists()


def test_sync_mode_every_call_is_durable_on_return(store_dir: Path) -> None:
    """mode='sync': each log() returns only after the store has committed it."""
    with coordinator.init_run(mode="sync") as run:
        run.log({"a": 1.0}, step=0)
        s = open_store(store_dir)
        try:
            assert s.values("a", 0) == [(0, 1.0)]
            run["b"].append(2.0)
            assert s.values("b", 0) == [(0, 2.0)]
        finally:
            s.close()


def test_offline_mode_spools_and_cli_sync_uploads_once(store_dir: Path) -> None:
    """mode='offline' writes a spool; `coordinator sync` stores it; a second sync doubles nothing."""
    from coordinator.cli.main import main

    with coordinator.init_run(mode="offline", name="off") as run:
        run["parameters/lr"] = 0.5
        for s in range(1000):
            run.log({"loss": float(s)}, step=s)
        run_id = run.id
    assert list_runs(store_dir) == []
    assert main(["sync", run_id]) == 0
    assert main(["sync", run_id]) == 0
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == [(i, float(i)) for i in range(1000)]
        assert s.values("loss", MAIN_RANK) == [(i, float(i)) for i in range(1000)]
        assert s.fields()["parameters/lr"] == ("float", 0.5)
        assert s.run_info().state == "finished"
    finally:
        s.close()


def test_read_only_reopens_a_stored_run(store_dir: Path) -> None:
    """init_run(with_id=..., mode='read-only') reads fields and series without an aggregator."""
    with coordinator.init_run(name="first") as run:
        run["parameters/lr"] = 0.01
        for s in range(100):
            run["train/loss"].append(1.0 / (s + 1), step=s)
        rid = run.id
    for ref in (rid, "latest"):
        ro = coordinator.init_run(with_id=ref, mode="read-only")
        try:
            assert ro.id == rid and ro.name == "first"
            assert ro["parameters/lr"].fetch() == 0.01
            assert ro["sys/state"].fetch() == "finished"
            assert len(ro["train/loss"].fetch_values()) == 100
            assert ro["train/loss"].fetch_values(rank=0)[-1] == (99, 0.01)
            with pytest.raises(coordinator.ClosedError):
                ro.log({"x": 1.0})
        finally:
            ro.stop()
    with pytest.raises(coordinator.ConfigError):
        coordinator.init_run(with_id="no-such-run", mode="read-only")
