"""Rank health: progress, step rate, and how far each rank trails the others (stragglers).

A rank's progress is the highest step it has logged (any key). For every recent step the time
each rank first reached it is kept; a rank's lag is how much later than the median rank it
reaches steps (the median, not the fastest, so ranks that merely run free of each other are not
all flagged behind one quick rank). A rank that reaches steps later than the others (in
DDP the slow rank logs after the rest, who then wait in the all-reduce) shows a time lag even
when all ranks advance at the same rate; a rank that falls behind in steps shows a growing one.
:class:`HealthFields` publishes each snapshot as ``sys/ranks/<r>/*`` fields and straggler events.
Being a straggler has hysteresis: a rank becomes one above ``straggler_lag_s`` and stops being
one only below half of it, so a lag hovering at the threshold does not flap; and each rank gets
at most :data:`MAX_STRAGGLER_EVENTS` straggler events (then one saying the rest are not recorded).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.aggregator.fields import SYSTEM_RANK, FieldTable
from coordinator.aggregator.outbox import Outbox

__all__ = ["MAX_STRAGGLER_EVENTS", "MAX_STRAGGLER_LINES", "STRAGGLER_CLEAR_RATIO", "Health", "HealthFields"]

_log = logging.getLogger("coordinator.aggregator")

_KEEP_STEPS = 256
_TRIM_EVERY = 32
"""Steps past :data:`_KEEP_STEPS` that make :meth:`Health.progress` drop the oldest: a sort per 32 new
steps, and a bound near the kept steps (the map of a step holds a time per rank: at 2x the kept
steps, as it was, 64 ranks' aggregator swung ~0.6 MB between trims)."""
_RATE_WINDOW_S = 10.0
_LAG_STEPS = 64

STRAGGLER_CLEAR_RATIO = 0.5
"""A straggler stops being one when its lag falls below this fraction of ``straggler_lag_s``."""
MAX_STRAGGLER_EVENTS = 20
"""Straggler events recorded per rank; after that only the ``sys/stragglers`` field changes."""

MAX_STRAGGLER_LINES = 5
"""New stragglers of one sweep logged a line each; more are logged as one line (all are events)."""


@dataclass(slots=True)
class _Rank:
    last_step: int = -1
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))


class Health:
    """Per-rank progress bookkeeping; owned by the aggregator loop (not thread-safe)."""

    def __init__(self, world_size: int, straggler_lag_s: float, flush_interval_s: float = 0.05) -> None:
        """``flush_interval_s``: the ranks' flush interval. A rank one step behind the others may only
        not have flushed that step yet: it logged the step a moment after its last flush, the median
        rank a moment before its own, and the step arrives one interval (and a delivery) later. So
        its time behind is counted only past ``flush_interval_s`` after the median rank reached the
        step: it becomes a straggler once it is behind for longer than an interval plus
        ``straggler_lag_s`` (100 ms at the defaults of both). Without the interval's grace, a
        lockstep job at 50 ms flushes had every rank flagged now and then, 58-64 ms "behind"."""
        self.world_size = world_size
        self.straggler_lag_s = straggler_lag_s
        self.behind_grace_s = flush_interval_s
        self.ranks: dict[int, _Rank] = {}
        self.reached: dict[int, dict[int, float]] = {}
        """step -> rank -> time it first logged that step (or beyond)."""

    def progress(self, rank: int, step: int, now: float) -> None:
        """``rank`` logged ``step`` at ``now``."""
        r = self.ranks.get(rank)
        if r is None:
            r = self.ranks[rank] = _Rank()
        if step <= r.last_step:
            return
        first = max(r.last_step + 1, step - _KEEP_STEPS + 1)
        for s in range(first, step + 1):
            self.reached.setdefault(s, {}).setdefault(rank, now)
        r.last_step = step
        if len(self.reached) > _KEEP_STEPS + _TRIM_EVERY:
            for s in sorted(self.reached)[: len(self.reached) - _KEEP_STEPS]:
                del self.reached[s]

    def last_step(self, rank: int) -> int:
        """The highest step ``rank`` logged (-1: none)."""
        r = self.ranks.get(rank)
        return -1 if r is None else r.last_step

    def snapshot(self, now: float, ranks: set[int]) -> dict[int, dict[str, Any]]:
        """Per rank: last_step, steps_per_s, lag_steps, lag_s, straggler (compared among ``ranks``)."""
        out: dict[int, dict[str, Any]] = {}
        if not self.ranks:
            return out
        active = {r: st for r, st in self.ranks.items() if r in ranks} or self.ranks
        fastest = max(st.last_step for st in active.values())
        # The newest _LAG_STEPS steps every active rank reached, oldest first: scanned from the
        # newest down (at 1024 ranks, testing every kept step cost ~16 ms a snapshot).
        recent: list[int] = []
        for s in sorted(self.reached, reverse=True):
            by = self.reached[s]
            if len(by) >= len(active) and by.keys() >= active.keys():
                recent.append(s)
                if len(recent) == _LAG_STEPS:
                    break
        recent.reverse()
        # One median per step (not per rank and step): O(ranks x steps) per snapshot.
        rows = [(by, statistics.median([by[x] for x in active])) for by in map(self.reached.__getitem__, recent)]
        ahead_med: dict[int, float | None] = {}
        """Per step: when the median rank among those there reached it (one median for all the ranks behind it)."""
        for (rank, st), lag in zip(self.ranks.items(), _lags(rows, list(self.ranks)), strict=True):
            st.samples.append((now, st.last_step))
            old = next(((t, s) for t, s in st.samples if now - t <= _RATE_WINDOW_S), (now, st.last_step))
            rate = (st.last_step - old[1]) / (now - old[0]) if now > old[0] else 0.0
            lag_s = 0.0 if lag is None else lag
            if st.last_step < fastest and rank in active:
                nxt = st.last_step + 1
                if nxt not in ahead_med:
                    ahead = self.reached.get(nxt)
                    ahead_med[nxt] = statistics.median(ahead.values()) if ahead else None
                reached_at = ahead_med[nxt]
                if reached_at is not None:
                    # Behind in steps: the time since the median rank (among those there) reached the
                    # next step, less the flush interval that a step not flushed yet explains.
                    lag_s = max(lag_s, now - reached_at - self.behind_grace_s)
            out[rank] = {
                "last_step": st.last_step,
                "steps_per_s": round(rate, 3),
                "lag_steps": fastest - st.last_step if rank in active else None,
                "lag_s": round(max(0.0, lag_s), 4),
                "straggler": rank in active and len(active) > 1 and lag_s > self.straggler_lag_s,
                "clear": rank not in active or len(active) <= 1 or lag_s < self.straggler_lag_s * STRAGGLER_CLEAR_RATIO,
            }
        return out


def _lags(rows: list[tuple[dict[int, float], float]], ranks: list[int]) -> list[float | None]:
    """Per rank of ``ranks``: the trimmed mean (:func:`_column_trimmed_means`) over the steps of ``rows``
    it reached of (when it reached the step - the step's median); None where it reached none of them.

    ``rows``: per step, rank -> when it reached the step, and the step's median. Taken at once with
    numpy over a steps x ranks matrix: at 1024 ranks a list and a median per rank took ~25 ms a
    snapshot.
    """
    if not rows:
        return [None] * len(ranks)
    col = {r: i for i, r in enumerate(ranks)}
    t = np.full((len(rows), len(ranks)), np.nan)
    for i, (by, m) in enumerate(rows):
        t[i, np.fromiter(map(col.__getitem__, by), np.intp, len(by))] = np.fromiter(by.values(), np.float64, len(by))
        t[i] -= m
    return [None if math.isnan(x) else x for x in _column_trimmed_means(t).tolist()]


def _column_trimmed_means(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per column of ``t``: the mean of its values that are not NaN, less the lowest and the highest
    eighth of them (``n // 8`` each side); NaN where all are NaN.

    Why not the median: the aggregator times a step by the arrival of the batch holding it, and the
    ranks flush on one grid, so a rank's time behind the others arrives rounded to a whole flush
    interval, down for some steps and up for others, in proportion to where it falls between the
    two. The mean of those roundings is the rank's true lag; their median is one of the two whole
    intervals: at 50 ms flushes a rank 30 ms behind read ~49 ms, one 80 ms behind ~99 ms, and one
    60 ms behind ~50 ms, flagged in three snapshots of four by the ranks' jitter (round 26,
    docs/performance.md, ``benchmarks.lag_grid``). Trimming an eighth each side keeps a few slow
    steps (a pause, a checkpoint) from moving it, as the median did.
    Not ``np.nanmean`` of a slice: a sort (NaNs last), then a sum of each column's middle rows.
    """
    s = np.sort(t, axis=0)
    n = np.count_nonzero(~np.isnan(s), axis=0)
    k = n // 8
    rows = np.arange(t.shape[0])[:, None]
    keep = (rows >= k) & (rows < n - k)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = np.where(keep, s, 0.0).sum(axis=0) / (n - 2 * k)
    out[n == 0] = np.nan
    return out


class HealthFields:
    """Publishes :class:`Health` snapshots: per-rank fields, ``sys/stragglers``, one event per new straggler."""

    def __init__(self, health: Health, fields: FieldTable, outbox: Outbox) -> None:
        self._health = health
        self._fields = fields
        self._outbox = outbox
        self.stragglers: set[int] = set()
        """The ranks that are stragglers now."""
        self.stragglers_seen: set[int] = set()
        """Every rank that was a straggler at some point of the run."""
        self.snapshot: dict[int, dict[str, Any]] = {}
        """The last snapshot (the final report's ``health``)."""
        self.events: dict[int, int] = {}
        """rank -> straggler events recorded for it (capped at :data:`MAX_STRAGGLER_EVENTS`)."""

    def update(self, now: float, rank_state: dict[int, str]) -> None:
        """Publish each rank's progress as ``sys/ranks/<r>/*`` fields and ``sys/stragglers``."""
        # Closed ranks keep their final standing; lost ones no longer count as the fastest or slowest.
        active = {r for r, st in rank_state.items() if st in ("live", "closed")}
        snap = self._health.snapshot(now, active)
        write = self._fields.write
        for rank, h in snap.items():
            base = f"sys/ranks/{rank}"
            write(f"{base}/state", ("str", rank_state.get(rank, "unknown")), SYSTEM_RANK, now)
            write(f"{base}/last_step", ("int", h["last_step"]), SYSTEM_RANK, now)
            write(f"{base}/steps_per_s", ("float", float(h["steps_per_s"])), SYSTEM_RANK, now)
            write(f"{base}/lag_s", ("float", float(h["lag_s"])), SYSTEM_RANK, now)
            if h["lag_steps"] is not None:
                write(f"{base}/lag_steps", ("int", h["lag_steps"]), SYSTEM_RANK, now)
        # Hysteresis: over the threshold to become a straggler, under half of it to stop being one.
        stragglers = {r for r, h in snap.items() if h["straggler"] or (r in self.stragglers and not h["clear"])}
        for r, h in snap.items():
            h["straggler"] = r in stragglers
            del h["clear"]
        self.stragglers_seen |= stragglers
        new = sorted(stragglers - self.stragglers)
        told = [m for r in new if (m := self._straggler_event(now, r, snap[r]["lag_s"]))]
        if len(told) <= MAX_STRAGGLER_LINES:
            for msg in told:
                _log.warning("%s", msg)
        else:  # a thousand ranks falling behind at once: one line, the events keep each rank's
            _log.warning(
                "%d ranks became stragglers (up to %.3f s behind the fastest rank); each is an event, "
                "sys/stragglers lists them",
                len(told),
                max(snap[r]["lag_s"] for r in new),
            )
        if stragglers != self.stragglers or "sys/stragglers" not in self._fields:
            self.stragglers = stragglers
            write("sys/stragglers", ("list", sorted(stragglers)), SYSTEM_RANK, now)
        self.snapshot = snap

    def _straggler_event(self, now: float, rank: int, lag_s: float) -> str | None:
        """Record that ``rank`` became a straggler (capped per rank); returns the message to log, if recorded."""
        n = self.events[rank] = self.events.get(rank, 0) + 1
        if n > MAX_STRAGGLER_EVENTS:
            return None
        msg = f"rank {rank} is a straggler: {lag_s:.3f} s behind the fastest rank"
        if n == MAX_STRAGGLER_EVENTS:
            msg += f" (its {n}th straggler event: further ones are not recorded; see sys/stragglers)"
        self._outbox.event(now, "straggler", rank, msg)
        return msg
