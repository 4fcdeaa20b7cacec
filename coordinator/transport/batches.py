"""Cutting the buffer into wire batches: one generation becomes encoded batches of bounded size.

The sender thread cuts every flush interval. A batch holds at most ``max_batch_points`` points
(a larger generation is split, a long column across batches); the generation's field writes
ride with its last batch. Steps the caller left as -1 are numbered here, by the client's rule.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.core.columns import Column
from coordinator.core.values import FieldValue
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer

__all__ = ["Cutter", "NumberSteps", "OutBatch", "split_columns"]

NumberSteps = Callable[[str, "array[int]"], None]
"""``number_steps(key, steps)``: fills in, in place, the steps a caller left as -1."""

Chunk = tuple[str, "array[int]", "array[float]"]
Part = tuple[list[Chunk], list[tuple[str, FieldValue]], int]
"""One batch's metric chunks, field writes and point count, before encoding."""


@dataclass(slots=True)
class OutBatch:
    """One encoded batch on its way from the cut to the aggregator's ack."""

    seq: int
    """Its sequence number; 0 until numbered."""
    gen: int
    """The buffer generation it was cut from."""
    points: int
    envelope: bytes
    payload: bytes | None
    """None while the batch waits on disk only (``loc``)."""
    loc: tuple[Path, int] | None = None
    """Where the spool holds it, once written ahead."""
    sent_at: float = 0.0


class Cutter:
    """Takes the buffer's current generation and encodes it as batches (sender thread)."""

    def __init__(self, number_steps: NumberSteps, max_batch_points: int) -> None:
        self._number_steps = number_steps
        self._cap = max_batch_points
        self.hot_keys: list[str] = []
        """Keys logged in the last cut: the buffer gets their next columns pre-built."""
        self.cut_gen = -1
        """The last generation taken from the buffer."""

    @property
    def idle(self) -> bool:
        """True when the last cut found no metric points."""
        return not self.hot_keys

    def cut(self, buf: Buffer) -> list[OutBatch]:
        """Swap the buffer's generation out and encode it; empty when nothing was logged."""
        fresh: dict[str, Column] = {k: (array("q"), array("d")) for k in self.hot_keys}
        gen, cols, fields = buf.cut(fresh)
        self.cut_gen = gen
        self.hot_keys = [k for k, (steps, _) in cols.items() if steps]
        if not self.hot_keys and not fields:
            return []
        ts = time.time()
        return [
            OutBatch(0, gen, n, b"", wire.encode_batch(metrics, part_fields, ts))
            for metrics, part_fields, n in split_columns(cols, fields, self._cap, self._number_steps)
        ]


def split_columns(
    cols: dict[str, Column], fields: list[tuple[str, FieldValue]], cap: int, number_steps: NumberSteps
) -> list[Part]:
    """Split columns into parts of at most ``cap`` points; the fields go with the last part.

    Always returns at least one part. Empty columns are skipped; the others get their -1 steps
    numbered by ``number_steps`` first.
    """
    out: list[Part] = []
    cur: list[Chunk] = []
    n = 0
    for key, (steps, values) in cols.items():
        if not steps:
            continue
        number_steps(key, steps)
        i = 0
        while i < len(steps):
            take = min(len(steps) - i, cap - n)
            if i == 0 and take == len(steps):
                cur.append((key, steps, values))
            else:
                cur.append((key, steps[i : i + take], values[i : i + take]))
            n += take
            i += take
            if n >= cap:
                out.append((cur, [], n))
                cur, n = [], 0
    if cur or fields or not out:
        out.append((cur, fields, n))
    else:
        out[-1] = (out[-1][0], fields, out[-1][2])
    return out
