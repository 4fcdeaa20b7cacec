"""Automatic step numbering: a point logged without a step gets its rank's previous step for the key + 1.

This is training semantics, so it lives with the client; the sender calls it on each column it
cuts from the buffer (off the training thread), before the batch is numbered and sent.
"""

from __future__ import annotations

from array import array

__all__ = ["StepNumbering"]


class StepNumbering:
    """Per key, the last step this rank logged. Used by one thread (the sender's)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def __call__(self, key: str, steps: array[int]) -> None:
        """Replace each -1 in ``steps`` (no step given) by the previous step for ``key`` + 1, in place."""
        last = self._last.get(key, -1)
        if min(steps) < 0:
            for i, s in enumerate(steps):
                if s < 0:
                    s = steps[i] = last + 1
                last = s
        else:
            last = steps[-1]
        self._last[key] = last
