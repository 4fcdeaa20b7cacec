"""The sender's GIL slicer: its pause lets a thread that waits for the GIL run in the middle of the work."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.transport.slices import GilSlicer


def _python_work(seconds: float, pause: GilSlicer | None) -> None:
    """Pure-Python work (it holds the GIL), with ``pause.pause()`` between slices of ~5 µs."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(20):
            x += i
        if pause is not None:
            pause.pause()


def test_a_waiting_thread_runs_between_the_slices_of_a_long_stretch() -> None:
    """2 ms of Python (below the 5 ms switch interval): only the slicer's pauses let the other thread in."""
    slicer = GilSlicer(budget_s=50e-6)
    ticks: list[int] = []
    stop = threading.Event()

    def waiter() -> None:  # wakes every 20 µs; to count a tick it needs the GIL
        while not stop.is_set():
            time.sleep(20e-6)
            ticks.append(1)

    th = threading.Thread(target=waiter, name="gil-waiter")
    th.start()
    try:
        during = []
        for _ in range(20):
            time.sleep(0.002)  # the waiter is sleeping, hence waiting for the GIL, when the work starts
            before = len(ticks)
            slicer.start()
            _python_work(0.002, slicer)
            during.append(len(ticks) - before)
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive()
    assert slicer.yields >= 20 * 2  # 2 ms past a 50 µs budget: ~15 yields each on an idle machine, fewer on a busy one
    assert sum(during) > 0, "the waiting thread never ran while the work was in progress"


def test_a_pause_within_the_budget_does_not_yield() -> None:
    slicer = GilSlicer(budget_s=10.0)
    slicer.start()
    for _ in range(100):
        slicer.pause()
    assert slicer.yields == 0


def test_release_yields_whatever_the_stretch_and_starts_a_new_one() -> None:
    slicer = GilSlicer(budget_s=10.0)
    slicer.start()
    slicer.release()
    slicer.release()
    assert slicer.yields == 2
    slicer.pause()  # the stretch restarted at the release: within the budget
    assert slicer.yields == 2


def _spin(seconds: float) -> None:
    """Hold the GIL for ``seconds`` of Python (below the switch interval: nobody else runs Python meanwhile)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_watched_thread_that_sleeps_through_the_stretch_gets_no_yield() -> None:
    """The training thread waits on an event (GIL released) for the whole stretch: pauses past the budget skip."""
    stop = threading.Event()
    th = threading.Thread(target=stop.wait, args=(10,), name="sleeping-trainer")
    th.start()
    try:
        slicer = GilSlicer(budget_s=10e-6, watch=th.ident)
        time.sleep(0.005)  # a window long enough for a verdict (the first start's: quiet)
        slicer.start()
        for _ in range(5):
            _spin(50e-6)
            slicer.pause()
        slicer.release()
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive()
    assert (slicer.yields, slicer.skipped) == (0, 6)


def test_a_watched_thread_that_wakes_during_the_stretch_gets_the_gil_at_the_next_pause() -> None:
    """It wakes, runs until it blocks on the GIL: its CPU clock moved, so the next pause yields and it runs."""
    go = threading.Event()
    ran = threading.Event()

    def trainer() -> None:
        go.wait(10)
        ran.set()  # needs the GIL: blocks until the stretch's holder lets go

    th = threading.Thread(target=trainer, name="waking-trainer")
    th.start()
    try:
        slicer = GilSlicer(budget_s=10e-6, watch=th.ident)
        time.sleep(0.05)  # it is waiting on the event
        slicer.start()
        assert not slicer.busy
        go.set()
        for _ in range(2000):  # until it got a CPU (at once on an idle machine) and ran into the GIL
            _spin(0.001)
            slicer.pause()
            if slicer.yields:
                break
        assert slicer.yields == 1
        assert ran.wait(5)
    finally:
        go.set()
        th.join(5)
    assert not th.is_alive()


def test_a_watched_thread_that_ended_leaves_every_pause_past_the_budget_yielding() -> None:
    th = threading.Thread(target=lambda: None, name="short-trainer")
    th.start()
    slicer = GilSlicer(budget_s=10e-6, watch=th.ident)
    th.join(5)
    task = Path(f"/proc/self/task/{th.native_id}")
    deadline = time.monotonic() + 5
    while task.exists() and time.monotonic() < deadline:  # join() returns before the OS thread is gone
        time.sleep(0.001)
    assert not task.exists()
    slicer.start()
    _spin(50e-6)
    slicer.pause()
    _spin(50e-6)
    slicer.pause()
    assert (slicer.yields, slicer.skipped) == (2, 0)


@pytest.mark.parametrize("starts", [1, 2])
def test_a_busy_watched_thread_gets_every_yield_even_while_its_clock_stands(starts: int) -> None:
    """It ran Python until the GIL was taken from it (the switch interval): blocked on the GIL, its
    clock stands still, yet it wants the GIL back at the first pause past the budget. A second start
    microseconds later (the window too short for a verdict) keeps the busy one."""
    stop = threading.Event()

    def trainer() -> None:
        while not stop.is_set():
            pass  # pure Python: holds the GIL, dropped only when another thread asks for it

    th = threading.Thread(target=trainer, name="busy-trainer")
    th.start()
    try:
        slicer = GilSlicer(budget_s=10e-6, watch=th.ident)
        time.sleep(0.03)  # it runs; taking the GIL back here waits for the switch interval
        for _ in range(starts):
            slicer.start()
        _spin(50e-6)
        slicer.pause()
        assert (slicer.yields, slicer.skipped) == (1, 0)
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive()


def _blocked_after_waking(go: threading.Event, th: threading.Thread) -> bool:
    """Wake ``th`` (it waits on ``go``) and hold the GIL until it ran and blocked on it; False: it got the GIL."""
    clock = time.pthread_getcpuclockid(th.ident or 0)
    try:
        before = time.clock_gettime_ns(clock)
        go.set()
        deadline = time.monotonic() + 10
        while time.clock_gettime_ns(clock) == before:  # it runs...
            assert time.monotonic() < deadline
        last = time.clock_gettime_ns(clock)
        while True:  # ...then blocks on the GIL, held here
            _spin(300e-6)
            now = time.clock_gettime_ns(clock)
            if now == last:
                return True
            last = now
    except OSError:  # it ended: it got the GIL meanwhile (another thread's wait made this one drop it)
        return False


def test_a_resume_keeps_the_watched_threads_baseline() -> None:
    """The thread woke and blocked on the GIL before a brief release (a socket call) and the resume after
    it: the resume must not take its clock afresh, or the thread would wait for the rest of the stretch."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # it must not get the GIL by waiting out the interval on a busy machine
    try:
        for _ in range(20):  # a few tries: the scene needs the thread blocked on the GIL, not past it
            go = threading.Event()
            ran = threading.Event()
            th = threading.Thread(target=lambda go=go, ran=ran: go.wait(10) and ran.set(), name="waking-trainer")
            th.start()
            try:
                slicer = GilSlicer(budget_s=10e-6, watch=th.ident)
                time.sleep(0.05)
                slicer.start()
                assert not slicer.busy
                if not _blocked_after_waking(go, th) or ran.is_set():
                    continue
                slicer.resume()
                _spin(50e-6)
                slicer.pause()
                assert (slicer.yields, slicer.skipped) == (1, 0)
                assert ran.wait(5)
                return
            finally:
                go.set()
                th.join(5)
                assert not th.is_alive()
        pytest.fail("the thread never blocked on the GIL in 20 tries")
    finally:
        sys.setswitchinterval(interval)
