"""Key groups: the reducer's fast path for keys the ranks log together, one dict per step.

A rank that logs ``run.log({...}, step=s)`` sends one chunk per key with the same steps; the
wire decoder hands such a run of keys over as a *block* (one steps array, a keys x steps values
matrix). While every rank logs the same tuple of keys as blocks, in increasing steps, the
reducer keeps the tuple as one :class:`KeyGroup`: its pending steps are held once for all its
keys (step -> rank -> a column of a block), and an emit reduces every key of the emitted steps
with numpy at once. The group's state is exactly what each key's per-key state would be (every
key has the same steps from the same ranks), so anything the group does not handle — a repeat,
a late point, a step below the rank's last, a key logged alone or in another tuple, a rewind —
first turns it into per-key states (:meth:`KeyGroup.split`) and goes on the per-key path: a
group never changes a result, it only computes it with fewer Python operations.

Sums are correctly rounded, as :func:`math.fsum` is (:func:`exact_sums`): a vectorised
error-free summation whose result is certified per element, with ``math.fsum`` for the rare
element it cannot certify (a near-tie, a zero, an overflow, a NaN).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from heapq import heappop, heappush
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.aggregator.sums import total

__all__ = ["FAST_POLICIES", "RECENT_ENTRIES", "EmittedBlock", "KeyGroup", "Matrix", "exact_sums"]

Matrix = npt.NDArray[np.float64]
"""A block's values: one row per key, one column per step."""

FAST_POLICIES = frozenset(("mean", "all", "sum", "rank0"))
"""Policies a group reduces itself (their result does not depend on the ranks' arrival order)."""

RECENT_ENTRIES = 256
"""Per key, the (rank, value) entries of emitted groups kept for repeats (at least the last group)."""

_MARGIN = 1.0 + 2.0**-40
"""Slack on the certificate's float arithmetic (its own roundings are below 2**-52 relative)."""


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


def _certified(v: Matrix) -> Matrix:
    """The rounded sums over the last axis of ``v``, NaN where they are not certified correctly rounded."""
    n = v.shape[-1]
    s = v[..., 0].copy()
    errs: list[Matrix] = []
    for i in range(1, n):
        x = v[..., i]
        t = s + x
        bp = t - s
        errs.append((s - (t - bp)) + (x - bp))
        s = t
    u = errs[0] if errs else np.zeros_like(s)
    spread = np.zeros_like(s)
    for e in errs[1:]:
        t = u + e
        bp = t - u
        spread += np.abs((u - (t - bp)) + (e - bp))
        u = t
    res = s + u
    bp = res - s
    g = (s - (res - bp)) + (u - bp)
    a = np.abs(res)
    half = np.minimum(a - np.nextafter(a, 0.0), np.nextafter(a, np.inf) - a) * 0.5
    ok = np.isfinite(res) & (a > 0.0) & ((np.abs(g) + spread) * _MARGIN < half)
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


Column = tuple[Matrix, int]
"""A block's values matrix and one of its columns: the values of one step for every key of a group."""


def _copy_run(v: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], rank: int, run: list[Any]) -> None:
    """Copy one run (matrix, first j, first column, length) of ``rank``'s columns into ``v`` and mark it in ``mask``."""
    mat, j, col, n = run
    v[:, j : j + n, rank] = mat[:, col : col + n]
    mask[j : j + n, rank] = True


@dataclass(slots=True, eq=False)
class KeyGroup:
    """The shared reducer state of a tuple of keys every rank logs together (see the module doc)."""

    keys: tuple[str, ...]
    policies: tuple[str, ...]
    world: int
    first_seen: float
    pending: dict[int, tuple[float, dict[int, Column]]] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)
    maxstep: dict[int, int] = field(default_factory=dict)
    settled: bool = False
    emitted_upto: int = -1
    recent: deque[tuple[int, dict[int, Column]]] = field(default_factory=deque)
    """The latest emitted steps (oldest first), bounded as a key's ``recent`` is."""
    recent_entries: int = 0

    def fits(self, rank: int, steps: array[int]) -> bool:
        """True when ``rank`` adding ``steps`` is regular: no repeat, no late point, increasing steps."""
        first = steps[0]
        if first <= self.emitted_upto or first <= self.maxstep.get(rank, -1) or not 0 <= rank < self.world:
            return False
        return len(steps) == 1 or all(a < b for a, b in pairwise(steps))

    def add(self, rank: int, steps: array[int], values: Matrix, now: float) -> None:
        """Add one rank's block (``fits`` must have said yes): one dict operation per step."""
        pending = self.pending
        heap = self.heap
        for col, s in enumerate(steps):
            cg = pending.get(s)
            if cg is None:
                pending[s] = (now, {rank: (values, col)})
                heappush(heap, s)
            else:
                cg[1][rank] = (values, col)
        self.maxstep[rank] = steps[-1]

    def emit(
        self, now: float, done: set[int], world: frozenset[int], timeout: float, force: bool
    ) -> EmittedBlock | None:
        """Emit the group's complete or timed-out steps (the per-key rule, applied once for all keys)."""
        if not self.pending:
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
        limit = now - timeout
        pending = self.pending
        heap = self.heap
        out: list[tuple[int, dict[int, Column]]] = []
        while heap:
            s = heap[0]
            cg = pending.get(s)
            if cg is None:
                heappop(heap)
                continue
            created, g = cg
            if not (force or s <= wm or created <= limit):
                break
            heappop(heap)
            del pending[s]
            out.append((s, g))
            self.emitted_upto = s
            self.recent.append((s, g))
            self.recent_entries += len(g)
        while self.recent_entries > RECENT_ENTRIES and len(self.recent) > 1:
            self.recent_entries -= len(self.recent.popleft()[1])
        return self._reduce(out) if out else None

    def _reduce(self, out: list[tuple[int, dict[int, Column]]]) -> EmittedBlock:
        k, m = len(self.keys), len(out)
        v = np.zeros((k, m, self.world))
        mask = np.zeros((m, self.world), dtype=bool)
        steps = array("q")
        counts = array("i")
        low = np.empty(m, dtype=np.intp)
        # A rank's consecutive steps from one block are consecutive columns of its matrix: copy
        # each such run with one slice, not one numpy call (~1 µs) per step and rank.
        runs: dict[int, list[Any]] = {}  # rank -> [matrix, first j, first column, length] of its open run
        for j, (s, g) in enumerate(out):
            steps.append(s)
            counts.append(len(g))
            low[j] = min(g)
            for r, (mat, col) in g.items():
                run = runs.get(r)
                if run is not None and run[0] is mat and run[1] + run[3] == j and run[2] + run[3] == col:
                    run[3] += 1
                    continue
                if run is not None:
                    _copy_run(v, mask, r, run)
                runs[r] = [mat, j, col, 1]
        for r, run in runs.items():
            _copy_run(v, mask, r, run)
        pols = self.policies
        values = exact_sums(v, mask)
        means = [i for i, p in enumerate(pols) if p in ("mean", "all")]
        if len(means) == k:
            values /= np.frombuffer(counts, dtype=np.int32)
        elif means:
            values[means] /= np.frombuffer(counts, dtype=np.int32)
        firsts = [i for i, p in enumerate(pols) if p == "rank0"]
        if firsts:
            values[firsts] = v[firsts][:, np.arange(m), low]
        return EmittedBlock(self.keys, steps, values, counts)

    def split(self) -> list[dict[str, Any]]:
        """Per key, the fields of its per-key reducer state equal to this group's (same order as ``keys``)."""
        out: list[dict[str, Any]] = []
        recent = list(self.recent)
        pend = list(self.pending.items())
        for i, policy in enumerate(self.policies):
            out.append(
                {
                    "policy": policy,
                    "first_seen": self.first_seen,
                    "pending": {s: (c, {r: float(m[i, col]) for r, (m, col) in g.items()}) for s, (c, g) in pend},
                    "heap": [s for s, _ in pend],
                    "maxstep": dict(self.maxstep),
                    "settled": self.settled,
                    "emitted_upto": self.emitted_upto,
                    "recent": {s: {r: float(m[i, col]) for r, (m, col) in g.items()} for s, g in recent},
                    "recent_entries": self.recent_entries,
                }
            )
        return out
