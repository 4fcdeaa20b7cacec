"""The reducer's per-key state (one key's pending and recently emitted groups) and what an emit gives per key.

:class:`~coordinator.aggregator.reduce.Reducer` keeps a key here while it is not in a
:class:`~coordinator.aggregator.blocks.KeyGroup`: logged alone, or taken out of its group
(a repeat, a late point, a rewind, another tuple of keys that shares it). Keys that a repeat, a late
point or a rewind sent here together form their group again once they are regular (:func:`regroup`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.aggregator.blocks import FAST_POLICIES, RECENT_ENTRIES, KeyGroup
from coordinator.core.incarnations import start_order

__all__ = ["Emitted", "KeyState", "last_logged", "newest", "regroup"]


def newest(recent: dict[int, dict[int, float]]) -> tuple[dict[int, dict[int, float]], int]:
    """The newest groups of ``recent`` holding at most :data:`~coordinator.aggregator.blocks.RECENT_ENTRIES`
    entries (at least one group)."""
    kept: list[tuple[int, dict[int, float]]] = []
    entries = 0
    for s, g in reversed(recent.items()):
        if kept and entries + len(g) > RECENT_ENTRIES:
            break
        kept.append((s, g))
        entries += len(g)
    return dict(reversed(kept)), entries


@dataclass(slots=True)
class KeyState:
    """One key's reducer state: its pending (step, rank) values, how far it is emitted, its recent groups."""

    policy: str
    first_seen: float
    pending: dict[int, tuple[float, dict[int, float]]] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)
    """Pending steps, smallest first (may hold steps already emitted: skipped lazily)."""
    maxstep: dict[int, int] = field(default_factory=dict)
    settled: bool = False
    emitted_upto: int = -1
    recent: dict[int, dict[int, float]] = field(default_factory=dict)
    """Recently emitted groups (step -> rank -> value), oldest first: a repeat re-emits its step."""
    recent_entries: int = 0
    reemit: set[int] = field(default_factory=set)
    """Emitted steps a repeat changed: emitted again with the new value."""


@dataclass(slots=True)
class Emitted:
    """Main-series points of one key, ready to store: steps, values and contributor counts."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    counts: array[int] = field(default_factory=lambda: array("i"))
    reemitted: int = 0
    """How many of the steps re-emit an already emitted step (a repeat changed its value)."""

    def extend(self, e: Emitted) -> None:
        """Append ``e``'s points after these (a later emission of the same key)."""
        self.steps.extend(e.steps)
        self.values.extend(e.values)
        self.counts.extend(e.counts)
        self.reemitted += e.reemitted


def regroup(keys: tuple[str, ...], states: Sequence[KeyState | None], world: int) -> KeyGroup | None:
    """A key group equal to the per-key ``states`` of ``keys``, where they are regular again; else None.

    Regular: every key settled, nothing pending nor to emit again, the same progress of every rank, the
    same recent steps from the same ranks, a policy key groups take. That is the state of a group's keys
    once what turned it into per-key states (a repeat, a late point, a rewind) is emitted: the keys of a
    dict go on as one group instead of point by point for the rest of the run.
    """
    if not states or any(st is None for st in states):
        return None
    sts = [st for st in states if st is not None]
    first = sts[0]
    if any(st.pending or st.reemit or not st.settled or st.policy not in FAST_POLICIES for st in sts):
        return None
    if not all(0 <= r < world for r in first.maxstep) or any(
        st.emitted_upto != first.emitted_upto or st.maxstep != first.maxstep for st in sts
    ):
        return None
    steps = list(first.recent)
    ranks = [list(first.recent[s]) for s in steps]
    if steps != sorted(steps) or not all(0 <= r < world for rs in ranks for r in rs):
        return None
    for st in sts[1:]:
        if list(st.recent) != steps or any(st.recent[s].keys() != first.recent[s].keys() for s in steps):
            return None
    grp = KeyGroup(keys, tuple(st.policy for st in sts), world, min(st.first_seen for st in sts))
    grp.settled, grp.emitted_upto, grp.maxstep = True, first.emitted_upto, dict(first.maxstep)
    if steps:
        mask = np.zeros((len(steps), world), dtype=bool)
        v = np.zeros((len(keys), len(steps), world))
        for j, (s, rs) in enumerate(zip(steps, ranks, strict=True)):
            mask[j, rs] = True
            for i, st in enumerate(sts):
                v[i, j, rs] = [st.recent[s][r] for r in rs]
        grp.remember(np.array(steps, dtype=np.int64), v, mask)
    return grp


def last_logged(chunks: Sequence[tuple[Any, ...]]) -> dict[int, int]:
    """Per rank, the step it logged last (its latest incarnation's last chunk), from chunk summaries."""
    started: dict[int, dict[int, float]] = {}
    last: dict[tuple[int, int], int] = {}
    for rank, inc, ts, _, _, step_last, *_ in chunks:
        by = started.setdefault(rank, {})
        by[inc] = min(ts, by.get(inc, ts))
        last[(rank, inc)] = step_last
    return {rank: last[(rank, start_order(by)[-1])] for rank, by in started.items()}
