"""The sender loop's timing: flush every interval, doze when idle, wake on a write or find a stray one."""

from __future__ import annotations

import pytest

from coordinator.transport.buffer import Buffer
from coordinator.transport.cadence import QUIET_FLUSHES, Cadence


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
