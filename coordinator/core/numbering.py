"""The automatic step rule: a point logged without a step (-1) gets the previous step of its key + 1.

The sender applies it to each column it cuts (:class:`~coordinator.client.steps.StepNumbering`,
which keeps each key's last step), and recovery to a copied generation's columns
(:mod:`~coordinator.transport.copyread`), from the last step the sender had when it was copied:
the same points get the same steps either way.
"""

from __future__ import annotations

from array import array

import numpy as np

__all__ = ["explicit", "number_steps"]

_VECTOR_POINTS = 256
"""A column this long is numbered with numpy (shorter ones: a Python loop is cheaper)."""


def number_steps(steps: array[int], last: int) -> tuple[int, bool]:
    """Replace each -1 in ``steps`` by the step before it + 1 (``last`` before the first), in place.

    Returns the column's last step (``last`` for an empty one) and whether any step was numbered.
    """
    if not steps:
        return last, False
    if len(steps) >= _VECTOR_POINTS:
        return _number_long(steps, last)
    if min(steps) >= 0:
        return steps[-1], False
    for i, s in enumerate(steps):
        if s < 0:
            s = steps[i] = last + 1
        last = s
    return last, True


def explicit(steps: array[int] | memoryview) -> bool:
    """Whether every step of ``steps`` was given (none is -1): a frame's rows then need no numbering.

    A long frame (a rank logging flat out) is checked with numpy: ``min()`` over the array steps
    through it in Python objects, ~15 ns a row.
    """
    if len(steps) >= _VECTOR_POINTS:
        return bool(np.frombuffer(steps, dtype=np.int64).min() >= 0)
    return not steps or min(steps) >= 0


def _number_long(steps: array[int], last: int) -> tuple[int, bool]:
    """:func:`number_steps` for a long column, with numpy.

    A rank logging flat out cuts columns of tens of thousands of points: ``min()`` over the array
    and the per-point loop held the GIL for milliseconds in one C call or one stretch (the training
    thread waited for it). Each -1 at position ``i`` becomes the last explicit step before it (at
    ``p``; ``last`` when there is none, ``p = -1``) plus ``i - p``: the sequential rule, all at once.
    """
    a = np.frombuffer(steps, dtype=np.int64)  # a view: written in place
    auto = a < 0
    numbered = bool(auto.any())
    if numbered:
        idx = np.arange(len(a), dtype=np.int64)
        pos = np.maximum.accumulate(np.where(auto, -1, idx))
        base = np.where(pos >= 0, a[np.maximum(pos, 0)], last)
        a[auto] = (base + (idx - pos))[auto]
    return int(a[-1]), numbered
