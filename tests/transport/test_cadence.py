"""The sender loop's timing: flush every interval, doze when idle, wake on a write or find a stray one."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from coordinator.transport.buffer import Buffer
from coordinator.transport.cadence import QUIET_FLUSHES, Cadence, wall_shift


def _cadence(quiet: int = 0) -> tuple[Cadence, Buffer, list[int]]:
    """A cadence at t=10 s after ``quiet`` empty flushes."""
    woken: list[int] = []
    b = Buffer(max_points=1000)
    b.wake_at(100, lambda: woken.append(1))
    c = Cadence(b, interval_s=0.05, heartbeat_s=1.0, now=10.0 - 0.05 * quiet)
    for i in range(quiet):
        c.flushed(10.0 - 0.05 * (quiet - 1 - i), idle=True)
    return c, b, woken


def test_the_timer_flushes_every_interval_while_there_is_work() -> None:
    c, b, _ = _cadence()
    assert c.wake_at(last_send=9.9) == pytest.approx(10.05)
    assert not c.flush_due(10.02)
    assert c.flush_due(10.05)
    c.flushed(10.05, idle=False)
    c.settle(settled=True)  # the flush found points: no doze
    assert not c.dozing and c.wake_at(10.05) == pytest.approx(10.1)
    b.flush_requested = True  # wait(), or a full batch
    assert c.flush_due(10.06)


def test_an_idle_settled_sender_dozes_after_two_empty_flushes_until_its_heartbeat() -> None:
    c, b, _ = _cadence(quiet=QUIET_FLUSHES - 1)
    c.settle(settled=True)  # one empty flush: a rank between two steps, the timer keeps running
    assert not c.dozing
    c.flushed(10.05, idle=True)
    c.settle(settled=False)  # a batch still in flight: the timer keeps running
    assert not c.dozing
    c.settle(settled=True)
    assert c.dozing and b.dozing
    assert c.wake_at(last_send=10.0) == pytest.approx(11.0)
    assert not c.flush_due(11.0)  # the heartbeat wake-up: nothing to flush, still dozing
    assert c.dozing


def test_a_write_wakes_the_doze_and_starts_one_flush_interval() -> None:
    c, b, woken = _cadence(quiet=QUIET_FLUSHES)
    c.settle(settled=True)
    with b.lock:
        assert b.pending >= b.mark and not b.past_mark()  # log()'s compare on a dozing buffer
        b.pending += 1
    assert woken == [1]
    assert not c.flush_due(10.3)  # woken at 10.3: the interval starts
    assert not c.dozing and c.wake_at(10.3) == pytest.approx(10.35)
    assert c.flush_due(10.36)


def test_a_write_that_did_not_wake_the_doze_is_flushed_at_the_heartbeat() -> None:
    c, b, woken = _cadence(quiet=QUIET_FLUSHES)
    c.settle(settled=True)
    b.fields.append(("a", ("int", 1)))  # bypassing add_fields: no wake-up
    assert woken == []
    assert c.flush_due(11.0)
    assert not c.dozing


def test_doze_is_refused_when_a_write_raced_the_settle() -> None:
    c, b, _ = _cadence(quiet=QUIET_FLUSHES)
    b.pending = 3
    c.settle(settled=True)
    assert not c.dozing and not b.dozing


def test_ranks_started_apart_flush_on_the_same_grid() -> None:
    """Two ranks of a node, started 18 ms apart and woken late by different amounts, flush together."""
    flushes = []
    for start, late in ((10.013, 0.0007), (10.031, 0.0031)):
        c = Cadence(Buffer(max_points=1000), interval_s=0.05, heartbeat_s=1.0, now=start)
        times = []
        for _ in range(5):
            t = c.wake_at(last_send=start)
            times.append(round(t, 9))
            c.flushed(t + late, idle=False)
        flushes.append(times)
    assert flushes[0] == flushes[1] == [10.05, 10.1, 10.15, 10.2, 10.25]


@pytest.mark.parametrize("interval", [0.05, 0.02, 0.003, 1.0])
def test_the_next_flush_is_never_more_than_one_interval_away(interval: float) -> None:
    """The kill window: after a flush or a doze's waking write, the next flush is within (0, interval]."""
    rng = random.Random(7)
    nows = [10.3, 0.15, 0.0, 123456.789] + [rng.uniform(0, 1e6) for _ in range(2000)]
    nows += [k * interval for k in (1, 3, 29, 43, 49, 206, 100003)]  # on the grid, where a quotient rounds
    for now in nows:
        shift = rng.choice([0.0, rng.uniform(0, interval), math.nextafter(interval, 0)])
        c = Cadence(Buffer(max_points=1000), interval_s=interval, heartbeat_s=1.0, now=now, shift=shift)
        assert now < c.next_flush <= now + interval
        c.flushed(now, idle=False)
        assert now < c.next_flush <= now + interval


def test_nodes_whose_monotonic_clocks_differ_flush_at_the_same_wall_clock_times() -> None:
    """Two nodes booted at different times (monotonic clocks 5 h apart) flush on the wall clock's grid.

    Their ranks' batches then reach the aggregator together, as a node's do: without the shift
    each node flushed at its own phase of the interval, so one node's ranks could look up to an
    interval late to the straggler check.
    """
    interval = 0.4
    wall_at_start = 1_764_770_000.123
    walls = []
    for mono_at_start, started_after in ((61.777, 0.0), (18_061.2, 0.137)):
        mono = mono_at_start + started_after
        wall = wall_at_start + started_after
        shift = wall_shift(interval, wall=wall, mono=mono)
        c = Cadence(Buffer(max_points=1000), interval_s=interval, heartbeat_s=1.0, now=mono, shift=shift)
        times = []
        for _ in range(4):
            t = c.wake_at(last_send=mono)
            times.append(round(t - mono + wall, 6))  # the flush's wall-clock time
            c.flushed(t + 0.002, idle=False)
        walls.append(times)
    assert walls[0] == walls[1]
    assert all(round(w / interval, 3) == round(w / interval) for w in walls[0])


def test_the_shift_is_read_from_the_clocks() -> None:
    """Read now, the wall clock's grid point lands on a multiple of the interval (to the clocks' read gap)."""
    import time

    shift = wall_shift(0.05)
    assert 0 <= shift < 0.05
    c = Cadence(Buffer(max_points=1000), interval_s=0.05, heartbeat_s=1.0, now=time.monotonic(), shift=shift)
    wall = c.next_flush - time.monotonic() + time.time()
    assert abs(wall / 0.05 - round(wall / 0.05)) < 1e-3


def test_a_wake_up_that_is_no_flush_asks_the_copies_and_a_refused_copy_makes_it_one() -> None:
    """``flush_due(now, copy)``: ``copy`` (the copies' timer) runs on a wake-up with no flush due; False cuts."""
    c, _, _ = _cadence()
    asked: list[float] = []

    def copy(result: bool) -> Callable[[], bool]:
        def f() -> bool:
            asked.append(1.0)
            return result

        return f

    assert not c.flush_due(10.02, copy(True)) and len(asked) == 1
    assert c.flush_due(10.03, copy(False)) and len(asked) == 2
    assert c.flush_due(10.05, copy(True)) and len(asked) == 2  # a flush is due: nothing to ask
