"""The sender thread's loop against a real aggregator: an idle sender dozes, a write wakes it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import coordinator
from coordinator.journal.store import LocalStore, RunInfo, list_runs
from tests.transport.test_launcher import _wake_ups

pytestmark = pytest.mark.integration


def _stored_after_doze(store_dir: Path) -> RunInfo:
    """The store's one run holds x at steps 0 and 1 and the field written after the doze."""
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.values("x", 0) == [(0, 0.0), (1, 1.0)]
        assert s.field("note") == ("str", "after a doze")
    finally:
        s.close()
    return info


def test_an_idle_sender_dozes_until_a_write_or_its_heartbeat(store_dir: Path) -> None:
    """Idle, the sender wakes for its 1 s heartbeat only (it woke every 50 ms flush interval, ~40 times in 2 s)."""
    with coordinator.init_run() as run:
        sender = run._sender
        assert sender is not None and sender.native_id is not None
        run.log({"x": 0.0, "y": 1.0}, step=0)
        run.wait(60)
        time.sleep(0.5)  # the flush after the ack finds nothing: the sender dozes
        before = _wake_ups(sender.native_id)
        time.sleep(2.0)
        woke = _wake_ups(sender.native_id) - before
        assert woke <= 10, f"the idle sender woke up {woke} times in 2 s"
        t0 = time.monotonic()
        run.log({"x": 1.0, "y": 2.0}, step=1)  # wakes the dozing sender: the points go out at once
        run["note"] = "after a doze"
        run.wait(60)
        assert time.monotonic() - t0 < 5
    assert _stored_after_doze(store_dir).state == "finished"


def test_an_idle_offline_sender_dozes_and_a_write_still_reaches_the_spool(store_dir: Path) -> None:
    """Offline (the spool is the destination) an idle sender dozes too; what it logs after is spooled and synced."""
    from coordinator.cli.main import main

    with coordinator.init_run(mode="offline", name="dozing") as run:
        sender = run._sender
        assert sender is not None and sender.native_id is not None
        run.log({"x": 0.0}, step=0)
        time.sleep(0.5)
        before = _wake_ups(sender.native_id)
        time.sleep(2.0)
        woke = _wake_ups(sender.native_id) - before
        assert woke <= 10, f"the idle offline sender woke up {woke} times in 2 s"
        run.log({"x": 1.0}, step=1)
        run["note"] = "after a doze"
        run.wait(30)
        run_id = run.id
    assert main(["sync", run_id]) == 0
    _stored_after_doze(store_dir)
