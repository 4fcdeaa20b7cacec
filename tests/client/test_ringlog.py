"""``Settings.rings`` on a real rank 0 and its aggregator: which calls go through the ring, and what they promise."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import coordinator
from coordinator.journal.store import MAIN_RANK
from coordinator.transport.ringrows import names_path
from coordinator.transport.sender import SenderThread
from tests.client.helpers import open_store

pytestmark = pytest.mark.usefixtures("ring_path")


def _ring_path(run: coordinator.Run) -> Path:
    ring = run._ring
    assert ring is not None and ring.on, "the aggregator did not say it reads the ring"
    return ring.path


def test_dicts_at_steps_go_through_the_ring_everything_else_over_the_socket_all_stored_once(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COORDINATOR_RING_DIR")  # the default place: /dev/shm where the machine has one
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        path = _ring_path(run)
        assert path.exists() and names_path(path).exists()
        assert path.parent == Path("/dev/shm") or path.parent.parent.name == "spool", path  # no room: the spool
        for s in range(300):
            run.log({"a": float(s), "b": s, "c": np.float32(0.5)}, step=s)  # ring
        run.log({"n": 1.0})  # no step, a new key: numbered here (0, as the sender would), a row
        run.log({"p": 2.0}, step=0, policy="sum")  # a policy's claim travels over the socket
        run["t"].append("text", step=0)
        run["f"] = 3
        run["a"].append(300.0, step=300)  # an append at a step: a row of its own
        assert run.stats()["ring_points"] == 902
        run.wait(30)
        s = open_store(store_dir)  # wait() returned: every call before it is in the store, ring rows too
        try:
            assert s.values("a", 0) == [(i, float(i)) for i in range(301)]
            assert s.values("b", 0) == [(i, float(i)) for i in range(300)]
            assert s.values("c", 0) == [(i, 0.5) for i in range(300)]
            assert s.values("n", 0) == [(0, 1.0)] and s.values("p", 0) == [(0, 2.0)]
            assert s.key_policies()["p"] == "sum"
        finally:
            s.close()
    assert not path.exists() and not names_path(path).exists()  # removed once the BYE was answered
    s = open_store(store_dir)
    try:
        rep = s.run_info().report
        assert rep is not None and rep["ring_points"] == 902 and rep["ring_errors"] == 0
        assert rep["per_rank"]["0"]["ring_points"] == 902 and rep["per_rank"]["0"]["ring_full"] == 0
        assert len(s.values("a", MAIN_RANK)) == 301
    finally:
        s.close()


def test_a_ring_the_aggregator_does_not_read_is_removed_at_once_and_every_point_goes_over_the_socket(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank on another machine than its aggregator (told apart by the boot id in its HELLO; here the rank's is
    another machine's) keeps no ring: the first WELCOME refuses it, and the rank removes it, offers it no more
    in a HELLO, and sends every point over its socket, each stored once."""
    monkeypatch.setattr("coordinator.client.ringlog.boot_id", lambda: "another-machine")
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        ring = run._ring
        sender = run._sender
        assert ring is not None and sender is not None and not ring.on
        assert not ring.path.exists() and not names_path(ring.path).exists(), "the refused ring is still there"
        assert "ring" not in sender.cfg.hello, "a reconnect's HELLO would offer the removed ring"
        for s in range(300):
            run.log({"a": float(s), "b": s}, step=s)
            run["c"].append(float(s), step=s)
        assert run.stats()["ring_points"] == 0
        run.wait(30)
    s = open_store(store_dir)
    try:
        for k in "abc":
            assert s.values(k, 0) == [(i, float(i)) for i in range(300)], k
        rep = s.run_info().report
        assert rep is not None and rep["ring_points"] == 0 and rep["per_rank"]["0"]["ring_points"] == 0
    finally:
        s.close()


def test_a_rank_whose_ring_fills_faster_than_the_aggregator_reads_asks_for_a_read_and_keeps_its_rows_in_it(
    store_dir: Path,
) -> None:
    """After a pause the aggregator reads the rings a second apart; a rank that then writes its 1 MiB ring full
    in about half a second asks for a read once it is a quarter full (its sender PINGs), so no row finds the
    ring full and goes over the socket: all 150,000 go through the ring, each stored once."""
    settings = coordinator.Settings(rings=True, ring_bytes=1 << 20, system_metrics_interval_s=0)
    with coordinator.init_run(project="t", settings=settings) as run:
        _ring_path(run)
        run.log({"x": -1.0}, step=0)
        run.wait(30)
        time.sleep(1.5)  # idle: the aggregator's reads are a second apart now
        t0 = time.monotonic()
        for i in range(300):  # 500 rows (40 bytes each) every 10 ms: the ring fills in ~0.5 s unread
            for s in range(1 + 500 * i, 501 + 500 * i):
                run.log({"x": float(s)}, step=s)
            time.sleep(max(0.0, t0 + 0.01 * (i + 1) - time.monotonic()))
        st = run.stats()
        assert st["ring_full"] == 0 and st["ring_points"] == 150_001, st
        run.wait(60)
    s = open_store(store_dir)
    try:
        assert s.values("x", 0) == [(0, -1.0)] + [(i, float(i)) for i in range(1, 150_001)]
    finally:
        s.close()


def test_a_one_key_call_goes_into_the_ring_only_with_a_plain_number(store_dir: Path) -> None:
    """A scalar's row is checked on its own fast path: a tensor (read on the sender thread, never
    here) and a type a row does not take go over the socket, bad values raise, and nothing is lost."""
    torch = pytest.importorskip("torch")
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        for s in range(100):
            run.log({"loss": float(s) if s % 2 else s}, step=s)
        run.log({"loss": torch.tensor(100.0)}, step=100)
        run.log({"loss": np.float16(0.5)}, step=101)
        with pytest.raises(TypeError):
            run.log({"loss": "x"}, step=102)
        with pytest.raises(ValueError):
            run.log({"loss": 10**400}, step=102)
        assert run.stats()["ring_points"] == 100
        run.wait(30)
        s = open_store(store_dir)
        try:
            assert s.values("loss", 0) == [(i, float(i)) for i in range(100)] + [(100, 100.0), (101, 0.5)]
        finally:
            s.close()


@pytest.mark.parametrize(
    ("data", "step", "exc"),
    [
        ({"loss": 1.0, "acc": "x"}, 0, TypeError),
        ({"loss": 10**400, "acc": 1.0}, 0, ValueError),
        ({"loss": 1.0, "a//b": 1.0}, 0, ValueError),
        ({"loss": 1.0, "f": 1.0}, 0, ValueError),  # f is a field
        ({"loss": 1.0}, -1, ValueError),
        ({"loss": 1.0}, 2**63, ValueError),
    ],
)
def test_with_rings_bad_input_raises_at_the_call_site_and_keeps_nothing(
    store_dir: Path, data: dict[str, object], step: int, exc: type[Exception]
) -> None:
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        run["f"] = 1
        run.log({"loss": 0.25, "acc": 0.5}, step=0)
        with pytest.raises(exc):
            run.log(data, step=step)
        run.log({"loss": 0.125, "acc": 0.75}, step=1)
        assert run.stats()["ring_points"] == 4
        run.wait(30)
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == [(0, 0.25), (1, 0.125)]
        assert s.values("acc", 0) == [(0, 0.5), (1, 0.75)]
    finally:
        s.close()


def test_a_full_ring_sends_over_the_socket_counts_it_and_loses_nothing(store_dir: Path) -> None:
    """A 4 KiB ring holds ~36 rows of ten keys: with the aggregator frozen the rest go over the socket, the
    first for want of room (counted), the others behind it until it is acknowledged."""
    keys = [f"k{j}" for j in range(10)]
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True, ring_bytes=4096)) as run:
        _ring_path(run)
        assert run._agg is not None and run._agg.pid is not None
        agg = psutil.Process(run._agg.pid)
        agg.suspend()
        try:
            for s in range(200):
                run.log({k: float(s + j) for j, k in enumerate(keys)}, step=s)
        finally:
            agg.resume()
        st = run.stats()  # the rows after the first the ring had no room for wait behind it, over the socket
        assert 0 < st["ring_points"] < 2000 and st["ring_full"] >= 1 and st["ring_held"] >= 1
        assert st["ring_points"] // 10 + st["ring_full"] + st["ring_held"] == 200, st  # each row counted once
        run.wait(30)
    s = open_store(store_dir)
    try:
        for j, k in enumerate(keys):
            assert s.values(k, 0) == [(i, float(i + j)) for i in range(200)]
        rep = s.run_info().report
        assert rep is not None and rep["per_rank"]["0"]["ring_full"] == st["ring_full"]
        assert rep["per_rank"]["0"]["ring_held"] == st["ring_held"]
    finally:
        s.close()


def test_ring_held_counts_the_rows_held_behind_a_write_over_the_socket_not_the_writes_that_go_there(
    store_dir: Path,
) -> None:
    """A tensor's append of a key with a frame goes over the socket and holds the frame's rows behind it while
    it is unacknowledged (the aggregator frozen): the plain rows after it are counted as held, the tensors not."""
    torch = pytest.importorskip("torch")
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        _ring_path(run)
        run["g"].append(0.5, step=0)  # the frame ("g",) in the ring
        run.wait(30)
        assert run._agg is not None and run._agg.pid is not None
        agg = psutil.Process(run._agg.pid)
        agg.suspend()
        try:
            for s in range(1, 21):
                run["g"].append(torch.tensor(float(s)) if s % 2 else float(s), step=s)
            st = run.stats()
        finally:
            agg.resume()
        assert st["ring_held"] == 10 and st["ring_points"] == 1 and st["ring_full"] == 0, st
        run.wait(30)
    s = open_store(store_dir)
    try:
        assert s.values("g", 0) == [(i, 0.5 if i == 0 else float(i)) for i in range(21)]
    finally:
        s.close()


def test_no_ring_offline_where_no_aggregator_reads_it(store_dir: Path) -> None:
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True, mode="offline")) as run:
        assert run._ring is None
        run.log({"a": 1.0, "b": 2.0}, step=0)
        assert "ring_points" not in run.stats()


def test_an_owned_keys_writes_without_a_step_continue_after_its_last_step_as_the_sender_would(
    store_dir: Path,
) -> None:
    """A key written into the ring at explicit steps has its steps numbered on the rank: a write without
    one continues after its last write, whichever path it took (the sender never saw the ring's steps)."""
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        _ring_path(run)
        for s in range(10):
            run.log({"a": float(s), "b": 0.0}, step=s)  # a frame in the ring
        with pytest.raises(TypeError):
            run["a"].append("x")  # refused: nothing of it kept, its step neither
        with pytest.raises(ValueError):
            run.log({"a": 1.0, "bad//key": 1.0}, step=50)
        run["a"].append(10.0)  # no step: 10, into the ring as a row of its own
        run.log({"a": 11.0})  # 11
        run["a"].append(20.0, step=20)
        run["a"].append(21.0)  # 21
        run.log({"b": 1.0})  # b's last step was 9: 10
        run.log({"a": 22.0, "b": 11.0})  # two owned keys whose last steps differ (21, 10): each its own
        run.log({"b": 12.0, "new": 0.0})  # an owned key beside a new one: 12, and 0 (the sender's)
        for s in range(30, 33):
            run.log({"c": 0.0, "d": 0.0}, step=s)
        run.log({"c": 1.0, "d": 1.0})  # their last steps agree (32): 33, as a row of their frame
        run["z"].append(0.0)  # a new key without a step: numbered here as the sender would, into the ring
        run["z"].append(1.0)
        run.wait(30)
    s = open_store(store_dir)
    try:
        assert [st for st, _ in s.values("a", 0)] == [*range(12), 20, 21, 22]
        assert s.values("a", 0)[-3:] == [(20, 20.0), (21, 21.0), (22, 22.0)]
        assert s.values("b", 0)[-3:] == [(10, 1.0), (11, 11.0), (12, 12.0)] and len(s.values("b", 0)) == 13
        assert s.values("z", 0) == [(0, 0.0), (1, 1.0)]
        assert s.values("c", 0)[-1] == (33, 1.0) and s.values("d", 0)[-1] == (33, 1.0)
        assert s.values("new", 0) == [(0, 0.0)]
    finally:
        s.close()


def test_a_step_written_through_the_ring_and_over_the_socket_keeps_the_later_write(store_dir: Path) -> None:
    """One key's step written once as a row and once over the socket (a type a row does not take) keeps
    the later write in both orders, through a scalar's frame and a wider one. The aggregator reads a
    rank's ring before each of the rank's batches; a row written while its key's write over the socket
    is not acknowledged goes over the socket too, behind it, and into the ring again once it is."""
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        _ring_path(run)
        for s in range(0, 20, 2):
            wide = s % 4 == 0
            run.log({"a": 1.0, "b": 0.0} if wide else {"a": 1.0}, step=s)  # a row first ...
            run.log({"a": np.float16(2.0)}, step=s)  # ... then the socket: 2.0 is the step's value
            run.log({"a": np.float16(3.0)}, step=s + 1)  # the socket first ...
            run.log({"a": 4.0, "b": 0.0} if wide else {"a": 4.0}, step=s + 1)  # ... then a row: 4.0
            run.wait(30)  # acknowledged: the next step's first row goes into the ring again
        assert run.stats()["ring_points"] == 5 * 2 + 5  # each step's first write
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(i, 2.0 if i % 2 == 0 else 4.0) for i in range(20)]
        assert s.values("b", 0) == [(i, 0.0) for i in range(20) if i % 4 < 2]
    finally:
        s.close()


def _quiet_sender(run: coordinator.Run) -> SenderThread:
    """The run's sender, once its ring is on and wait()'s replies are in."""
    _ring_path(run)
    sender = run._sender
    assert sender is not None
    run.wait(30)
    return sender


def _log_rows(run: coordinator.Run, s: int, until: float) -> int:
    """Log a scalar row every 20 ms from step ``s`` until ``until`` (monotonic); the next step."""
    while time.monotonic() < until:
        run.log({"a": float(s)}, step=s)
        s += 1
        time.sleep(0.02)
    return s


def _check_rows_and_no_rank_lost(store_dir: Path, steps: int) -> None:
    st = open_store(store_dir)
    try:
        assert [e for e in st.events() if e[1] == "rank_lost"] == []
        assert [p for p, _ in st.values("a", 0)] == list(range(steps))
    finally:
        st.close()


def test_rows_in_the_ring_stand_for_the_heartbeat_and_keep_the_rank_live(store_dir: Path) -> None:
    """While a rank writes rows, its sender skips its heartbeat (no PING, so no PONG comes back) and the
    aggregator counts the rows it reads as hearing from the rank: silent on its socket for twice the
    liveness timeout, the rank is not lost. Once the rows stop, the heartbeat comes back."""
    settings = coordinator.Settings(
        rings=True, heartbeat_interval_s=0.3, liveness_timeout_s=1.5, system_metrics_interval_s=0
    )
    with coordinator.init_run(project="t", settings=settings) as run:
        sender = _quiet_sender(run)
        t0 = time.monotonic()
        s = _log_rows(run, 0, t0 + 0.5)  # the replies to wait()'s requests are in
        replied = sender.last_reply_at
        s = _log_rows(run, s, t0 + 3.5)
        assert sender.last_reply_at == replied, "a PING went out although the ring brought rows"
        _heartbeat_again(sender, replied, quiet_s=0.3)  # no rows: heartbeats again
        run.wait(30)
    _check_rows_and_no_rank_lost(store_dir, s)


def _heartbeat_again(sender: SenderThread, replied: float, quiet_s: float) -> None:
    """Once the rows stop, the sender's PING (and so its PONG) comes within two quiet looks: the look after
    the last row still finds rows (written since the look before), the one after finds none and pings.
    Allowed: those two looks, a heartbeat, and 0.8 s for a late wake-up on a loaded machine."""
    stopped = time.monotonic()
    bound = 2 * quiet_s + sender.cfg.heartbeat_interval_s + 0.8
    while sender.last_reply_at == replied and time.monotonic() - stopped < bound:
        time.sleep(0.01)
    took = time.monotonic() - stopped
    assert sender.last_reply_at > replied, f"no heartbeat came back in {took:.2f} s after the rows stopped"


def _wakeups(thread: threading.Thread) -> int:
    """The thread's voluntary context switches so far: each time it slept (a poll, a wait for the GIL)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_while_rows_stand_for_the_heartbeat_the_sender_wakes_every_quiet_interval_not_every_heartbeat(
    store_dir: Path,
) -> None:
    """Heartbeat 0.2 s and liveness 6 s: while rows come, the sender looks again only every 1 s (5
    heartbeats, a sixth of the liveness timeout), so it sleeps through ~3 wake-ups in 3.5 s where a
    wake-up a heartbeat would be ~17. Once the rows stop, its PING comes within two of those looks."""
    settings = coordinator.Settings(
        rings=True, heartbeat_interval_s=0.2, liveness_timeout_s=6.0, system_metrics_interval_s=0
    )
    with coordinator.init_run(project="t", settings=settings) as run:
        sender = _quiet_sender(run)
        t0 = time.monotonic()
        s = _log_rows(run, 0, t0 + 0.5)  # the replies to wait()'s requests are in; the quiet interval began
        before, replied = _wakeups(sender), sender.last_reply_at
        s = _log_rows(run, s, t0 + 4.0)
        woke = _wakeups(sender) - before
        assert sender.last_reply_at == replied, "a PING went out although the ring brought rows"
        assert woke <= 8, f"the sender woke {woke} times in 3.5 s of rows"
        _heartbeat_again(sender, replied, quiet_s=1.0)  # no rows: the heartbeat comes back
        run.wait(30)
    _check_rows_and_no_rank_lost(store_dir, s)


def test_while_rows_stand_for_the_heartbeat_the_dozing_sender_looks_in_a_few_lines_not_a_full_turn(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's quiet looks while rows come (every 1 s here) are its doze's few lines: each asks whether
    rows came and waits again, without the loop's full turn (whose housekeeping it would run). The full turn
    held the GIL ~150 µs there on a cold CPU, the doze ~80 (``benchmarks.gil_holds``, at the default)."""
    settings = coordinator.Settings(
        rings=True, heartbeat_interval_s=0.2, liveness_timeout_s=6.0, system_metrics_interval_s=0
    )
    with coordinator.init_run(project="t", settings=settings) as run:
        sender = _quiet_sender(run)
        asked: list[float] = []
        turns: list[float] = []
        heard, housekeeping = sender.cfg.heard, sender._housekeeping

        def counting_heard() -> bool:
            asked.append(time.monotonic())
            return heard()

        def counting_housekeeping(now: float) -> None:
            turns.append(now)
            housekeeping(now)

        monkeypatch.setattr(sender.cfg, "heard", counting_heard)
        monkeypatch.setattr(sender, "_housekeeping", counting_housekeeping)
        t0 = time.monotonic()
        s = _log_rows(run, 0, t0 + 0.5)  # the quiet interval began with the replies to wait()'s requests
        asked.clear()
        turns.clear()
        s = _log_rows(run, s, t0 + 4.0)
        assert len(asked) >= 2, f"the sender asked whether rows came {len(asked)} times in 3.5 s"
        assert len(turns) <= 1, f"{len(turns)} full turns in 3.5 s of rows, for {len(asked)} looks"
        time.sleep(1.6)  # no rows: the heartbeat comes back, from a full turn
        assert turns, "no full turn once the rows stopped"
        run.wait(30)
    _check_rows_and_no_rank_lost(store_dir, s)
