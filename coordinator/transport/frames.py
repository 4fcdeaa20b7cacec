"""Frames: the points of a dict logged at one step, kept as one step-major matrix per key tuple.

``run.log({...}, step=s)`` with plain numbers appends one row to the frame of its key tuple: one
step to an ``array('q')`` and the dict's values to an ``array('d')`` (K values per row, in the
dict's order). That is a few C-level calls per ``log()`` instead of two appends per key, and the
sender cuts the frame as one wire block (``"b"`` of a batch, :mod:`~coordinator.transport.wire`)
instead of numbering and encoding each key on its own. A dict logged without a step is a row at
-1: the sender numbers the frame's rows once for all its keys (they share every step), or, where
its keys were last logged at different steps, goes per key
(:meth:`~coordinator.client.steps.StepNumbering.frame`). A one-element tensor in the dict is a NaN
in its row until the sender reads the tensor's snapshot into it at the cut
(:mod:`~coordinator.client.devices`).

The buffer keeps one rule: within a generation a key lives in exactly one place, a per-key
column or one frame, so the order of a key's points is the order of the calls. A per-key append
of a key that sits in a frame *spills* the frame first (:meth:`Frame.columns`).
"""

from __future__ import annotations

from array import array

from coordinator.core.columns import Column, le_payload
from coordinator.transport.wire import BlockItem

__all__ = ["Frame"]


class Frame:
    """One key tuple's rows of one generation: ``steps[i]`` and ``values[i*K:(i+1)*K]``."""

    __slots__ = ("keys", "steps", "values")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.steps: array[int] = array("q")
        self.values: array[float] = array("d")
        """Step-major: one row of ``len(keys)`` values per step."""

    @property
    def points(self) -> int:
        """Number of points (rows x keys)."""
        return len(self.values)

    def take(self) -> Frame:
        """This frame's rows as a frame of their own; this one keeps its keys and starts again empty.

        The cut's swap (:meth:`~coordinator.transport.buffer.Buffer.cut`, lock held): the frame
        stays in the buffer for the next generation's calls of the same keys, which then find it
        instead of opening one again (validating and marking every key: ~30 µs of a paced training
        thread's cold CPU after each flush, docs/performance.md round 35).
        """
        rows = Frame.__new__(Frame)
        rows.keys, rows.steps, rows.values = self.keys, self.steps, self.values
        self.steps, self.values = array("q"), array("d")
        return rows

    def columns(self) -> dict[str, Column]:
        """The frame as per-key columns (key -> its steps and values, in row order)."""
        k = len(self.keys)
        steps = self.steps
        return {key: (array("q", steps), self.values[j::k]) for j, key in enumerate(self.keys)}

    def block(self, lo: int = 0, hi: int | None = None) -> BlockItem:
        """Rows ``lo:hi`` as a wire block: ``[keys, LE int64 steps, LE float64 values (rows x keys)]``.

        Rows of a split frame are views of its arrays, not copies (a full batch's rows are a
        megabyte of fresh pages, copied in one C call holding the GIL): the packing copies them
        in slices (:func:`~coordinator.transport.plain.packb_sliced`).
        """
        if lo == 0 and hi is None:
            return self.keys, le_payload(self.steps), le_payload(self.values)
        k = len(self.keys)
        end = len(self.steps) if hi is None else hi
        return (
            self.keys,
            le_payload(memoryview(self.steps)[lo:end]),
            le_payload(memoryview(self.values)[lo * k : end * k]),
        )
