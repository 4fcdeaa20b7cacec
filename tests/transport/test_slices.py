"""The sender's GIL slicer: its pause lets a thread that waits for the GIL run in the middle of the work."""

from __future__ import annotations

import threading
import time

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
    assert slicer.yields >= 20 * 10  # 2 ms in stretches of the budget (30 µs): ~60 yields each
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
