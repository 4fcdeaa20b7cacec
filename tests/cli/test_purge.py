"""``coordinator purge`` (issue 13, item 6) on real runs: finished, failed, live, and stale (aggregator SIGKILLed)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import coordinator
import coordinator.cli.purge as purge_mod
from coordinator.cli.common import parse_duration
from coordinator.cli.main import main
from coordinator.errors import CoordinatorError
from coordinator.journal.store import LocalStore
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter, names_path

_STALE_SCRIPT = """
import sys, time, coordinator
run = coordinator.init_run(project="p", name="stale", tags=["crash"])
run.log({"loss": 1.0}, step=0)
run.wait(60)
print(run.id, run._agg.proc.pid, flush=True)
time.sleep(600)
"""


def _stale_run(tmp_path: Path) -> str:
    """A run left ``running``: its training process and its aggregator SIGKILLed (no end written)."""
    # What the killed job leaves stays out of the session's runtime dir. A short path: a socket path
    # under pytest's tmp_path can pass the 107-byte limit of a Unix socket.
    rt = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(rt))
    p = subprocess.Popen([sys.executable, "-c", _STALE_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert len(line) == 2, f"the stale job did not start: {line}"
        rid, agg_pid = line[0], int(line[1])
        agg = psutil.Process(agg_pid)
        p.send_signal(signal.SIGSTOP)  # its supervisor must not restart the aggregator
        agg.kill()
        deadline = time.monotonic() + 30
        while _alive(agg):  # a zombie (its parent is stopped) has closed its files: the lock is free
            assert time.monotonic() < deadline, "the aggregator did not die"
            time.sleep(0.05)
    finally:
        p.kill()
        p.wait(30)
        if p.stdout is not None:
            p.stdout.close()
        shutil.rmtree(rt)  # the killed job's socket and rendezvous files
    return rid


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _runs(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    return {r["id"]: r for r in json.loads(capsys.readouterr().out)}


def _purge(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["purge", *args])
    res = capsys.readouterr()
    return code, res.out, res.err


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("socket_path")
def test_purge_lists_then_deletes_exactly_the_selected_runs_and_never_a_live_one(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(os.urandom(300_000))
    with coordinator.init_run(project="p", name="done", tags=["keep-me"]) as run:
        run.log({"loss": 0.5}, step=0)
        run["model/ckpt"].upload(ckpt)
        finished = run.id
    with coordinator.init_run(project="p", name="bad", tags=["crash"]) as run:
        run.log({"loss": 0.5}, step=0)
        run.fail("boom")
        failed = run.id
    (store_dir / "spool" / failed / "rank-0-1").mkdir(parents=True, exist_ok=True)
    (store_dir / "spool" / failed / "rank-0-1" / "seg").write_bytes(b"x" * 5000)  # a leftover spool
    stale = _stale_run(tmp_path)
    live = coordinator.init_run(project="p", name="live", tags=["crash"])
    try:
        live.log({"loss": 1.0}, step=0)
        live.wait(60)
        runs = _runs(capsys)
        assert {k: v["state"] for k, v in runs.items()} == {
            finished: "finished",
            failed: "failed",
            stale: "stale",
            live.id: "running",
        }
        assert runs[finished]["size_bytes"] > 300_000  # the artifact's copy counts

        before = _snapshot(store_dir)
        code, text, _ = _purge(capsys, "--all", "--stale-after", "0s", "--dry-run")
        assert code == 0
        assert "would delete 3 run(s)" in text and "(dry run)" in text
        for rid in (finished, failed, stale):
            assert any(ln.startswith(f"  DELETE  {rid}") for ln in text.splitlines()), text
        assert f"  REFUSE  {live.id}" in text and "live: a process holds its writer lock" in text
        assert "KiB" in text and "+ spool 4.9 KiB" in text
        after = _snapshot(store_dir)
        # A dry run changes nothing; only the live run's own journal moves (its aggregator writes on).
        assert {k: v for k, v in after.items() if live.id not in k} == {
            k: v for k, v in before.items() if live.id not in k
        }

        code, text, _ = _purge(capsys, "--state", "stale")  # written a moment ago: maybe restarting
        assert code == 0 and "REFUSE" in text and "--stale-after" in text and "deleted 0 run(s)" in text
        assert (store_dir / "runs" / stale).is_dir()

        code, text, _ = _purge(capsys, "--state", "failed")
        assert code == 0 and f"deleted {failed}" in text and "deleted 1 run(s)" in text
        assert not (store_dir / "runs" / failed).exists() and not (store_dir / "spool" / failed).exists()
        assert set(_runs(capsys)) == {finished, stale, live.id}

        code, text, _ = _purge(capsys, "--tag", "crash", "--stale-after", "0s")
        assert code == 0 and f"deleted {stale}" in text and f"REFUSE  {live.id}" in text
        assert set(_runs(capsys)) == {finished, live.id}

        code, text, _ = _purge(capsys, "--all", "--older-than", "1d")
        assert code == 0 and "deleting 0 run(s)" in text
        code, text, _ = _purge(capsys, "--all", "--keep-last", "1", "--dry-run")
        assert f"DELETE  {finished}" in text and live.id not in text  # the newest is spared

        live.log({"loss": 2.0}, step=1)  # the refused run is untouched and still works
        live.wait(60)
    finally:
        live.stop(60)
    code, text, _ = _purge(capsys, "--project", "p")
    assert code == 0 and "deleted 2 run(s)" in text
    assert _runs(capsys) == {}


def test_purge_reports_a_failed_deletion_and_exits_non_zero(
    store_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator.init_run(project="p") as run:
        rid = run.id

    def failing_rmtree(path: str | os.PathLike[str], onerror: Any) -> None:
        onerror(os.unlink, str(path), (PermissionError, PermissionError(13, "Permission denied"), None))

    monkeypatch.setattr(purge_mod.shutil, "rmtree", failing_rmtree)
    code, text, err = _purge(capsys, "--all")
    assert code == 1
    assert f"run {rid}: cannot delete" in err and "Permission denied" in err
    assert "1 failed" in text
    monkeypatch.setattr(purge_mod.shutil, "rmtree", shutil.rmtree)


def test_purge_needs_a_selection_and_valid_durations(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _purge(capsys)
    assert code == 2 and "needs a selection" in err
    code, _, err = _purge(capsys, "--older-than", "30")
    assert code == 2 and "not a duration" in err
    code, _, err = _purge(capsys, "--all", "--keep-last", "-1")
    assert code == 2 and "--keep-last" in err
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200 and parse_duration("90m") == 5400
    with pytest.raises(CoordinatorError):
        parse_duration("1y")


def test_runs_shows_a_run_without_a_lock_holder_as_stale(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock is probed without taking it from a holder: a held lock means running, a free one stale."""
    with coordinator.init_run() as run:
        rid = run.id
    s = LocalStore(store_dir / "runs" / rid / "run.db")
    s._db.execute("UPDATE run SET state='running', ended=NULL")
    s._db.commit()
    s.close()
    assert _runs(capsys)[rid]["state"] == "stale"
    with open(store_dir / "runs" / rid / "writer.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _runs(capsys)[rid]["state"] == "running"
        code, text, _ = _purge(capsys, "--all", "--stale-after", "0s")
        assert code == 0 and "REFUSE" in text and (store_dir / "runs" / rid).is_dir()
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # still ours: the probes never took it
    assert _runs(capsys)[rid]["state"] == "stale"


def test_purge_deletes_the_runs_own_spools_under_a_recorded_spool_root_and_nothing_else(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spool root set by the user may be shared: purge deletes only the run's incarnations' directories there."""
    shared = tmp_path / "shared-spool"
    runs = {}
    for name in ("gone", "kept"):
        with coordinator.init_run(project="p", name=name, tags=[name]) as run:
            run.log({"loss": 0.5}, step=0)
            runs[name] = run.id
    incs = {}
    for name, rid in runs.items():
        s = LocalStore(store_dir / "runs" / rid / "run.db")
        try:
            [sender] = s.senders()
            incs[name] = sender["incarnation"]
            s.set_meta("config", json.dumps({"policies": {}, "default_policy": "mean", "spool_root": str(shared)}))
        finally:
            s.close()
        left = shared / f"rank-0-{incs[name]}"  # what a crash would have left there
        left.mkdir(parents=True)
        (left / "0.seg").write_bytes(b"x" * 7000)
    (shared / "rank-0-12345").mkdir()  # a stranger's (no run of this store knows it)

    own = shared / f"rank-0-{incs['gone']}"
    code, text, _ = _purge(capsys, "--tag", "gone", "--dry-run")
    assert code == 0 and f"+ spool 6.8 KiB ({own}" in text, text
    assert own.is_dir()
    code, text, _ = _purge(capsys, "--tag", "gone")
    assert code == 0 and "deleted 1 run(s)" in text
    assert not (store_dir / "runs" / runs["gone"]).exists() and not own.exists()
    assert not (store_dir / "spool" / runs["gone"]).exists()
    assert sorted(p.name for p in shared.iterdir()) == sorted([f"rank-0-{incs['kept']}", "rank-0-12345"])


def test_purge_deletes_the_rings_a_killed_job_left_that_the_journal_names_and_no_other_file(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ring (``Settings.rings``) outlives a killed job in /dev/shm; purging its run deletes it and its
    names file. A path the journal names that is not named as a ring stays (purge deletes no file it
    cannot tell is a ring), and so does another run's ring."""
    rings = tmp_path / "shm"
    rings.mkdir()
    runs = {}
    for name in ("gone", "kept"):
        with coordinator.init_run(project="p", name=name, tags=[name]) as run:
            run.log({"loss": 0.5}, step=0)
            runs[name] = run.id
        ring = rings / f"coordinator-{runs[name]}-0-7.ring"
        RowWriter(RingWriter(ring, 1 << 16)).close()  # what a killed rank leaves: its ring and its names file
        s = LocalStore(store_dir / "runs" / runs[name] / "run.db")
        try:
            s.set_meta("ringpath:0-1", str(ring))
            if name == "gone":
                s.set_meta("ringpath:1-1", str(tmp_path / "notes.txt"))
        finally:
            s.close()
    (tmp_path / "notes.txt").write_text("not a ring")
    gone = rings / f"coordinator-{runs['gone']}-0-7.ring"
    code, text, _ = _purge(capsys, "--tag", "gone", "--dry-run")
    assert code == 0 and str(gone) in text and "notes.txt" not in text, text
    assert gone.exists()
    code, text, _ = _purge(capsys, "--tag", "gone")
    assert code == 0 and "deleted 1 run(s)" in text, text
    assert not gone.exists() and not names_path(gone).exists()
    assert (tmp_path / "notes.txt").read_text() == "not a ring"
    kept = rings / f"coordinator-{runs['kept']}-0-7.ring"
    assert sorted(p.name for p in rings.iterdir()) == sorted([kept.name, names_path(kept).name])
