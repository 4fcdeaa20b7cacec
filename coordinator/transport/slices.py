"""Short GIL slices for the sender thread: its Python work between two yields stays under a budget.

CPython hands the GIL to a waiting thread only when the holder releases it, or after the switch
interval (5 ms by default, the user's to set: never changed here). The sender's flush is Python
work of its own (cut, encode, spool, send); the training thread that wants the GIL meanwhile
would wait for up to the interval. :meth:`GilSlicer.pause`, called between slices of that work,
releases the GIL once the current stretch has run for :data:`SLICE_BUDGET_S`: ``time.sleep(0)``
drops the GIL and signals a waiting thread, which takes it (measured on CPython 3.11: a waiting
probe thread's p99.9 lateness behind 2 ms of sliced Python fell from 2.2 ms to 0.3 ms).
A pause that finds its stretch shorter costs one clock read.

A yield is not free: ``time.sleep(0)`` costs ~25 µs of CPU and ~85 µs of wall time on the
development VM (a context switch, and the timer slack of a zero sleep), and a cold flush crosses
the budget four or five times. Most of those yields hand the GIL to nobody when the training
thread sleeps between its steps. So a slicer that *watches* the training thread (``watch=``, its
``threading.get_ident()``) reads that thread's CPU-time clock (``pthread_getcpuclockid``, one
syscall of ~0.3 µs) and skips the yields it does not need:

* At :meth:`~GilSlicer.start` (as the sender's poll returns), a thread that used more than
  :data:`BUSY_SHARE` of the wall time since the last verdict (at least 2 ms before) is *busy*:
  every pause past the budget yields, as without watching.
  This covers the thread the sender took the GIL from: a thread that holds the GIL for the
  switch interval (5 ms) is made to drop it and then blocks on it, so its clock stops while it
  waits; it can only have been running just before.
* Otherwise a pause past the budget yields only if the thread ran since the stretch began (or
  since the last yield). A thread that wakes during the stretch and wants the GIL runs a few
  microseconds before it blocks on it, so its clock moves and the next pause yields, as before;
  a thread that slept through the stretch did not want the GIL, and the stretch goes on.

Not seen: a quiet thread that was already blocked on the GIL when the stretch began because a
third thread held it and the sender won it; it waits for the stretch (at most the switch
interval). Where the clock cannot be read (not POSIX, the thread ended) every pause past the
budget yields.
"""

from __future__ import annotations

import time

__all__ = ["BUSY_SHARE", "SLICE_BUDGET_S", "GilSlicer"]

SLICE_BUDGET_S = 30e-6
"""Stretch of the sender's Python work after which a pause releases the GIL.

A stretch ends at the first pause past the budget, so the longest is the budget plus the longest
slice between two pauses: 20-60 µs each on a cold CPU (the sender wakes 20-40 times a second, its
code evicted in between). Measured with uprobes on ``take_gil``/``drop_gil``
(``benchmarks.gil_holds``): at 50 µs and fewer pauses the longest stretch on the CPU was 240-300 µs;
at 30 µs, with a pause between the replies, the cut and the encoding, 115-150 µs, for ~5% more
sender CPU (about 50 more yields a second)."""


BUSY_SHARE = 0.05
"""Share of the wall time since the previous stretch above which the watched thread is busy.

A paced training thread (a 100-key dict at 50 steps/s, sleeping in between) uses about 1%; one
that held the GIL until it was made to drop it used at least the switch interval of the sender's
wait, most of any window the sender sees between two stretches."""

_MIN_WINDOW_S = 0.002
"""Shortest window a busy verdict is taken over. The sender starts a stretch after its poll and
again after each reply it reads, microseconds apart: over such a window a thread blocked on the
GIL looks idle, and the verdict of the window before it stands."""


def _thread_cpu_clock(ident: int | None) -> int | None:
    """The CPU-time clock of the live thread ``ident`` (a ``threading.get_ident()``); None where there is none."""
    if ident is None:
        return None
    try:
        clock = time.pthread_getcpuclockid(ident)
        time.clock_gettime_ns(clock)
    except (AttributeError, OSError):  # no such call on this platform, or a clock it cannot read
        return None
    return clock


class GilSlicer:
    """Times the sender thread's current stretch of GIL-holding work and yields once it is long enough."""

    __slots__ = ("_budget", "_clock", "_ref_cpu", "_ref_wall", "_seen", "_since", "busy", "skipped", "yields")

    def __init__(self, budget_s: float = SLICE_BUDGET_S, *, watch: int | None = None) -> None:
        """Args:
        budget_s: the stretch after which :meth:`pause` releases the GIL.
        watch: the ``threading.get_ident()`` of the thread the yields are for (the training
            thread): unless it is busy, a yield is skipped while it has not run since the stretch
            began. None: every pause past the budget yields.
        """
        self._budget = budget_s
        self._since = time.perf_counter()
        self._clock = _thread_cpu_clock(watch)
        self.busy = True
        """The watched thread's last verdict: it used more than :data:`BUSY_SHARE` of the window
        (every pause past the budget yields). True until a start measured it, and unwatched."""
        self._ref_wall = self._since
        self._ref_cpu = self._seen = -1 if self._clock is None else self._cpu_ns(self._clock)
        self.yields = 0
        """Times :meth:`pause` or :meth:`release` released the GIL (for benchmarks and tests)."""
        self.skipped = 0
        """Yields left out because the watched thread was quiet and had not run (for benchmarks and tests)."""

    def start(self) -> None:
        """A stretch starts now: the thread took the GIL back after a blocking wait (its poll).

        Call it as soon as the wait returns: a watched thread that wakes between the wait's
        return and this call, and blocks on the GIL, is not seen (its clock is read here).
        """
        now = self._since = time.perf_counter()
        clock = self._clock
        if clock is not None:
            cpu = self._seen = self._cpu_ns(clock)
            if now - self._ref_wall >= _MIN_WINDOW_S:  # a start right after another keeps its verdict
                self.busy = cpu - self._ref_cpu > BUSY_SHARE * 1e9 * (now - self._ref_wall)
                self._ref_cpu, self._ref_wall = cpu, now

    def resume(self) -> None:
        """The thread let go of the GIL for a moment (a non-blocking socket call) and took it back.

        The budget restarts, as after any release; the watched thread's verdict and the CPU time
        it is compared with do not: a thread that woke and blocked on the GIL before this moment
        did not get it (the brief release hands it over to nobody in practice), and it must still
        get the next yield.
        """
        self._since = time.perf_counter()

    def release(self) -> None:
        """Release the GIL now, whatever the stretch's length (unless the watched thread is quiet
        and has not run: then nobody waits for it): before a piece of work that is long on its
        own, when the clock may have started late (a stretch began when the thread took the GIL
        back, some Python before :meth:`start` could run)."""
        self._yield()

    def pause(self) -> None:
        """Between two slices: release the GIL when the stretch has run for the budget."""
        if time.perf_counter() - self._since >= self._budget:
            self._yield()

    def _cpu_ns(self, clock: int) -> int:
        """The watched thread's CPU time; -1 (and no watching from now on) once it cannot be read."""
        try:
            return time.clock_gettime_ns(clock)
        except OSError:  # the thread ended: yield to whoever waits, as an unwatched slicer does
            self._clock = None
            return -1

    def _yield(self) -> None:
        clock = self._clock
        if clock is not None and not self.busy and self._cpu_ns(clock) == self._seen:  # it slept throughout
            self.skipped += 1
            self._since = time.perf_counter()
            return
        time.sleep(0)  # drops the GIL: a thread waiting for it is signalled and takes it
        self.yields += 1
        if self._clock is not None:
            self._seen = self._cpu_ns(self._clock)
        self._since = time.perf_counter()
