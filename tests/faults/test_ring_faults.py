"""Faults with ``Settings.rings``: a rank's rows live in its ring until a commit holds them.

The promises these measure: a SIGKILLed rank loses none of the rows it wrote into its ring (no
flush interval, no kill window), even when the aggregator was frozen and is then killed too (its
successor finds the ring in the journal), and a SIGKILLed aggregator neither loses nor doubles one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.journal.store import LocalStore, list_runs
from coordinator.transport.discovery import private_dir
from coordinator.transport.launcher import remove_stale_dirs
from tests.faults.test_aggregator_faults import (
    _check_exactly_once,
    _kill_and_await_restart,
    _reap_and_check_the_means,
    _wait_for,
)
from tests.faults.test_kill_window import _kill_rank1, _logged_by, _rank1_steps, _start
from tests.faults.test_rank_faults import ROOT, coordinator_sync, stall_freeze_and_kill
from tests.integration.test_processes import _aggregators, _kill_all, _spawn

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ring_path")]

_FLUSH_S = 1.0
"""The ranks' flush interval: what a kill late in it loses over the socket alone (the control)."""


def _report(store_dir: Path) -> dict[str, Any]:
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        rep = s.run_info().report
        assert isinstance(rep, dict)
        return rep
    finally:
        s.close()


def _late_in_a_flush_interval() -> None:
    """Wait until 0.15-0.3 s before the next flush on the wall-clock grid: a kill now loses the last
    0.7-0.85 s over the socket (the ranks flush on the grid's multiples)."""
    while not _FLUSH_S - 0.3 < time.time() % _FLUSH_S < _FLUSH_S - 0.15:
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("pair", "rings"), [(False, True), (True, True), (False, False)], ids=["scalars", "pairs", "no_rings"]
)
def test_with_rings_a_sigkilled_rank_loses_nothing_it_logged(
    pair: bool, rings: bool, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL rank 1 late in a 1 s flush interval: with rings every step it had logged is stored, once.

    Scalars (one-key dicts) and pairs (a frame of two keys). Without rings (the control) the same
    kill loses the steps logged since the last flush, and the same check fails: the kill landed late.
    """
    out, procs = _start(store_dir, tmp_path, monkeypatch, 2000.0, flush=_FLUSH_S, pair=pair, rings=rings)
    _late_in_a_flush_interval()
    t_kill = _kill_rank1(out, procs)
    logged = _logged_by(out / "rank1.progress", t_kill)
    assert logged > 1000  # well under way: 2000 points a second for 1.5 s
    [info] = list_runs(store_dir)
    kept = _rank1_steps(info.path / "run.db", out)
    assert kept <= _logged_by(out / "rank1.progress", t_kill + 1.0) + 10
    rep = _report(store_dir)
    if not rings:
        assert kept < logged - 500, "the kill did not land late in a flush interval: the test shows nothing"
        assert rep["ring_points"] == 0
        return
    assert kept >= logged, f"lost steps {kept}..{logged - 1}, every one logged before the kill"
    assert rep["ring_points"] >= kept * (2 if pair else 1) and rep["ring_errors"] == 0


def test_rows_written_while_the_aggregator_was_frozen_survive_the_rank_and_the_aggregator_being_killed(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freeze the aggregator (SIGSTOP), let rank 1 write into its ring, SIGKILL rank 1, then the frozen aggregator.

    Rank 1 never says HELLO again; the aggregator rank 0 starts next finds its ring in the journal,
    reads it from the committed cursor, and stores every step rank 1 logged, once.
    """
    out, procs = _start(store_dir, tmp_path, monkeypatch, 2000.0, flush=_FLUSH_S, rings=True)
    try:
        run_id = _wait_for(out / "run.id")
        [agg] = _aggregators(run_id)
        agg.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # rank 1 writes ~1000 rows nobody reads
        t_kill = time.monotonic()
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        _kill_and_await_restart(run_id)  # SIGKILL is delivered to a stopped process
    except BaseException:
        print(_kill_all(procs))  # shown with the failure
        raise
    _kill_rank1(out, procs)  # rank 1 is gone already: this tells rank 0 and reaps both
    logged = _logged_by(out / "rank1.progress", t_kill)
    [info] = list_runs(store_dir)
    kept = _rank1_steps(info.path / "run.db", out)
    assert kept >= logged, f"lost steps {kept}..{logged - 1}, every one logged before the kill"
    assert _report(store_dir)["ring_errors"] == 0


def test_with_rings_an_aggregator_sigkilled_and_restarted_loses_and_doubles_nothing(
    store_dir: Path, tmp_path: Path
) -> None:
    """Four ranks log through their rings; SIGKILL the aggregator mid-run: every point once, every mean whole."""
    out = tmp_path / "out"
    out.mkdir()
    world, n = 4, 30_000
    procs: list[subprocess.Popen[str]] = _spawn(world, out, store_dir, "--points", str(n), "--rate", "6000")
    try:
        run_id = _wait_for(out / "rank0.id")
        time.sleep(1.0)
        _kill_and_await_restart(run_id)
    except BaseException:
        print(_kill_all(procs))
        raise
    _reap_and_check_the_means(procs, store_dir, world, n).close()
    rep = _report(store_dir)
    assert rep["ring_errors"] == 0 and rep["late_points"] == 0
    for r in range(world):
        st = json.loads((out / f"rank{r}.json").read_text())["stats"]
        assert st["ring_points"] == n and st["ring_full"] == 0 and st["lost"] == 0, st


def test_coordinator_sync_stores_what_a_killed_job_left_in_its_rings(store_dir: Path, tmp_path: Path) -> None:
    """Freeze the aggregator, let three ranks write into their rings, SIGKILL everything: the rings are left
    (`coordinator rings`), the next job's aggregator warns of them and counts them, and `coordinator sync`
    reads the rings the journal names from their committed cursors, stores every point once, removes them."""
    out = tmp_path / "out"
    out.mkdir()
    world, n = 3, 12_000
    run_id, kill = stall_freeze_and_kill(store_dir, out, world, n)
    rings = list(Path(os.environ["COORDINATOR_RING_DIR"]).glob(f"coordinator-{run_id}-*.ring"))
    assert len(rings) == world
    assert not [r for r in _ring_list() if r["run"] == run_id and r["state"] != "in use"]
    kill()
    listed = [r for r in _ring_list() if r["run"] == run_id]
    assert sorted((r["rank"], r["state"], r["unread_bytes"] > 0) for r in listed) == [
        (r, "left", True) for r in range(world)
    ]
    assert remove_stale_dirs(private_dir()) >= 1  # what the SIGKILLed job left in the runtime directory
    _next_job_warns_of(run_id, world, tmp_path / "next")
    _check_exactly_once_missing(store_dir, world, n)
    r = coordinator_sync(run_id)
    assert "points" in r.stdout, r.stderr
    _check_exactly_once(store_dir, world, n).close()
    assert not [p for p in rings if p.exists()], "read rings must be removed"
    assert _report(store_dir)["ring_errors"] == 0


def _ring_list() -> list[dict[str, Any]]:
    """``coordinator rings --json``'s rings (the session's ring directory, from the environment)."""
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "rings", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    rings: list[dict[str, Any]] = json.loads(r.stdout)["rings"]
    return rings


_NEXT_JOB = """
import coordinator
run = coordinator.init_run(project="next")
run.log({"x": 1.0}, step=0)
run.stop()
"""


def _next_job_warns_of(run_id: str, world: int, store: Path) -> None:
    """A job started after the killed one, with its rings in the same directory: its aggregator warns of the
    rings nobody holds, with their run, and counts them (its own ring is not one), and leaves them."""
    r = subprocess.run(
        [sys.executable, "-c", _NEXT_JOB],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), COORDINATOR_DIR=str(store)),
    )
    assert r.returncode == 0, r.stderr
    assert "ring(s) of jobs that ended without removing them" in r.stderr and run_id in r.stderr, r.stderr
    [info] = list_runs(store)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        rep = s.run_info().report
        assert isinstance(rep, dict) and rep["ring_points"] == 1 and rep["left_rings"] >= world, rep
    finally:
        s.close()


def _check_exactly_once_missing(store_dir: Path, world: int, n: int) -> None:
    """Before the sync: what the frozen aggregator never read is not in the store (the test shows something)."""
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert sum(len(s.values("m", r)) for r in range(world)) < world * n
    finally:
        s.close()


_FORKS = """
import os, sys, time
import coordinator
run = coordinator.init_run(project="forks")
for s in range(100):
    run.log({"x": float(s)}, step=s)
run.wait(timeout=60)
assert run.stats()["ring_points"] == 100, run.stats()
child = os.fork()  # a DataLoader worker's way: a fork, no exec
if child == 0:
    time.sleep(120)
    os._exit(0)
print(run.id, child, flush=True)
time.sleep(120)
"""


def _gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not ours to reap) is gone or a zombie within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_forked_child_that_outlives_its_killed_rank_does_not_keep_its_ring_in_use(
    store_dir: Path, tmp_path: Path
) -> None:
    """A rank with a ring forks a child (as DataLoader workers are made) and is SIGKILLed with its aggregator while
    the child sleeps on: `coordinator rings` lists the ring as left, and `--remove` takes it away. A child that
    kept the ring's file open would hold its lock, and the ring would read as in use for as long as it lived."""
    rank = subprocess.Popen(
        [sys.executable, "-c", _FORKS],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    child = -1
    try:
        assert rank.stdout is not None
        run_id, pid = rank.stdout.readline().split()
        child = int(pid)
        [agg] = _aggregators(run_id)
        agg.suspend()  # frozen, it reads nothing more and starts no successor when the rank dies
        rank.kill()
        rank.wait(10)
        agg.kill()
        agg.wait(10)
        os.kill(child, 0)  # the child lives on
        [ring] = [r for r in _ring_list() if r["run"] == run_id]
        assert ring["state"] == "left", ring
        assert ring["unread_bytes"] == 0, ring  # its rows were committed before wait() returned
        r = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "rings", "--remove"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert r.returncode == 0 and run_id in r.stdout, (r.stdout, r.stderr)
        assert not [r for r in _ring_list() if r["run"] == run_id]
    finally:
        rank.kill()
        rank.wait(10)
        if child > 0:
            os.kill(child, signal.SIGKILL)
            assert _gone(child, 10), f"the forked child {child} did not die"
    assert remove_stale_dirs(private_dir()) >= 1  # what the SIGKILLed job left in the runtime directory


def _with_shm_of(mib: int, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python) in a mount namespace whose ``/dev/shm`` is a fresh ``mib`` MiB tmpfs (a
    container's), with the default places for rings; it must exit 0."""
    base = {k: v for k, v in os.environ.items() if k != "COORDINATOR_RING_DIR"}
    mount = f'mount -t tmpfs -o size={mib}m tmpfs /dev/shm && exec "$0" -c "$1"'
    r = subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount, sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(base, PYTHONPATH=str(ROOT), **env),
    )
    assert r.returncode == 0, r.stderr
    return r


def _stored_once(store_dir: Path, n: int) -> None:
    """The run in ``store_dir`` holds rank 0's ``x`` at steps 0 to ``n - 1``, each once."""
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert s.values("x", 0) == [(i, float(i)) for i in range(n)]
    finally:
        s.close()


_SMALL_SHM = """
import os
from pathlib import Path
import coordinator
from coordinator.transport.ring import RingWriter
RingWriter(Path("/dev/shm/coordinator-old-0-1.ring"), 8 << 20).close()  # a ring a job left: nobody holds it
run = coordinator.init_run(project="small-shm", settings=coordinator.Settings(rings=True))
for s in range(1000):
    run.log({"x": float(s)}, step=s)
run.wait(timeout=60)
print(run._ring.path, run.stats()["ring_points"], flush=True)
run.stop()
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_rank_whose_ring_finds_no_room_in_shared_memory_says_so_and_names_the_rings_left_there(
    store_dir: Path,
) -> None:
    """In a mount namespace whose /dev/shm is a 12 MiB tmpfs holding an 8 MiB ring a job left (as a container's
    64 MiB fills), a rank's ring (which asks for 4x its size free: not even 1 MiB fits) goes to its spool
    directory: it says where, why, and what the left rings there take; and its rows still go through it,
    every one stored."""
    r = _with_shm_of(12, _SMALL_SHM)
    path, points = r.stdout.split()
    assert Path(path).parent.parent == store_dir / "spool" and int(points) == 1000, r.stdout
    [said] = [line for line in r.stderr.splitlines() if "rank's ring is in" in line]
    assert re.search(r"not in /dev/shm \(/dev/shm: [0-9]{7} bytes free, under 6[0-9]{7}\)", said), said
    assert "1 ring(s) that ended jobs left there take 8 MiB" in said, said
    _stored_once(store_dir, 1000)
    assert not Path(path).exists()


_CONTAINER_SHM = """
import logging
import os
from pathlib import Path
import coordinator
from coordinator.transport.ring import RingWriter, read_header
logging.basicConfig(level=logging.INFO)
others = [RingWriter(Path(f"/dev/shm/coordinator-other-{r}-1.ring"), 8 << 20) for r in range(int(os.environ["OTHERS"]))]
run = coordinator.init_run(project="container-shm", settings=coordinator.Settings(rings=True))
for s in range(1000):
    run.log({"x": float(s)}, step=s)
run.wait(timeout=60)
fd = os.open(run._ring.path, os.O_RDONLY)
print(run._ring.path, read_header(fd)[0], run.stats()["ring_points"], flush=True)
os.close(fd)
run.stop()
for w in others:
    w.close()
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
@pytest.mark.parametrize(("others", "mib"), [(2, 8), (3, 4), (4, 16)])
def test_in_a_containers_64_mib_shared_memory_a_default_ring_is_made_smaller_there_while_half_stays_free(
    store_dir: Path, others: int, mib: int
) -> None:
    """A container's /dev/shm (a 64 MiB tmpfs in a mount namespace) that two other ranks' 8 MiB rings
    use has no room for a 16 MiB ring (it asks 4x its size free) but has for an 8 MiB one that leaves
    half of it free: the rank's default-sized ring is made there at 8 MiB and says so; with three, at
    4 MiB. With four, no smaller ring leaves half free, and the ring goes whole to the spool directory.
    Every row it takes is stored once."""
    r = _with_shm_of(64, _CONTAINER_SHM, OTHERS=str(others))
    path, capacity, points = r.stdout.split()
    assert int(points) == 1000, r.stdout
    assert int(capacity) == mib << 20, r.stdout
    if mib < 16:
        assert Path(path).parent == Path("/dev/shm"), r.stdout
        assert f"is {mib} MiB, not 16" in r.stderr, r.stderr
    else:
        assert Path(path).parent.parent == store_dir / "spool", r.stdout
        assert "rank's ring is in" in r.stderr, r.stderr
    _stored_once(store_dir, 1000)
