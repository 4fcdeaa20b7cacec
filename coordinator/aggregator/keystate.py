"""The reducer's per-key state (one key's pending and recently emitted groups) and what an emit gives per key.

:class:`~coordinator.aggregator.reduce.Reducer` keeps a key here while it is not in a
:class:`~coordinator.aggregator.blocks.KeyGroup`: logged alone, or taken out of its group
(a repeat, a late point, another tuple of keys that shares it).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from coordinator.aggregator.blocks import RECENT_ENTRIES

__all__ = ["Emitted", "KeyState", "newest"]


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
