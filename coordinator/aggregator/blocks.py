"""Key groups: the reducer's fast path for keys the ranks log together, one dict per step.

A rank that logs ``run.log({...}, step=s)`` sends one chunk per key with the same steps; the
wire decoder hands such a run of keys over as a *block* (one steps array, a keys x steps values
matrix). While every rank logs the same tuple of keys as blocks, in increasing steps, the
reducer keeps the tuple as one :class:`KeyGroup`: it holds the blocks themselves, once for all
its keys and with no work per step on arrival, and an emit lines up the steps of every pending
block and reduces every key of the emitted steps with numpy at once. The group's state is
exactly what each key's per-key state would be (every key has the same steps from the same
ranks), so anything the group does not handle — a repeat, a late point, a step below the
rank's last, a rewind — first turns it into per-key states (:meth:`KeyGroup.split`) and goes on
the per-key path until the keys are regular again
(:func:`~coordinator.aggregator.keystate.regroup`): a group never changes a result, it only
computes it with fewer Python operations. Keys that are also logged on their own or in another
tuple (the frameworks' ``epoch``, in the training dict and in the validation dict) leave their
group alone (:meth:`KeyGroup.shed`), and the group goes on with the rest (:meth:`Reducer.add_block
<coordinator.aggregator.reduce.Reducer.add_block>` says which keys leave).

Sums are correctly rounded, as :func:`math.fsum` is
(:func:`~coordinator.aggregator.sums.exact_sums`). Groups whose emits take the same aligned steps
are reduced together (:mod:`~coordinator.aggregator.fused`).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from coordinator.aggregator.sums import Matrix, exact_sums
from coordinator.core.columns import increasing

__all__ = ["FAST_POLICIES", "RECENT_ENTRIES", "EmittedBlock", "KeyGroup", "Matrix", "reduced"]

_Taken: TypeAlias = "tuple[npt.NDArray[np.int64], Matrix, npt.NDArray[np.bool_]]"
"""What an emit takes from a group: its steps, their keys x steps x ranks values, which rank gave each."""

FAST_POLICIES = frozenset(("mean", "all", "sum", "rank0"))
"""Policies a group reduces itself (their result does not depend on the ranks' arrival order)."""

RECENT_ENTRIES = 256
"""Per key, the (rank, value) entries of emitted groups kept for repeats (at least the last group)."""


def reduced(
    policies: tuple[str, ...], steps: npt.NDArray[np.int64], v: Matrix, mask: npt.NDArray[np.bool_]
) -> tuple[Matrix, array[int]]:
    """The main-series values of emitted steps (keys x steps, one policy of :data:`FAST_POLICIES` per key) from
    their ``v`` (keys x steps x ranks) and ``mask`` (steps x ranks), and each step's count of ranks."""
    counts_np = mask.sum(axis=1).astype(np.int32)
    values = exact_sums(v, mask)
    means = [i for i, p in enumerate(policies) if p in ("mean", "all")]
    if len(means) == len(policies):
        values /= counts_np
    elif means:
        values[means] /= counts_np
    firsts = [i for i, p in enumerate(policies) if p == "rank0"]
    if firsts:
        low = np.argmax(mask, axis=1)  # the smallest rank present in each step
        values[firsts] = v[firsts][:, np.arange(len(steps)), low]
    return values, array("i", counts_np.tobytes())


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
    counted: npt.NDArray[np.int64]
    """The running count of entries (ranks) over the steps: ``counted[i]`` for ``steps[: i + 1]``."""


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
        if not self.segments:
            return None
        wm = self._watermark(now, done, world, timeout)
        taken = self._take_aligned(now, wm, timeout, force) if self._aligned() else self._take(now, wm, timeout, force)
        if taken is None:
            return None
        steps, v, mask = taken
        self.emitted_upto = int(steps[-1])
        self.remember(steps, v, mask)
        values, counts = reduced(self.policies, steps, v, mask)
        return EmittedBlock(self.keys, array("q", steps.tobytes()), values, counts)

    def whole(self, now: float, done: set[int], world: frozenset[int], timeout: float, force: bool) -> bool:
        """Whether :meth:`emit` would now take every pending segment whole: one aligned run, all of it due.

        Such groups can be emitted together (:func:`~coordinator.aggregator.fused.emit_groups`). It settles
        the group as :meth:`emit` would.
        """
        segs = self.segments
        if not segs:
            return False
        wm = self._watermark(now, done, world, timeout)
        if not self._aligned():
            return False
        return force or segs[0].created <= now - timeout or wm >= segs[0].steps[-1]

    def _watermark(self, now: float, done: set[int], world: frozenset[int], timeout: float) -> float:
        """The last step every rank not done has logged past (-1 while unsettled); settles the group when due."""
        if not self.settled and (world <= (done | self.maxstep.keys()) or now - self.first_seen >= timeout):
            self.settled = True
        if not self.settled:
            return -1
        if done:
            return min([m for r, m in self.maxstep.items() if r not in done], default=math.inf)
        return min(self.maxstep.values(), default=math.inf)

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

    def remember(
        self,
        steps: npt.NDArray[np.int64],
        v: Matrix,
        mask: npt.NDArray[np.bool_],
        counted: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Keep emitted ``steps`` (their keys x steps x ranks values, ``mask`` steps x ranks) for repeats.

        ``counted``: the running count of ``mask``'s entries per step, if known (groups emitted together
        share it); it is not changed."""
        self._remember(_Emitted(steps, v, mask, np.cumsum(mask.sum(axis=1)) if counted is None else counted))

    def _remember(self, e: _Emitted) -> None:
        """Keep ``e`` for repeats; drop the oldest steps past :data:`RECENT_ENTRIES` (never the last step)."""
        self.recent.append(e)
        self.recent_entries += int(e.counted[-1])
        while self.recent_entries > RECENT_ENTRIES:
            first = self.recent[0]
            n = len(first.steps)
            if len(self.recent) == 1 and n == 1:
                return
            # Drop the fewest whole leading steps that bring the rest to the bound (at most
            # ``limit``), as the per-key trim does; a search over the running total finds them, so
            # an emit of thousands of steps has no loop per step.
            limit = n - (1 if len(self.recent) == 1 else 0)
            counted = first.counted
            drop = min(limit, int(np.searchsorted(counted[:limit], self.recent_entries - RECENT_ENTRIES)) + 1)
            self.recent_entries -= int(counted[drop - 1]) if drop else 0
            if drop == n:
                self.recent.popleft()
            else:
                # Copies: the kept steps are few, and a view would keep a whole emit's matrix alive.
                self.recent[0] = _Emitted(
                    first.steps[drop:].copy(),
                    first.values[:, drop:].copy(),
                    first.mask[drop:].copy(),
                    counted[drop:] - counted[drop - 1],
                )
                return

    def split(self) -> list[dict[str, Any]]:
        """Per key, the fields of its per-key reducer state equal to this group's (same order as ``keys``)."""
        return self._fields(range(len(self.keys)))

    def shed(self, drop: Sequence[int]) -> list[dict[str, Any]]:
        """Take the keys at positions ``drop`` (some, not all) out of the group: their per-key fields, as
        :meth:`split` gives them; the group goes on with its other keys and their rows of every pending
        and recent block (what it holds for them does not change)."""
        gone = set(drop)
        if not gone or len(gone) >= len(self.keys) or not gone.issubset(range(len(self.keys))):
            raise ValueError(f"shed {sorted(gone)} of a group of {len(self.keys)} keys: some, not all, of them")
        out = self._fields(drop)
        keep = [i for i in range(len(self.keys)) if i not in gone]
        self.keys = tuple(self.keys[i] for i in keep)
        self.policies = tuple(self.policies[i] for i in keep)
        self.segments = [_Segment(g.steps, g.values[keep], g.created) for g in self.segments]
        self.recent = deque(_Emitted(e.steps, e.values[keep], e.mask, e.counted) for e in self.recent)
        return out

    def _fields(self, which: Iterable[int]) -> list[dict[str, Any]]:
        """The per-key fields of the keys at positions ``which`` (in that order)."""
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
        for i in which:
            policy = self.policies[i]
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
