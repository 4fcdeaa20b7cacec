"""Key groups emitted together: one reduction for every group whose emit takes the same aligned steps.

A training loop that logs a dict and a few scalars alone at each step (``run.log({"loss": x},
step=s)``, ``run["lr"].append(v, step=s)``) gives the reducer a group per dict and one per scalar
key (each of the rank's frames arrives as its own block). Emitted one by one, every group pays the
same fixed count of numpy calls for its take, its exact sums and its division, whatever its size:
about 100 µs a one-key group on the development VM, where one 20-key group costs 150 µs in all
(docs/performance.md, round 60). Groups whose pending segments are the same run of steps from the
same ranks, all of it due (:meth:`~coordinator.aggregator.blocks.KeyGroup.whole`: the ranks logged
in step, the common case), are stacked into one keys x ranks x steps matrix here and reduced
by one call of :func:`~coordinator.aggregator.blocks.reduced`. Each group still gets its own
:class:`~coordinator.aggregator.blocks.EmittedBlock` (its rows of the result) and keeps its own
recent values, so what is emitted, stored and kept is exactly what its own emit gives; only the
work is shared. Every other group emits alone.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np

from coordinator.aggregator.blocks import EmittedBlock, KeyGroup, reduced

__all__ = ["emit_groups"]


def emit_groups(
    groups: Iterable[KeyGroup], now: float, done: set[int], world: frozenset[int], timeout: float, force: bool
) -> list[EmittedBlock]:
    """What :meth:`KeyGroup.emit <coordinator.aggregator.blocks.KeyGroup.emit>` gives for each of ``groups``
    (those that emit something), the groups that take the same whole run emitted together."""
    out: list[EmittedBlock] = []
    together: dict[tuple[int, int, int, frozenset[int]], list[KeyGroup]] = {}
    for grp in groups:
        if grp.whole(now, done, world, timeout, force):
            steps = grp.segments[0].steps
            together.setdefault((int(steps[0]), len(steps), grp.world, frozenset(grp.ranks)), []).append(grp)
            continue
        b = grp.emit(now, done, world, timeout, force)
        if b is not None:
            out.append(b)
    for grps in together.values():
        if len(grps) == 1:
            b = grps[0].emit(now, done, world, timeout, force)
            if b is not None:
                out.append(b)
        else:
            out.extend(_emit_whole(grps))
    return out


def _emit_whole(groups: list[KeyGroup]) -> list[EmittedBlock]:
    """Emit ``groups`` (each :meth:`~KeyGroup.whole`, the same steps, world and ranks) with one reduction."""
    first = groups[0]
    steps = first.segments[0].steps
    n = len(steps)
    world = first.world
    keys = sum(len(g.keys) for g in groups)
    # Every segment's keys x steps values go into one keys x ranks x steps matrix (ranks before steps, as a
    # group's own take lays them out for the sums) by one gather: row ``key * world + rank`` of its flat view.
    rows: list[int] = []
    values = []
    at = 0
    for g in groups:
        k = len(g.keys)
        for seg, rank in zip(g.segments, g.ranks, strict=True):
            rows.extend(range(at * world + rank, (at + k) * world + rank, world))
            values.append(seg.values)
        at += k
    vt = np.zeros((keys, world, n))
    vt.reshape(keys * world, n)[rows] = np.concatenate(values, axis=0)
    mask = np.zeros((n, world), dtype=bool)
    mask[:, first.ranks] = True
    v = vt.transpose(0, 2, 1)
    policies = tuple(p for g in groups for p in g.policies)
    main, counts = reduced(policies, steps, v, mask)
    counted = np.cumsum(mask.sum(axis=1))
    last = int(steps[-1])
    step_bytes = steps.tobytes()
    out: list[EmittedBlock] = []
    at = 0
    for g in groups:
        k = len(g.keys)
        g.emitted_upto = last
        g.remember(steps, v[at : at + k], mask, counted)
        g.segments, g.ranks = [], []
        out.append(EmittedBlock(g.keys, array("q", step_bytes), main[at : at + k], array("i", counts)))
        at += k
    return out
