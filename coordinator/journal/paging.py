"""A series read in bounded pages, in step order, chunk by chunk; and summarised from chunk summaries.

The rule a series follows (:mod:`coordinator.core.incarnations`): a later incarnation of a rank
that logs a key from step ``f`` replaces the earlier incarnations' points at steps ``>= f``, and
within what is left each step keeps its latest value (:func:`~coordinator.core.incarnations.latest_per_step`).
The main series (rank -1) has one incarnation: its latest chunk for a step wins.

Chunks are visited in order of their first step (``chunks_by_step``). Chunks whose step ranges
overlap form a *group*, resolved together; a group of one chunk whose steps strictly increase (the
usual case) is sliced as it is. So a page holds at most ``limit`` points plus one group, never
the whole series. A schema 1 store opened read-only has no summaries: they are computed from the
chunks of the one series asked about, one chunk at a time, and nothing is written.
"""

from __future__ import annotations

import math
import sqlite3
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any, NamedTuple

from coordinator.core.columns import from_le
from coordinator.core.incarnations import latest_per_step, replaced_from, start_order
from coordinator.journal.stepblobs import decode_steps
from coordinator.journal.summary import summarize

__all__ = ["Page", "SeriesSource", "Span", "Stats"]


class Page(NamedTuple):
    """One page of a series: steps and values in step order, and where the next page starts."""

    steps: array[int]
    values: array[float]
    next: int | None
    """Pass as ``after`` for the next page; ``None``: this page ends the series."""


class Span(NamedTuple):
    """A chunk's summary (no points)."""

    id: int
    incarnation: int
    ts: float
    n: int
    lo: int
    hi: int
    v_first: float | None
    v_last: float | None
    v_min: float | None
    v_max: float | None
    ordered: bool


class Stats(NamedTuple):
    """A series' summary: point count, first and last (step, value), smallest and largest value."""

    points: int
    first: tuple[int, float] | None
    last: tuple[int, float] | None
    min: float | None
    max: float | None


_SPAN = "id, incarnation, ts, n, step_min, step_max, v_first, v_last, v_min, v_max, ordered"


def _f(v: float | None) -> float:
    return math.nan if v is None else v


class SeriesSource:
    """The chunks of one series (key, rank) of an open store.

    Args:
        db: the connection.
        key_id: the key's row id.
        rank: a rank, or -1 for the main series.
        summarized: the store has summaries (schema 2); else they are computed (read-only schema 1).
    """

    def __init__(self, db: sqlite3.Connection, key_id: int, rank: int, *, summarized: bool) -> None:
        self._db = db
        self._key_id = key_id
        self._rank = rank
        self._summarized = summarized
        self._computed: list[Span] | None = None
        self.cuts = self._cuts()
        """incarnation -> step from which its points are replaced (absent: none are)."""

    # ------------------------------------------------------------------ chunks

    def _compute(self) -> list[Span]:
        """Schema 1: every chunk's summary, computed one chunk at a time (kept: no points)."""
        if self._computed is None:
            spans: list[Span] = []
            cur = self._db.execute(
                "SELECT id, incarnation, ts, n, steps, vals FROM chunks WHERE key_id=? AND rank=? ORDER BY id",
                (self._key_id, self._rank),
            )
            try:
                for cid, inc, ts, n, sb, vb in cur:
                    lo, hi, _, _, vf, vl, vmin, vmax, ordered = summarize(decode_steps(sb, n), from_le("d", vb))
                    if lo is not None and hi is not None:
                        spans.append(Span(cid, inc, ts, n, lo, hi, vf, vl, vmin, vmax, bool(ordered)))
            finally:
                cur.close()
            spans.sort(key=lambda s: (s.lo, s.id))
            self._computed = spans
        return self._computed

    def spans(self, after: int = -(2**63)) -> Iterator[Span]:
        """Summaries of the chunks holding a step ``> after``, in order of their first step."""
        if not self._summarized:
            yield from (s for s in self._compute() if s.hi > after)
            return
        cur = self._db.execute(
            f"SELECT {_SPAN} FROM chunks WHERE key_id=? AND rank=? AND step_max > ? ORDER BY step_min",
            (self._key_id, self._rank, after),
        )
        try:
            while rows := cur.fetchmany(256):
                for cid, inc, ts, n, lo, hi, vf, vl, vmin, vmax, ordered in rows:
                    yield Span(cid, inc, ts, n, lo, hi, vf, vl, vmin, vmax, bool(ordered))
        finally:
            cur.close()  # ends the implicit read so the writer can checkpoint the WAL

    def _points(self, span: Span) -> tuple[array[int], array[float]]:
        sb, vb = self._db.execute("SELECT steps, vals FROM chunks WHERE id=?", (span.id,)).fetchone()
        return decode_steps(sb, span.n), from_le("d", vb)

    def lineage(self) -> list[tuple[int, float, int | None]]:
        """(incarnation, first batch time, first step) of the series, in start order."""
        if self._summarized:
            rows = list(
                self._db.execute(
                    "SELECT incarnation, MIN(ts), MIN(step_min) FROM chunks WHERE key_id=? AND rank=? "
                    "GROUP BY incarnation ORDER BY MIN(id)",
                    (self._key_id, self._rank),
                )
            )
        else:
            agg: dict[int, list[Any]] = {}
            for s in sorted(self._compute(), key=lambda s: s.id):
                a = agg.setdefault(s.incarnation, [s.ts, s.lo])
                a[0], a[1] = min(a[0], s.ts), min(a[1], s.lo)
            rows = [(i, ts, lo) for i, (ts, lo) in agg.items()]
        started = {i: ts for i, ts, _ in rows}
        first = {i: lo for i, _, lo in rows}
        return [(i, started[i], first[i]) for i in start_order(started)]

    def _cuts(self) -> dict[int, int]:
        """The replacement rule's cut per incarnation, from each incarnation's start and first step."""
        lineage = self.lineage()
        if len(lineage) < 2:
            return {}
        firsts = [(i, f) for i, _, f in lineage]
        cuts = {i: replaced_from(i, firsts) for i, _, _ in lineage}
        return {i: c for i, c in cuts.items() if c is not None}

    # ------------------------------------------------------------------ groups

    def groups(self, after: int) -> Iterator[list[Span]]:
        """Chunks holding a step ``> after`` (and not wholly replaced), grouped by overlapping step ranges."""
        group: list[Span] = []
        hi = 0
        for s in self.spans(after):
            cut = self.cuts.get(s.incarnation)
            if cut is not None and s.lo >= cut:
                continue  # wholly replaced by a later incarnation
            if group and s.lo > hi:
                yield group
                group = []
            hi = s.hi if not group else max(hi, s.hi)
            group.append(s)
        if group:
            yield group

    def _clean(self, group: list[Span]) -> bool:
        """One chunk, steps strictly increasing, nothing of it replaced: it reads as it is stored."""
        if len(group) != 1 or not group[0].ordered:
            return False
        cut = self.cuts.get(group[0].incarnation)
        return cut is None or group[0].hi < cut

    def resolve(self, group: list[Span], after: int) -> tuple[array[int], array[float]]:
        """The group's current points with step ``> after``, each step once, in step order."""
        if self._clean(group):
            steps, values = self._points(group[0])
            i = bisect_right(steps, after) if after >= group[0].lo else 0
            return steps[i:], values[i:]
        all_s: array[int] = array("q")
        all_v: array[float] = array("d")
        for span in sorted(group, key=lambda s: s.id):  # journal order: the later value of a step wins
            steps, values = self._points(span)
            cut = self.cuts.get(span.incarnation)
            if (cut is not None and span.hi >= cut) or span.lo <= after:
                top = cut if cut is not None else math.inf
                keep = [(s, v) for s, v in zip(steps, values, strict=True) if after < s < top]
                steps, values = array("q", [s for s, _ in keep]), array("d", [v for _, v in keep])
            all_s.extend(steps)
            all_v.extend(values)
        ls, lv = latest_per_step(all_s, all_v)
        order = sorted(range(len(ls)), key=ls.__getitem__)
        return array("q", [ls[i] for i in order]), array("d", [lv[i] for i in order])

    # ------------------------------------------------------------------ reads

    def page(self, after: int, limit: int) -> Page:
        """At most ``limit`` points with step ``> after``, in step order."""
        out_s: array[int] = array("q")
        out_v: array[float] = array("d")
        for group in self.groups(after):
            steps, values = self.resolve(group, after)
            room = limit - len(out_s)
            out_s.extend(steps[:room])
            out_v.extend(values[:room])
            if len(out_s) >= limit:
                return Page(out_s, out_v, out_s[-1])
        return Page(out_s, out_v, None)

    def stats(self) -> Stats:
        """Count, first, last, min and max of the series, from the summaries (points read only where chunks overlap)."""
        n = 0
        first: tuple[int, float] | None = None
        last: tuple[int, float] | None = None
        lo = hi = math.nan
        for group in self.groups(-(2**63)):
            if self._clean(group):
                s = group[0]
                n += s.n
                g_first, g_last = (s.lo, _f(s.v_first)), (s.hi, _f(s.v_last))
                g_min, g_max = _f(s.v_min), _f(s.v_max)
            else:
                steps, values = self.resolve(group, -(2**63))
                if not steps:
                    continue
                n += len(steps)
                g_first, g_last = (steps[0], values[0]), (steps[-1], values[-1])
                real = [v for v in values if not math.isnan(v)]
                g_min, g_max = (min(real), max(real)) if real else (math.nan, math.nan)
            first = first or g_first
            last = g_last
            lo = g_min if math.isnan(lo) else lo if math.isnan(g_min) else min(lo, g_min)
            hi = g_max if math.isnan(hi) else hi if math.isnan(g_max) else max(hi, g_max)
        return Stats(n, first, last, None if math.isnan(lo) else lo, None if math.isnan(hi) else hi)

    def last_step(self) -> int | None:
        """The series' last current step: the largest step of the last-started incarnation that logged a point.

        Every point an earlier incarnation kept is below that incarnation's first step.
        """
        if self._summarized:
            rows = self._db.execute(
                "SELECT MAX(step_max) FROM chunks WHERE key_id=? AND rank=? GROUP BY incarnation "
                "ORDER BY MIN(ts) DESC, MIN(id) DESC",
                (self._key_id, self._rank),
            ).fetchall()
            return next((int(top) for (top,) in rows if top is not None), None)
        spans = self._compute()
        if not spans:
            return None
        started: dict[int, float] = {}
        for s in sorted(spans, key=lambda s: s.id):
            started[s.incarnation] = min(s.ts, started.get(s.incarnation, s.ts))
        newest = start_order(started)[-1]
        return max(s.hi for s in spans if s.incarnation == newest)
