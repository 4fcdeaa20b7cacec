"""Rank 0's aggregator process: a start that dies before READY is retried within the restart budget
(issue 11, item 4); socket directories of SIGKILLed runs are removed at the next start (item 15)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import coordinator
from coordinator.errors import CoordinatorError
from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs
from coordinator.transport.discovery import pid_alive, private_dir, remove_orphan_record
from coordinator.transport.launcher import OWNERS_FILE, AggregatorProcess, remove_stale_dirs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class AggregatorKiller(threading.Thread):
    """SIGKILLs the first ``kills`` aggregator processes this process starts, as soon as they exist
    (long before READY: they are still importing)."""

    def __init__(self, kills: int) -> None:
        super().__init__(name="test-aggregator-killer", daemon=True)
        self.kills = kills
        self.killed: list[int] = []
        self.stop_evt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while len(self.killed) < self.kills and not self.stop_evt.wait(0.002):
            for p in me.children():
                try:
                    if p.pid not in self.killed and "coordinator.aggregator" in p.cmdline():
                        p.kill()
                        self.killed.append(p.pid)
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue


@pytest.fixture
def killer(request: pytest.FixtureRequest) -> Iterator[AggregatorKiller]:
    k = AggregatorKiller(request.param)
    k.start()
    yield k
    k.stop_evt.set()
    k.join(10)


@pytest.mark.parametrize("killer", [1], indirect=True)
def test_an_aggregator_killed_before_ready_is_started_again_and_the_run_works(
    store_dir: Path, killer: AggregatorKiller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "coordinator")
    with coordinator.init_run(settings=coordinator.Settings(max_aggregator_restarts=2)) as run:
        assert killer.killed, "the first aggregator was never seen"
        assert run._agg is not None and run._agg.pid not in killer.killed
        for s in range(1000):
            run.log({"x": float(s)}, step=s)
        run.wait(60)
    before_ready = [r for r in caplog.records if "before it was ready; starting it again (1/2)" in r.getMessage()]
    assert len(before_ready) == 1, caplog.text
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert [s for s, _ in st.values("x", 0)] == list(range(1000))
        assert [s for s, _ in st.values("x", MAIN_RANK)] == list(range(1000))
    finally:
        st.close()
    assert info.report is not None and info.report["points"] == 1000 and info.report["duplicate_batches"] == 0


@pytest.mark.parametrize("killer", [2], indirect=True)
def test_an_aggregator_that_keeps_dying_before_ready_fails_init_run_after_the_budget(
    store_dir: Path, killer: AggregatorKiller
) -> None:
    with pytest.raises(CoordinatorError, match=r"exited with code -9 before it was ready \(2 starts\)"):
        coordinator.init_run(settings=coordinator.Settings(max_aggregator_restarts=1))
    assert len(killer.killed) == 2
    assert not [d for d in private_dir().glob("run-*") if _owned_by(d, os.getpid())], "socket directory left behind"


def _wake_ups(tid: int) -> int:
    """A thread's voluntary context switches so far: each time it slept and was woken."""
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for thread {tid}")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfds are Linux's")
def test_the_supervisor_sleeps_while_the_aggregator_runs_and_restarts_it_when_killed(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "coordinator")
    with coordinator.init_run(settings=coordinator.Settings(max_aggregator_restarts=1)) as run:
        [sup] = [t for t in threading.enumerate() if t.name == "coordinator-supervisor"]
        assert sup.native_id is not None
        for s in range(100):
            run.log({"x": float(s)}, step=s)
        before = _wake_ups(sup.native_id)
        time.sleep(1.0)
        woke = _wake_ups(sup.native_id) - before
        assert woke <= 1, f"the supervisor woke up {woke} times in 1 s while the aggregator ran (it polled)"
        assert run._agg is not None
        first = run._agg.pid
        assert first is not None
        os.kill(first, 9)
        deadline = time.monotonic() + 60
        while run._agg.pid in (first, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run._agg.pid not in (first, None), "the killed aggregator was not restarted"
        for s in range(100, 200):
            run.log({"x": float(s)}, step=s)
        run.wait(60)
    assert "died (exit code -9); restarting it (1/1)" in caplog.text
    [info] = list_runs(store_dir)
    assert info.state == "finished", info.report
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert [s for s, _ in st.values("x", 0)] == list(range(200))
    finally:
        st.close()


def _owned_by(d: Path, pid: int) -> bool:
    try:
        return (d / OWNERS_FILE).read_text().split()[0] == str(pid)
    except (FileNotFoundError, IndexError):
        return False


_RANK0 = """
import sys, time, coordinator
run = coordinator.init_run()
print(run.endpoint, run._agg.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.usefixtures("socket_path")
def test_the_socket_directory_of_a_killed_run_is_removed_at_the_next_start(store_dir: Path) -> None:
    """Rank 0 and its aggregator SIGKILLed together leave their directory; the next start removes it,
    and leaves a live run's directory alone."""
    live = AggregatorProcess("live-run", {}, tcp_host=None)  # made by this (living) process, never started
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", _RANK0], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        endpoint, agg_pid = p.stdout.readline().split()
        sock_dir = Path(endpoint.removeprefix("ipc://")).parent
        assert sock_dir.is_dir() and (sock_dir / OWNERS_FILE).read_text().split() == [str(p.pid), agg_pid]
        assert not (sock_dir / "config.json").exists(), "the aggregator did not delete its config file"
        # Rank 0 frozen first: between the two kills its supervisor would otherwise see the aggregator die
        # and start another (CI saw one, still starting when the next run looked at the directory).
        os.kill(p.pid, signal.SIGSTOP)
        psutil.Process(int(agg_pid)).kill()
        p.kill()
        p.wait(30)
        # SIGKILL is delivered at once, but a process takes a moment to exit (unmapping its memory):
        # the next start below must find both owners gone, as it would after any real crash.
        deadline = time.monotonic() + 30
        while pid_alive(int(agg_pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(int(agg_pid)), "the SIGKILLed aggregator did not exit within 30 s"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    try:
        assert sock_dir.is_dir(), "left behind, as a SIGKILL does"
        with coordinator.init_run(settings=coordinator.Settings(run_id="next")) as run:
            run.log({"x": 1.0}, step=0)
        assert not sock_dir.exists(), "the next start did not remove the stale socket directory"
        assert live.sock_dir.is_dir(), "a live process's directory was removed"
    finally:
        live.cleanup()


def test_stale_rendezvous_records_are_removed_and_live_ones_kept() -> None:
    base = private_dir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    old = time.time() - 60
    files = {
        "dead": (base / "rdzv-test-dead-0.json", {"pid": dead.pid}),
        "live": (base / "rdzv-test-live-0.json", {"pid": os.getpid()}),
        "fresh": (base / "rdzv-test-fresh-0.json", {"pid": dead.pid}),
    }
    try:
        for name, (f, rec) in files.items():
            f.write_text(json.dumps(rec))
            if name != "fresh":
                os.utime(f, (old, old))
        remove_stale_dirs(base)
        assert not files["dead"][0].exists()
        assert files["live"][0].exists() and files["fresh"][0].exists()
    finally:
        for f, _ in files.values():
            f.unlink(missing_ok=True)


def test_the_aggregator_removes_its_own_rank0s_record_even_while_rank0_still_runs(tmp_path: Path) -> None:
    """At the run's end the record of the aggregator's rank 0 goes (it may be SIGTERMed before retracting it).

    A live publisher's record that is not its rank 0's (an elastic restart's) is kept.
    """
    f = tmp_path / "rdzv-test-0.json"
    f.write_text(json.dumps({"pid": os.getpid()}))
    assert not remove_orphan_record(f), "a live publisher's record was removed with no owner given"
    assert not remove_orphan_record(f, owner=os.getppid()), "another live publisher's record was removed"
    assert f.exists()
    assert remove_orphan_record(f, owner=os.getpid())
    assert not f.exists()


def test_a_runtime_dir_too_long_for_a_unix_socket_is_a_clear_config_error(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket path past sockaddr_un's 107 bytes fails at once, naming the variable, not in libzmq after retries."""
    long_dir = tmp_path / ("x" * 90)
    long_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_dir))
    with pytest.raises(coordinator.ConfigError, match="XDG_RUNTIME_DIR"):
        coordinator.init_run(project="p")
    shutil.rmtree(long_dir)
