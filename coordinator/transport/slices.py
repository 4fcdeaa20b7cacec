"""Short GIL slices for the sender thread: its Python work between two yields stays under a budget.

CPython hands the GIL to a waiting thread only when the holder releases it, or after the switch
interval (5 ms by default, the user's to set: never changed here). The sender's flush is Python
work of its own (cut, encode, spool, send); the training thread that wants the GIL meanwhile
would wait for up to the interval. :meth:`GilSlicer.pause`, called between slices of that work,
releases the GIL once the current stretch has run for :data:`SLICE_BUDGET_S`: ``time.sleep(0)``
drops the GIL and signals a waiting thread, which takes it (measured on CPython 3.11: a waiting
probe thread's p99.9 lateness behind 2 ms of sliced Python fell from 2.2 ms to 0.3 ms).
A pause that finds its stretch shorter costs one clock read.
"""

from __future__ import annotations

import time

__all__ = ["SLICE_BUDGET_S", "GilSlicer"]

SLICE_BUDGET_S = 30e-6
"""Stretch of the sender's Python work after which a pause releases the GIL.

A stretch ends at the first pause past the budget, so the longest is the budget plus the longest
slice between two pauses: 20-60 µs each on a cold CPU (the sender wakes 20-40 times a second, its
code evicted in between). Measured with uprobes on ``take_gil``/``drop_gil``
(``benchmarks.gil_holds``): at 50 µs and fewer pauses the longest stretch on the CPU was 240-300 µs;
at 30 µs, with a pause between the replies, the cut and the encoding, 115-150 µs, for ~5% more
sender CPU (about 50 more yields a second)."""


class GilSlicer:
    """Times the sender thread's current stretch of GIL-holding work and yields once it is long enough."""

    __slots__ = ("_budget", "_since", "yields")

    def __init__(self, budget_s: float = SLICE_BUDGET_S) -> None:
        """Args:
        budget_s: the stretch after which :meth:`pause` releases the GIL.
        """
        self._budget = budget_s
        self._since = time.perf_counter()
        self.yields = 0
        """Times :meth:`pause` or :meth:`release` released the GIL (for benchmarks and tests)."""

    def start(self) -> None:
        """A stretch starts now (the thread just took the GIL back, e.g. after its poll)."""
        self._since = time.perf_counter()

    def release(self) -> None:
        """Release the GIL now, whatever the stretch's length: before a piece of work that is
        long on its own, when the clock may have started late (a stretch began when the thread
        took the GIL back, some Python before :meth:`start` could run)."""
        self._yield()

    def pause(self) -> None:
        """Between two slices: release the GIL when the stretch has run for the budget."""
        if time.perf_counter() - self._since >= self._budget:
            self._yield()

    def _yield(self) -> None:
        time.sleep(0)  # drops the GIL: a thread waiting for it is signalled and takes it
        self.yields += 1
        self._since = time.perf_counter()
