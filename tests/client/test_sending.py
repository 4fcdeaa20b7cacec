"""The sender a rank starts: its flush interval follows the job's size unless it is set."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import coordinator
from coordinator.journal.store import LocalStore, list_runs
from coordinator.transport import wire
from coordinator.transport.spool import spool_records

pytestmark = pytest.mark.integration


def _spooled_batches(
    store_dir: Path, world_size: int, seconds: float, flush_interval_s: float | None = None
) -> tuple[int, list[float]]:
    """Log a point every 5 ms for ``seconds`` as rank 0 of an offline ``world_size``-rank job.

    Returns how many batches the sender spooled and the wall-clock time of each one's cut, in
    order (offline, the spool is the run's destination: each flush that had points is one BATCH
    record). Every logged point must be in them once.
    """
    with coordinator.init_run(
        mode="offline",
        name=f"w{world_size}",
        settings=coordinator.Settings(rank=0, world_size=world_size, flush_interval_s=flush_interval_s),
    ) as run:
        run_id = run.id
        step = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            run.log({"loss": float(step)}, step=step)
            step += 1
            time.sleep(0.005)
        run.wait(30)
    [spool] = [p for p in store_dir.rglob(f"*{run_id}*") if p.is_dir() and any(p.glob("rank-0-*"))]
    cuts: list[float] = []
    steps: list[int] = []
    for rank_dir in spool.glob("rank-0-*"):
        for rec in spool_records(rank_dir):
            if rec.kind != wire.BATCH:
                continue
            batch = wire.decode_batch(rec.payload, blocks=False)
            cuts.append(batch.ts)
            steps += [s for key, col, _ in batch.metrics if key == "loss" for s in col]
    assert sorted(steps) == list(range(step)), "every logged point spooled once"
    return len(cuts), cuts


def test_a_large_job_flushes_every_world_size_over_2560_seconds(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At 1024 ranks a rank flushes every 400 ms, not every 50: an eighth of the batches, every point kept.

    Rank 0 says so once in the log, with the kill window that comes with it. The same loop in an
    8-rank job flushes every 50 ms: about eight times the batches.
    """
    with caplog.at_level(logging.INFO, logger="coordinator"):
        large, _ = _spooled_batches(store_dir, 1024, 1.5)
    assert 2 <= large <= 6, f"{large} batches in 1.5 s at 1024 ranks (every 0.4 s: ~4)"
    said = [r.getMessage() for r in caplog.records if "flushes every" in r.getMessage()]
    assert said == [
        "1024 ranks: each rank flushes every 0.40 s (Settings.flush_interval_s unset), so that the aggregator "
        "receives at most ~2560 batches a second; a SIGKILLed rank may lose its last 0.40 s"
    ]
    small, _ = _spooled_batches(store_dir, 8, 1.5)
    print(f"batches in 1.5 s: {large} at 1024 ranks, {small} at 8")
    assert small > large + 8, f"{small} batches at 8 ranks against {large} at 1024"


@pytest.mark.usefixtures("socket_path")
def test_a_large_job_keeps_a_50_ms_kill_window_by_copying_between_its_longer_flushes(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rank 0 of a 1024-rank job with an aggregator: 400 ms flushes, and copies every ~25 ms between them.

    Rank 0's line says a kill loses 50 ms, not 400; every point is stored once. (Offline, above,
    there is no aggregator to recover copies: the kill window is the interval, and the line says so.)
    """
    with caplog.at_level(logging.INFO, logger="coordinator"):
        settings = coordinator.Settings(rank=0, world_size=1024, stop_grace_s=1.0)
        # The other 1023 ranks never connect: the run is closed as failed after the stop grace.
        # (Checked after it: an assertion failing inside would be masked by the close's error.)
        with (
            pytest.raises(coordinator.DeliveryError, match="rank 1023 never connected"),
            coordinator.init_run(name="w1024", settings=settings) as run,
        ):
            copies, kill_s = run._sender._pipe.copies, run._sender.cfg.kill_window_s
            early_cuts = run._sender.cfg.copies_cut
            for s in range(200):
                run.log({"loss": float(s)}, step=s)
                time.sleep(0.005)
            run.wait(30)
            made = -1 if copies is None else copies.copies
    assert kill_s == 0.05 and not early_cuts
    assert made >= 10, made  # ~1 s of logging, a copy every ~25 ms
    said = [r.getMessage() for r in caplog.records if "flushes every" in r.getMessage()]
    assert said == [
        "1024 ranks: each rank flushes every 0.40 s (Settings.flush_interval_s unset), so that the aggregator "
        "receives at most ~2560 batches a second; a SIGKILLed rank may lose its last 0.05 s of its metrics (copied "
        "between flushes), 0.40 s of fields and texts"
    ]
    [info] = [i for i in list_runs(store_dir) if i.name == "w1024"]
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert st.values("loss", 0) == [(s, float(s)) for s in range(200)]
    finally:
        st.close()


def test_a_large_jobs_rank_whose_points_a_copy_cannot_take_is_cut_at_its_flush_interval_not_every_50_ms(
    store_dir: Path,
) -> None:
    """A field written at every step of a 1024-rank job: a copy cannot take it, and the automatic kill window does
    not bring a cut every 50 ms (20 batches a second from each of 1024 ranks, the load the 400 ms interval keeps
    off the aggregator); the generation waits for the flush, as without copies. A ``kill_window_s`` the user
    sets does cut (test below)."""
    settings = coordinator.Settings(rank=0, world_size=1024, stop_grace_s=1.0)
    with (
        pytest.raises(coordinator.DeliveryError, match="rank 1023 never connected"),
        coordinator.init_run(name="w1024-auto", settings=settings) as run,
    ):
        pipe = run._sender._pipe
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.2:
            run["progress/n"] = n  # before the point: the check in append() finds the field
            run["x"].append(float(n))
            n += 1
            time.sleep(0.002)
        cuts, copied = pipe.cut_batches, (-1 if pipe.copies is None else pipe.copies.copies)
        run.wait(30)
    assert 0 <= copied <= cuts + 1  # copies are on; a generation is refused at its first check that sees a field
    assert 1 <= cuts <= 5, cuts  # one a 400 ms flush (~3 in 1.2 s), not one a kill window (~24)
    [info] = [i for i in list_runs(store_dir) if i.name == "w1024-auto"]
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert st.values("x", 0) == [(s, float(s)) for s in range(n)]
        assert st.field("progress/n") == ("int", n - 1)
    finally:
        st.close()


def test_a_rank_flushes_on_the_wall_clocks_multiples_of_its_interval(store_dir: Path) -> None:
    """The flush grid is the wall clock's (as nodes' clocks agree), not this node's monotonic clock's.

    Every timed flush of a 1 s interval is cut just after a whole second of the wall clock. On the
    monotonic clock's grid (which starts at the node's boot) the cuts fell at one phase of the
    second per node, whatever the other nodes did.
    """
    _, cuts = _spooled_batches(store_dir, 4, 3.2, flush_interval_s=1.0)
    timed = cuts[:-1]  # the last is wait()'s flush, at once
    assert len(timed) >= 2, cuts
    phases = [t % 1.0 for t in timed]
    assert all(p < 0.08 for p in phases), f"cut at {phases} s past the second"


@pytest.mark.usefixtures("socket_path")
def test_a_kill_window_below_the_flush_interval_copies_between_flushes_and_leaves_no_file(store_dir: Path) -> None:
    """``kill_window_s=0.05`` with 0.5 s flushes: the sender copies about ten times a flush; every point is stored
    once, and a run that closes clean leaves neither a copy nor its spool behind."""
    settings = coordinator.Settings(rank=0, world_size=1, flush_interval_s=0.5, kill_window_s=0.05)
    with coordinator.init_run(name="kw", settings=settings) as run:
        copies = run._sender._pipe.copies
        assert copies is not None
        for s in range(100):
            run.log({"a": float(s), "b": -float(s)}, step=s)
            time.sleep(0.01)
        run.wait(30)
        assert copies.copies >= 10, copies.copies
    assert not copies.dir.exists()
    [info] = list_runs(store_dir)
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert st.values("a", 0) == [(s, float(s)) for s in range(100)]
        assert st.values("b", 0) == [(s, -float(s)) for s in range(100)]
    finally:
        st.close()


def test_a_kill_window_not_below_the_flush_interval_or_without_an_aggregator_copies_nothing(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At or above the flush interval the flushes already keep it; offline a copy has nowhere to be recovered: said."""
    s = coordinator.Settings(rank=0, world_size=1, flush_interval_s=0.05, kill_window_s=0.05)
    with coordinator.init_run(name="kw1", settings=s) as run:
        assert run._sender._pipe.copies is None
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        s = coordinator.Settings(rank=0, world_size=1, flush_interval_s=0.5, kill_window_s=0.05)
        with coordinator.init_run(name="kw2", mode="offline", settings=s) as run:
            assert run._sender._pipe.copies is None
    assert any("kill_window_s=0.05 needs a spool and an aggregator" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("socket_path")  # with a ring, append() without a step is a row: no copy, no cut
@pytest.mark.parametrize("field", [False, True], ids=["steps_numbered", "a_field_each_step"])
def test_with_copies_steps_the_sender_numbers_are_copied_and_a_field_is_cut_once_a_kill_window(
    field: bool, store_dir: Path
) -> None:
    """``append()`` without steps, 1 s flushes, a 0.1 s kill window: the copies take those points (numbered when read
    back, as the sender numbers them), so the rank is cut about once a flush. With a field written each step a
    copy cannot take the generation, and the sender cuts instead, once a kill window (not at every copy check).
    Every point is stored once, numbered in order, either way."""
    settings = coordinator.Settings(rank=0, world_size=1, flush_interval_s=1.0, kill_window_s=0.1)
    name = f"kw-auto-{field}"
    with coordinator.init_run(name=name, settings=settings) as run:
        pipe = run._sender._pipe
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:
            if field:
                run["progress/n"] = n
            run["x"].append(float(n))
            n += 1
            time.sleep(0.002)
        cuts, copied = pipe.cut_batches, (-1 if pipe.copies is None else pipe.copies.copies)
        run.wait(30)
    if field:
        assert 5 <= cuts <= 15, cuts  # about one a kill window (10 in the second), not one a check
    else:
        # the 1 s grid's flushes and a copy every ~50 ms; on a loaded machine a copy made late is a cut or two
        # more (4 in a stress run), where a cut every kill window would be ~10
        assert cuts <= 5 and copied >= 10, (cuts, copied)
    [info] = [i for i in list_runs(store_dir) if i.name == name]
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        assert st.values("x", 0) == [(s, float(s)) for s in range(n)]
    finally:
        st.close()
