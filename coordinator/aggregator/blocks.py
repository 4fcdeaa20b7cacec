"""Key groups: the reducer's fast path for keys the ranks log together, one dict per step.

A rank that logs ``run.log({...}, step=s)`` sends one chunk per key with the same steps; the
wire decoder hands such a run of keys over as a *block* (one steps array, a keys x steps values
matrix). While every rank logs the same tuple of keys as blocks, in increasing steps, the
reducer keeps the tuple as one :class:`KeyGroup`: it holds the blocks themselves, once for all
its keys and with no work per step on arrival, and an emit lines up the steps of every pending
block and reduces every key of the emitted steps with numpy at once. The group's state is
exactly what each key's per-key state would be (every key has the same steps from the same
ranks), so anything the group does not handle — a repeat, a late point, a step below the
rank's last, a key logged alone or in another tuple, a rewind — first turns it into per-key
states (:meth:`KeyGroup.split`) and goes on the per-key path: a group never changes a result,
it only computes it with fewer Python operations.

Sums are correctly rounded, as :func:`math.fsum` is (:func:`exact_sums`): a vectorised
error-free summation whose result is certified per element, with ``math.fsum`` for the rare
element it cannot certify (a near-tie, a zero, an overflow, a NaN).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from coordinator.aggregator.sums import total
from coordinator.core.columns import increasing

__all__ = ["FAST_POLICIES", "RECENT_ENTRIES", "EmittedBlock", "KeyGroup", "Matrix", "exact_sums"]

Matrix = npt.NDArray[np.float64]
"""A block's values: one row per key, one column per step."""
_Taken: TypeAlias = "tuple[npt.NDArray[np.int64], Matrix, npt.NDArray[np.bool_]]"
"""What an emit takes from a group: its steps, their keys x steps x ranks values, which rank gave each."""

FAST_POLICIES = frozenset(("mean", "all", "sum", "rank0"))
"""Policies a group reduces itself (their result does not depend on the ranks' arrival order)."""

RECENT_ENTRIES = 256
"""Per key, the (rank, value) entries of emitted groups kept for repeats (at least the last group)."""

_MARGIN = 1.0 + 2.0**-40
"""Slack on the certificate's float arithmetic (its own roundings are below 2**-52 relative)."""

_EXPONENT = np.int64(0x7FF0000000000000)
"""A double's exponent bits (as an int64): masked in, they leave the power of two at or below it."""


def exact_sums(v: Matrix, mask: npt.NDArray[np.bool_]) -> Matrix:
    """Correctly rounded sums over the last axis of ``v`` (keys x steps x ranks, absent entries 0.0), as fsum.

    TwoSum cascades give the rounded sum ``s`` and its exact error terms; their rounded sum
    ``u`` and its error terms ``f``; then ``res = fl(s + u)`` with error ``g``, so the exact sum is
    ``res + g + sum(f)``. ``res`` is the correctly rounded sum when ``|g| + sum|f|`` is below half
    the gap to either neighbour of ``res`` (then no other double is nearer). Elements that are not
    certified (ties, zeros, non-finite values) are summed with :func:`~coordinator.aggregator.sums.total`
    (``math.fsum`` without its exceptions) over the present entries of ``mask`` (steps x ranks), which
    is what the per-key path computes.
    """
    with np.errstate(all="ignore"):  # overflow and NaN are what the certificate rejects
        res = _certified(v)
    bad = ~np.isfinite(res)
    if bad.any():
        for i, j in zip(*np.nonzero(bad), strict=True):
            res[i, j] = total(v[i, j][mask[j]].tolist())
    return res


def _half_gap(a: Matrix) -> Matrix:
    """Half the gap from each of ``a`` (``>= 0``) to its nearer neighbouring double; 0 where ``a`` is 0 or subnormal.

    From the exponent's bits: ``p``, the power of two at or below ``a``, has neighbours ``p *
    2**-52`` apart above it and ``p * 2**-53`` below, and every other double in ``[p, 2p)`` has
    both at ``p * 2**-52``. The same as ``nextafter`` both ways, five times faster (that was a
    fifth of an emit's sums at 4 ranks). A subnormal's 0 refuses its certificate (fsum then sums it).
    """
    p = (a.view(np.int64) & _EXPONENT).view(np.float64)
    half = p * 2.0**-53
    half[a == p] *= 0.5
    return half


def _certified(v: Matrix) -> Matrix:
    """The rounded sums over the last axis of ``v``, NaN where they are not certified correctly rounded.

    The ranks are summed pairwise, halving them at each level (``log2(n)`` vectorised steps: a
    loop over 1024 ranks was ~16,000 numpy calls per emitted group), each step a TwoSum whose
    error terms are kept: ``sum(v) == s + sum(errors)`` exactly, whatever the order. The ``n - 1``
    error terms are then summed as floats, ``u``, whose own error is at most ``(n - 2) * 2**-53 /
    (1 - (n - 2) * 2**-53)`` times the sum of their magnitudes in any order of summation
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 4.2): ``spread`` bounds it.

    The sums run on keys x ranks x steps (a key group's emit builds ``v`` as a view of that
    layout; any other ``v`` is copied into it): each half of a level is then a run of contiguous
    rows, its sums add whole rows, and each TwoSum reuses its temporaries. Over the ranks' own
    axis, the last, every operand was strided and every sum a reduction of 2-4 elements per step,
    which took twice as long at 4 and 8 ranks (``python -m benchmarks.exact_sums``;
    docs/performance.md, round 32).
    """
    n = v.shape[-1]
    s = np.moveaxis(v, -1, 1)
    if n > 1:
        s = np.ascontiguousarray(s)
    u = np.zeros(v.shape[:-1])
    spread = np.zeros(v.shape[:-1])
    while s.shape[1] > 1:
        half = s.shape[1] // 2
        a, b = s[:, :half], s[:, half : 2 * half]
        t = a + b
        bp = t - a
        e = t - bp  # a's share of t, then a's rounding error, then the TwoSum's error term
        np.subtract(a, e, out=e)
        np.subtract(b, bp, out=bp)  # b's rounding error
        np.add(e, bp, out=e)
        u += e.sum(axis=1)
        spread += np.abs(e, out=e).sum(axis=1)
        s = np.concatenate((t, s[:, 2 * half :]), axis=1) if s.shape[1] % 2 else t
    spread *= 2.0 * n * 2.0**-53  # covers the bound above and the roundings of these sums
    s = s[:, 0]
    res = s + u
    bp = res - s
    g = (s - (res - bp)) + (u - bp)
    a = np.abs(res)
    half_gap = _half_gap(a)
    ok = np.isfinite(res) & (a > 0.0) & ((np.abs(g) + spread) * _MARGIN < half_gap)
    res[~ok] = np.nan
    return res


@dataclass(slots=True)
class EmittedBlock:
    """Main-series points of a group's keys emitted together: one steps and counts array for all."""

    keys: tuple[str, ...]
    steps: array[int]
    values: Matrix
    """One row per key, one column per step."""
    counts: array[int]


@dataclass(slots=True, eq=False)
class _Segment:
    """One block a rank added to a group: its steps (increasing), its keys x steps values, when it came."""

    steps: npt.NDArray[np.int64]
    values: Matrix
    created: float


@dataclass(slots=True, eq=False)
class _Emitted:
    """Steps a group emitted, kept for repeats: steps x ranks values of every key, and who contributed."""

    steps: npt.NDArray[np.int64]
    values: Matrix
    """keys x steps x ranks (absent entries 0.0)."""
    mask: npt.NDArray[np.bool_]
    """steps x ranks: which rank contributed to which step."""


def _union(
    runs: list[npt.NDArray[np.int64]], created: list[float], steps: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The distinct steps of increasing ``runs`` (``steps``: the runs end to end), sorted; where each
    of ``steps`` is among them; and each distinct step's age: ``created`` of the first run holding it.

    Where the steps are dense (ranks flat out at different paces: overlapping runs) a bitmap over
    their range replaces the sort, which took ~40% of the aggregator then; sparse steps (a range
    over twice their number) are sorted.
    """
    lo = int(steps.min())
    span = int(steps.max()) - lo + 1
    lengths = [len(r) for r in runs]
    if span > 2 * len(steps) + 64:
        uniq, first, where = np.unique(steps, return_index=True, return_inverse=True)
        # Runs are in arrival order: a step's first occurrence is its first point (its age).
        return uniq, where, np.repeat(np.array(created), lengths)[first]
    at = steps - lo
    present = np.zeros(span, dtype=bool)
    present[at] = True
    # Each step's first run: the least run index over its points (one ufunc call, not a loop over
    # the runs: at 1024 ranks an emit gathers thousands of them).
    first_run = np.full(span, len(runs), dtype=np.intp)
    np.minimum.at(first_run, at, np.repeat(np.arange(len(runs), dtype=np.intp), lengths))
    pos = np.flatnonzero(present)
    ages = np.array(created)[first_run[pos]]
    return pos + lo, (np.cumsum(present) - 1)[at], ages


@dataclass(slots=True, eq=False)
class KeyGroup:
    """The shared reducer state of a tuple of keys every rank logs together (see the module doc).

    A rank's pending points are the blocks it added, as they came (:class:`_Segment`: no work per
    step on arrival); an emit gathers, from every pending block, the steps that can be due with a
    fixed number of numpy calls per block, whatever the number of steps, so a rank that sends
    thousands of steps per batch costs no more Python per batch than one that sends two. Ranks in
    step (the same consecutive steps in every block) need no sort at all (:meth:`_take_aligned`).
    """

    keys: tuple[str, ...]
    policies: tuple[str, ...]
    world: int
    first_seen: float
    segments: list[_Segment] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    """The rank of each pending segment (same order as :attr:`segments`)."""
    maxstep: dict[int, int] = field(default_factory=dict)
    settled: bool = False
    emitted_upto: int = -1
    recent: deque[_Emitted] = field(default_factory=deque)
    """The latest emitted steps (oldest first), bounded as a key's ``recent`` is."""
    recent_entries: int = 0

    def fits(self, rank: int, steps: array[int]) -> bool:
        """True when ``rank`` adding ``steps`` is regular: no repeat, no late point, increasing steps."""
        first = steps[0]
        if first <= self.emitted_upto or first <= self.maxstep.get(rank, -1) or not 0 <= rank < self.world:
            return False
        return increasing(steps)

    def add(self, rank: int, steps: array[int], values: Matrix, now: float) -> None:
        """Add one rank's block (``fits`` must have said yes): kept as it is until an emit."""
        self.segments.append(_Segment(np.array(steps, dtype=np.int64), values, now))
        self.ranks.append(rank)
        self.maxstep[rank] = steps[-1]

    def pending_steps(self) -> int:
        """Distinct steps waiting to be emitted."""
        if not self.segments:
            return 0
        return len(np.unique(np.concatenate([g.steps for g in self.segments])))

    def emit(
        self, now: float, done: set[int], world: frozenset[int], timeout: float, force: bool
    ) -> EmittedBlock | None:
        """Emit the group's complete or timed-out steps (the per-key rule, applied once for all keys).

        A step is emitted, in step order, while it is complete (every rank not done has logged past
        it), its first point came ``timeout`` ago, or ``force``; the first step that is none of
        these ends the emit (as the per-key heap does).
        """
        segs = self.segments
        if not segs:
            return None
        if not self.settled and (world <= (done | self.maxstep.keys()) or now - self.first_seen >= timeout):
            self.settled = True
        wm: float
        if not self.settled:
            wm = -1
        elif done:
            wm = min([m for r, m in self.maxstep.items() if r not in done], default=math.inf)
        else:
            wm = min(self.maxstep.values(), default=math.inf)
        taken = self._take_aligned(now, wm, timeout, force) if self._aligned() else self._take(now, wm, timeout, force)
        if taken is None:
            return None
        steps, v, mask = taken
        self.emitted_upto = int(steps[-1])
        self._remember(_Emitted(steps, v, mask))
        return self._reduce(steps, v, mask)

    def _aligned(self) -> bool:
        """Whether every pending segment holds the same run of consecutive steps: ranks in step.

        That is the common case (every rank logs steps n, n+1, ... and sends them in one flush),
        and then the steps need no sort and the values go in by one stacked assignment
        (:meth:`_take_aligned`). Each segment's steps increase, so a first step, a last step and a
        length that agree mean equal steps, and its ranks differ (a rank's segments never share a
        step).
        """
        segs = self.segments
        n = len(segs[0].steps)
        lo = int(segs[0].steps[0])
        hi = lo + n - 1
        return all(len(g.steps) == n and g.steps[0] == lo and g.steps[-1] == hi for g in segs)

    def _take_aligned(self, now: float, wm: float, timeout: float, force: bool) -> _Taken | None:
        """:meth:`_take` for aligned segments: all of their steps or none, the first segment's age.

        A part of the run (a rank that is not done stopped inside it) goes the general way.
        """
        segs = self.segments
        steps = segs[0].steps
        n = len(steps)
        m = n if force or segs[0].created <= now - timeout else int(np.searchsorted(steps, wm, side="right"))
        if m == 0:
            return None
        if m < n:
            return self._take(now, wm, timeout, force)
        vt = np.zeros((len(self.keys), self.world, n))  # ranks before steps: see _take
        mask = np.zeros((n, self.world), dtype=bool)
        vt[:, self.ranks, :] = np.stack([g.values for g in segs], axis=1)
        mask[:, self.ranks] = True
        v = vt.transpose(0, 2, 1)
        self.segments, self.ranks = [], []
        return steps, v, mask

    def _take(self, now: float, wm: float, timeout: float, force: bool) -> _Taken | None:
        """The leading steps due (see :meth:`emit`), gathered from every segment, which keeps the rest.

        Only steps up to a bound can be due: the slowest rank's (``wm``) or the last of a segment
        that timed out (a step's age is its first segment's). Each segment's steps past it are
        left where they are, so a rank far ahead of a slow one costs no work per emit.

        Returns:
            The steps, their values (keys x steps x ranks) and which rank gave each, or None.
        """
        segs = self.segments
        old = now - timeout
        cut = [len(g.steps) for g in segs]
        if not force:
            bound = max([wm, *(int(g.steps[-1]) for g in segs if g.created <= old)])
            cut = [
                n if g.steps[-1] <= bound else int(np.searchsorted(g.steps, bound, side="right"))
                for g, n in zip(segs, cut, strict=True)
            ]
        parts = [(g, r, c) for g, r, c in zip(segs, self.ranks, cut, strict=True) if c]
        if not parts:
            return None
        runs = [g.steps[:c] for g, _, c in parts]
        steps = np.concatenate(runs)
        values = np.concatenate([g.values[:, :c] for g, _, c in parts], axis=1)
        uniq, where, created = _union(runs, [g.created for g, _, _ in parts], steps)
        if force:
            m = len(uniq)
        else:
            ok = (uniq <= wm) | (created <= old)
            m = len(uniq) if ok.all() else int(np.argmin(ok))
        if m == 0:
            return None
        last = int(uniq[m - 1])
        k = len(self.keys)
        world = self.world
        rank_of = np.repeat(np.array([r for _, r, _ in parts]), [len(r) for r in runs])
        if m < len(uniq):
            sel = where < m
            where, rank_of, values = where[sel], rank_of[sel], values[:, sel]
        # The values go in ranks before steps (keys x ranks x steps), handed on as the keys x steps x
        # ranks view of it: a run's points land side by side, and the sums over the ranks
        # (_certified) read whole rows without a transposing copy (23% of a flat-out aggregator's
        # samples at 10 keys a call, round 32). One flat index: numpy's single-index path, faster
        # than two index arrays.
        vt = np.zeros((k, world, m))
        vt.reshape(k, world * m)[:, rank_of * m + where] = values
        v = vt.transpose(0, 2, 1)
        flat = where * world + rank_of
        mask = np.zeros(m * world, dtype=bool)
        mask[flat] = True
        kept_segs: list[_Segment] = []
        kept_ranks: list[int] = []
        for g, r in zip(segs, self.ranks, strict=True):  # what is left: each segment's tail
            if g.steps[-1] > last:
                at = int(np.searchsorted(g.steps, last, side="right"))
                kept_segs.append(_Segment(g.steps[at:], g.values[:, at:], g.created))
                kept_ranks.append(r)
        self.segments, self.ranks = kept_segs, kept_ranks
        return uniq[:m], v, mask.reshape(m, world)

    def _remember(self, e: _Emitted) -> None:
        """Keep ``e`` for repeats; drop the oldest steps past :data:`RECENT_ENTRIES` (never the last step)."""
        self.recent.append(e)
        self.recent_entries += int(e.mask.sum())
        while self.recent_entries > RECENT_ENTRIES:
            first = self.recent[0]
            per_step = first.mask.sum(axis=1)
            if len(self.recent) == 1 and len(first.steps) == 1:
                return
            # Drop the fewest whole leading steps that bring the rest to the bound (at most
            # ``limit``), as the per-key trim does; a search over the running total finds them, so
            # an emit of thousands of steps has no loop per step.
            limit = len(first.steps) - (1 if len(self.recent) == 1 else 0)
            dropped = np.cumsum(per_step[:limit])
            drop = min(limit, int(np.searchsorted(dropped, self.recent_entries - RECENT_ENTRIES)) + 1)
            self.recent_entries -= int(dropped[drop - 1]) if drop else 0
            if drop == len(first.steps):
                self.recent.popleft()
            else:
                # Copies: the kept steps are few, and a view would keep a whole emit's matrix alive.
                self.recent[0] = _Emitted(
                    first.steps[drop:].copy(), first.values[:, drop:].copy(), first.mask[drop:].copy()
                )
                return

    def _reduce(self, steps: npt.NDArray[np.int64], v: Matrix, mask: npt.NDArray[np.bool_]) -> EmittedBlock:
        counts_np = mask.sum(axis=1).astype(np.int32)
        pols = self.policies
        values = exact_sums(v, mask)
        means = [i for i, p in enumerate(pols) if p in ("mean", "all")]
        if len(means) == len(pols):
            values /= counts_np
        elif means:
            values[means] /= counts_np
        firsts = [i for i, p in enumerate(pols) if p == "rank0"]
        if firsts:
            low = np.argmax(mask, axis=1)  # the smallest rank present in each step
            values[firsts] = v[firsts][:, np.arange(len(steps)), low]
        return EmittedBlock(self.keys, array("q", steps.tobytes()), values, array("i", counts_np.tobytes()))

    def split(self) -> list[dict[str, Any]]:
        """Per key, the fields of its per-key reducer state equal to this group's (same order as ``keys``)."""
        # Segments are in arrival order: a step's first segment gives its age, as in emit().
        pend: dict[int, tuple[float, dict[int, tuple[Matrix, int]]]] = {}
        for g, r in zip(self.segments, self.ranks, strict=True):
            for col, s in enumerate(g.steps.tolist()):
                pend.setdefault(s, (g.created, {}))[1][r] = (g.values, col)
        order = sorted(pend)
        recent: list[tuple[int, list[tuple[int, int, _Emitted]]]] = []
        for e in self.recent:
            for j, s in enumerate(e.steps.tolist()):
                recent.append((s, [(r, j, e) for r in np.flatnonzero(e.mask[j]).tolist()]))
        out: list[dict[str, Any]] = []
        for i, policy in enumerate(self.policies):
            out.append(
                {
                    "policy": policy,
                    "first_seen": self.first_seen,
                    "pending": {
                        s: (pend[s][0], {r: float(m[i, col]) for r, (m, col) in pend[s][1].items()}) for s in order
                    },
                    "heap": list(order),
                    "maxstep": dict(self.maxstep),
                    "settled": self.settled,
                    "emitted_upto": self.emitted_upto,
                    "recent": {s: {r: float(e.values[i, j, r]) for r, j, e in g} for s, g in recent},
                    "recent_entries": self.recent_entries,
                }
            )
        return out
