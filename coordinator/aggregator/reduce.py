"""Cross-rank grouping and reduction of metric points into each key's main series.

A (key, step) group collects one value per rank. It is emitted, in step order per key, when
every rank that logs the key has reported that step or moved past it, or when it has waited
``group_timeout_s``. Until a key has been seen from every rank (or its first group timed out)
it is *unsettled*: groups wait for ranks that have not logged it yet, so the first rank to
arrive does not produce a one-rank mean. A point for a step at or below what was already
emitted is *late*: it stays in the rank's own series and is counted, never silently dropped.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush

from coordinator.core.incarnations import is_replaced
from coordinator.core.policies import PolicyTable

__all__ = ["Emitted", "Reducer"]


def _mean(g: dict[int, float]) -> float:
    return math.fsum(g.values()) / len(g)


def _rank0(g: dict[int, float]) -> float:
    return g[min(g)]


_REDUCERS: dict[str, Callable[[dict[int, float]], float]] = {
    "mean": _mean,
    "all": _mean,
    "sum": lambda g: math.fsum(g.values()),
    "min": lambda g: min(g.values()),
    "max": lambda g: max(g.values()),
    "rank0": _rank0,
}


@dataclass(slots=True)
class _KeyState:
    policy: str
    first_seen: float
    pending: dict[int, tuple[float, dict[int, float]]] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)
    """Pending steps, smallest first (may hold steps already emitted: skipped lazily)."""
    maxstep: dict[int, int] = field(default_factory=dict)
    settled: bool = False
    emitted_upto: int = -1


@dataclass(slots=True)
class Emitted:
    """Main-series points of one key, ready to store: steps, values and contributor counts."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    counts: array[int] = field(default_factory=lambda: array("i"))


class Reducer:
    """Groups per-rank points by (key, step) and reduces them across ranks.

    Not thread-safe: owned by the aggregator loop.
    """

    def __init__(self, world_size: int, policy: PolicyTable, group_timeout_s: float) -> None:
        self.world = frozenset(range(world_size))
        self.policy = policy
        self.group_timeout_s = group_timeout_s
        self.keys: dict[str, _KeyState] = {}
        self.done: set[int] = set()
        """Ranks that closed or were lost: never waited for again."""
        self.late_points = 0
        self.replaced_points = 0
        self._touched: set[str] = set()

    def add(self, key: str, rank: int, steps: Iterable[int], values: Iterable[float], now: float) -> None:
        """Add one rank's points for ``key`` (steps in the order the rank logged them)."""
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = _KeyState(self.policy(key), now)
        if st.policy == "per_rank":
            return
        pending = st.pending
        heap = st.heap
        emitted = st.emitted_upto
        hi = st.maxstep.get(rank, -1)
        for s, v in zip(steps, values, strict=True):
            g = pending.get(s)
            if g is None:
                if s <= emitted:
                    self.late_points += 1
                    continue
                pending[s] = (now, {rank: v})
                heappush(heap, s)
            else:
                if rank in g[1]:
                    self.replaced_points += 1
                g[1][rank] = v
            if s > hi:
                hi = s
        st.maxstep[rank] = hi
        self._touched.add(key)

    def restore(
        self, key: str, emitted_upto: int, rank_points: dict[int, tuple[list[int], list[float]]], now: float
    ) -> None:
        """Rebuild a key's state after a restart from what the store holds.

        Args:
            key: the metric key.
            emitted_upto: the last step of its stored main series (-1 if none).
            rank_points: per rank, every stored (steps, values) of the key in arrival order.
            now: the current time.
        """
        st = self.keys[key] = _KeyState(self.policy(key), now, settled=True, emitted_upto=emitted_upto)
        if st.policy == "per_rank":
            return
        for rank, (steps, values) in rank_points.items():
            st.maxstep[rank] = max(steps) if steps else -1
            for s, v in zip(steps, values, strict=True):
                if s > emitted_upto:
                    g = st.pending.get(s)
                    if g is None:
                        st.pending[s] = (now, {rank: v})
                    else:
                        g[1][rank] = v
        st.heap = list(st.pending)
        heapify(st.heap)
        self._touched.add(key)

    def rewind(self, key: str, rank: int, step: int) -> None:
        """A restarted incarnation of ``rank`` resumed ``key`` at ``step`` (from a checkpoint).

        The rank's values at the steps the restart replaces (:mod:`coordinator.core.incarnations`)
        are dropped and the groups from ``step`` on rebuilt: emission rewinds to ``step - 1``, and
        every rank's progress is capped below ``step`` so the groups wait for the restarted ranks
        to log those steps again (or for the group timeout).
        The store keeps the latest main value per step, so re-emitted steps replace stale ones.
        """
        st = self.keys.get(key)
        if st is None:
            return
        if step <= st.emitted_upto:
            st.emitted_upto = step - 1
        for s, (_, g) in st.pending.items():
            if is_replaced(s, step):
                g.pop(rank, None)
        st.pending = {s: cg for s, cg in st.pending.items() if cg[1]}
        st.heap = list(st.pending)
        heapify(st.heap)
        st.maxstep = {r: min(m, step - 1) for r, m in st.maxstep.items()}
        # A restart is under way: the ranks that logged this key are expected back (a lost old
        # incarnation is not the end of its rank); one that never returns is covered by the timeout.
        self.done.difference_update(st.maxstep)

    def rank_done(self, rank: int) -> None:
        """Stop waiting for ``rank`` (closed or lost); its pending groups become emittable."""
        self.done.add(rank)
        self._touched.update(self.keys)

    def emit(self, now: float, *, force: bool = False, all_keys: bool = False) -> dict[str, Emitted]:
        """Emit every complete or timed-out group, in step order per key.

        Args:
            now: the current time (``time.monotonic`` scale used for ``add``).
            force: emit everything pending (run end).
            all_keys: check every key (timeouts), not only those touched since the last call.
        """
        out: dict[str, Emitted] = {}
        keys = self.keys if (force or all_keys) else self._touched
        for key in list(keys):
            st = self.keys[key]
            if not st.pending:
                continue
            if not st.settled:
                logged = st.maxstep.keys()
                if self.world <= (self.done | logged) or now - st.first_seen >= self.group_timeout_s:
                    st.settled = True
            if st.settled:
                live = [m for r, m in st.maxstep.items() if r not in self.done]
                wm = min(live) if live else math.inf
            else:
                wm = -1
            limit = now - self.group_timeout_s
            reduce = _REDUCERS[st.policy]
            e: Emitted | None = None
            heap = st.heap
            while heap:
                s = heap[0]
                cg = st.pending.get(s)
                if cg is None:
                    heappop(heap)  # emitted or dropped already
                    continue
                created, g = cg
                if not (force or s <= wm or created <= limit):
                    break
                heappop(heap)
                del st.pending[s]
                if e is None:
                    e = out[key] = Emitted()
                e.steps.append(s)
                e.values.append(reduce(g))
                e.counts.append(len(g))
                st.emitted_upto = s
        self._touched.clear()
        return out

    def pending_groups(self) -> int:
        """Groups still waiting for ranks."""
        return sum(len(st.pending) for st in self.keys.values())
