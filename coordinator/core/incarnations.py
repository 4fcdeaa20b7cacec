"""The incarnation-replacement rule: a later incarnation's steps replace the earlier ones.

A restarted rank (a new incarnation) resumes from a checkpoint, so when it logs a key from step
``s`` on, what the rank's earlier incarnations logged for that key at steps ``>= s`` is stale:
it was computed on a timeline the restart threw away. Incarnations are ordered by when they
started logging. The reducer (rebuilding groups), the journal (reading a rank's points) and the
forwarder (skipping stale per-rank points) all apply this one rule.

Within one incarnation the rule for a repeated step is :func:`latest_per_step`: a step a rank
logs again replaces its earlier value (in the rank's series and in the main series alike), and
it counts once as a replaced point. Across incarnations only a *lower* step rewinds: a later
incarnation that continues at higher steps replaces nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "is_replaced",
    "latest_per_step",
    "latest_points",
    "repeated_steps",
    "replaced_from",
    "resolve",
    "start_order",
    "without_replaced",
]

P = TypeVar("P", bound=tuple[Any, ...])
"""A point whose first item is its step: ``(step, value)``, ``(step, value, ts)``."""


def repeated_steps(steps: Sequence[int]) -> int:
    """How many points of one incarnation's ``steps`` repeat an earlier step (each is a replaced point)."""
    return len(steps) - len(set(steps))


def latest_per_step(steps: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    """One incarnation's points of a key with each step once: the later value of a repeated step wins.

    Args:
        steps: the steps in logging order (may repeat).
        values: the values, parallel to ``steps``.

    Returns:
        ``(steps, values)``: each step at the position it was first logged, with the value it was
        last logged with. Without repeats, the input as lists.

    Raises:
        ValueError: ``steps`` and ``values`` differ in length.
    """
    if len(steps) != len(values):
        raise ValueError(f"{len(steps)} steps but {len(values)} values")
    if len(set(steps)) == len(steps):
        return list(steps), list(values)
    at: dict[int, int] = {}
    out_s: list[int] = []
    out_v: list[float] = []
    for s, v in zip(steps, values, strict=True):
        i = at.get(s)
        if i is None:
            at[s] = len(out_s)
            out_s.append(s)
            out_v.append(v)
        else:
            out_v[i] = v
    return out_s, out_v


def latest_points(points: Sequence[P]) -> list[P]:
    """:func:`latest_per_step` for points ``(step, value, ...)`` of one incarnation: the later point of a step wins."""
    if len({p[0] for p in points}) == len(points):
        return list(points)
    at: dict[int, int] = {}
    out: list[P] = []
    for p in points:
        i = at.get(p[0])
        if i is None:
            at[p[0]] = len(out)
            out.append(p)
        else:
            out[i] = p
    return out


def is_replaced(step: int, resumed_at: int | None) -> bool:
    """True when an earlier incarnation's point at ``step`` is stale.

    Args:
        step: the point's step.
        resumed_at: the first step a later incarnation logged for the key (``None``: no later
            incarnation logged it).
    """
    return resumed_at is not None and step >= resumed_at


def without_replaced(points: Sequence[P], resumed_at: int | None) -> list[P]:
    """The points of ``points`` a later incarnation resuming at ``resumed_at`` leaves standing."""
    if resumed_at is None:
        return list(points)
    return [p for p in points if p[0] < resumed_at]


def start_order(started: Mapping[int, float]) -> list[int]:
    """Incarnations ordered by when they started logging (``started``: incarnation -> first batch time).

    Ties keep the mapping's order (journal order), so the ordering is stable.
    """
    return sorted(started, key=started.__getitem__)


def replaced_from(incarnation: int, lineage: Iterable[tuple[int, int | None]]) -> int | None:
    """The step from which ``incarnation``'s points are replaced by later incarnations.

    Args:
        incarnation: the incarnation whose points are asked about.
        lineage: ``(incarnation, first step logged)`` of one rank's key in start order
            (``None`` as first step: it logged no point of the key).

    Returns:
        The smallest first step among the incarnations after ``incarnation``; ``None`` when
        none of them logged the key (or ``incarnation`` is not in the lineage).
    """
    cut: int | None = None
    later = False
    for inc, first in lineage:
        if later and first is not None and (cut is None or first < cut):
            cut = first
        if inc == incarnation:
            later = True
    return cut


def resolve(by_incarnation: Iterable[Sequence[P]]) -> list[P]:
    """One rank's surviving points of a key, in logging order.

    Args:
        by_incarnation: each incarnation's points in logging order, incarnations in start order.

    Returns:
        Every point no later incarnation replaced: an incarnation that logs the key from step
        ``f`` drops the earlier incarnations' points at steps ``>= f``; within an incarnation a
        repeated step keeps its later point (:func:`latest_points`).
    """
    out: list[P] = []
    for raw in by_incarnation:
        pts = latest_points(raw)
        if out and pts:
            out = without_replaced(out, min(p[0] for p in pts))
        out.extend(pts)
    return out
