"""Cutting the buffer into wire batches: one generation becomes encoded batches of bounded size.

The sender thread cuts every flush interval. A batch holds at most ``max_batch_points`` points
(a larger generation is split, a long column across batches); the generation's field writes
ride with its last batch, and so do its texts when they fit (else they follow in batches of their
own, each at most :data:`MAX_BATCH_TEXT_CHARS` characters of text, far below the frame limit).
Steps the caller left as -1 are numbered here, by the client's rule.

The usual generation (no texts, at most one batch of points) is numbered and turned into wire
chunks in one pass over its keys, in slices of :data:`SLICE_KEYS` keys: between slices the
cutter calls ``pause`` (the sender's GIL slicer), so a cut of many keys never holds the GIL for
long in one stretch; it also pauses between the swap, the frames' blocks and the encoding, each
tens of µs of work on a cold CPU.

Frames (a dict's rows, each at one step, :mod:`~coordinator.transport.frames`) are cut as one
wire block each, with no per-key Python: ``frame_steps`` numbers their rows logged
without a step once for all the keys and records where the keys ended, so a later ``log()``
without a step continues after it (a frame it cannot number that way goes per key). A frame
that does not fit the room left in a batch is split by step rows; one with more keys than a
batch holds is spilled into per-key columns and split as those are.
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from coordinator.core.columns import VIEW_ITEMS, Column, le_payload, to_le
from coordinator.core.numbering import explicit
from coordinator.core.values import FieldValue
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer, TextColumn
from coordinator.transport.frames import Frame
from coordinator.transport.pages import give_back

__all__ = [
    "MAX_BATCH_TEXT_CHARS",
    "SLICE_KEYS",
    "Cutter",
    "FrameSteps",
    "NumberSteps",
    "OutBatch",
    "split_columns",
    "split_frames",
    "split_texts",
]

MAX_BATCH_TEXT_CHARS = 8 * 1024 * 1024
"""Characters of text one batch carries at most (at most 4 bytes each in UTF-8: 32 MiB < the 64 MiB frame cap)."""

SLICE_KEYS = 32
"""Keys the one-pass cut numbers and encodes between two calls of ``pause`` (~30-60 µs of work)."""

NumberSteps = Callable[[str, "array[int]"], None]
"""``number_steps(key, steps)``: fills in, in place, the steps a caller left as -1."""

FrameSteps = Callable[[tuple[str, ...], "array[int]"], bool]
"""``frame_steps(keys, steps)``: numbers a cut frame's -1 rows in place for all its keys and records
their last step; False: it cannot (its keys ended at different steps), the frame goes per key."""

Chunk = tuple[str, "array[int] | memoryview", "array[float] | memoryview"]
Part = tuple[list[Chunk], list[tuple[str, FieldValue]], int]
"""One batch's metric chunks, field writes and point count, before encoding."""
Encoded = tuple[list[list[object]], list[wire.BlockItem], int]
"""One batch's wire chunks (``[key, LE steps, LE values]``), wire blocks and point count."""


@dataclass(slots=True)
class OutBatch:
    """One encoded batch on its way from the cut to the aggregator's ack."""

    seq: int
    """Its sequence number; 0 until numbered."""
    gen: int
    """The buffer generation it was cut from."""
    points: int
    envelope: bytes
    payload: bytes | memoryview | None
    """None while the batch waits on disk only (``loc``); a large one is a read-only view
    (:func:`~coordinator.transport.wire.encode_chunks_view`, packed in slices)."""
    loc: tuple[Path, int] | None = None
    """Where the spool holds it, once written ahead."""
    sent_at: float = 0.0


class Cutter:
    """Takes the buffer's current generation and encodes it as batches (sender thread)."""

    def __init__(
        self,
        number_steps: NumberSteps,
        max_batch_points: int,
        pause: Callable[[], None] | None = None,
        frame_steps: FrameSteps | None = None,
    ) -> None:
        """Args:
        number_steps: fills in a column's -1 steps (the client's rule).
        max_batch_points: points one batch carries at most.
        pause: called between slices of keys (the sender lets other threads take the GIL).
        frame_steps: numbers each cut frame's rows logged without a step and records its keys'
            last step (the client's rule); None: a frame with such rows goes per key.
        """
        self._number_steps = number_steps
        self._frame_steps = frame_steps if frame_steps is not None else _no_frame_steps
        self._cap = max_batch_points
        self._pause = pause if pause is not None else _no_pause
        self.hot_keys: list[str] = []
        """Keys logged in the last cut: the buffer gets their next columns pre-built."""
        self.cut_gen = -1
        """The last generation taken from the buffer."""
        self._texts = False
        self._frames = False
        self._points = 0

    @property
    def idle(self) -> bool:
        """True when the last cut found no metric points and no texts."""
        return not self.hot_keys and not self._texts and not self._frames

    def cut(self, buf: Buffer) -> list[OutBatch]:
        """Swap the buffer's generation out and encode it; empty when nothing was logged."""
        fresh: dict[str, Column] = {k: (array("q"), array("d")) for k in self.hot_keys}
        gen, cols, framed, fields, texts = buf.cut(fresh)
        self._pause()  # the swap (~20 µs cold, under the buffer's lock), then the rest
        self.cut_gen = gen
        self.hot_keys = [k for k, (steps, _) in cols.items() if steps]
        self._texts = bool(texts)
        # A frame without a row: opened by a call that a signal's exception (Ctrl-C) then cut short.
        frames = [f for f in framed.values() if f.steps]
        self._frames = bool(frames)
        if not self.hot_keys and not frames and not fields and not texts:
            return []
        ts = time.time()
        cap = self._cap
        pause = self._pause
        # Per key (its keys have no column): a frame wider than a batch, one the rule cannot number whole.
        wide = [f for f in frames if not self._frame_steps(f.keys, f.steps) or len(f.keys) > cap]
        pause()  # the swap and the frames' numbering above, the encoding below: two slices
        if wide:
            for f in wide:
                cols.update(f.columns())
            frames = [f for f in frames if f not in wide]
        out = self._encode(gen, cols, frames, fields, texts, ts)
        if sum(b.points for b in out) >= SHED_POINTS:  # long arrays: their pages go back outside the GIL
            _shed(cols.values(), pause)
            _shed(((f.steps, f.values) for f in framed.values()), pause)
        return out

    def _encode(
        self,
        gen: int,
        cols: dict[str, Column],
        frames: list[Frame],
        fields: list[tuple[str, FieldValue]],
        texts: dict[str, TextColumn],
        ts: float,
    ) -> list[OutBatch]:
        """The cut generation as encoded batches; no view of its arrays is left once it returns."""
        cap = self._cap
        pause = self._pause
        parts: list[Encoded] = []
        if not texts:
            chunks = self._one_pass(cols)
            if chunks is not None:
                n = self._points
                fn = sum(f.points for f in frames)
                if n + fn <= cap:  # the usual case: one batch, nothing split
                    blocks = [f.block() for f in frames]
                    pause()
                    payload = wire.encode_chunks_view(chunks, fields, ts, None, blocks, pause)
                    return [OutBatch(0, gen, n + fn, b"", payload)]
                parts.append((chunks, [], n))
            else:  # more than a batch: the one pass numbered every column, split them
                parts = _encoded(split_columns(cols, [], cap, _numbered, pause), pause)
        elif self.hot_keys or frames or fields:
            parts = _encoded(split_columns(cols, [], cap, self._number_steps, pause), pause)
        if frames:
            m, _, n = parts[-1]
            (first, fn), *rest = split_frames(frames, cap, cap - n)
            parts[-1] = (m, first, n + fn)
            parts.extend(([], bl, bn) for bl, bn in rest)
        text_parts = split_texts(texts, cap, self._number_steps) if texts else []
        out: list[OutBatch] = []
        for i, (m, bl, n) in enumerate(parts):
            pause()  # each batch's encoding: its small parts packed, then long columns copied in slices
            last = i == len(parts) - 1
            first_texts: list[wire.TextChunk] = []
            if last and text_parts and n + text_parts[0][1] <= cap:  # the usual case: one batch per cut
                first_texts, tn = text_parts.pop(0)
                n += tn
            out.append(
                OutBatch(0, gen, n, b"", wire.encode_chunks_view(m, fields if last else [], ts, first_texts, bl, pause))
            )
        out.extend(OutBatch(0, gen, n, b"", wire.encode_batch([], [], ts, t)) for t, n in text_parts)
        return out

    def _one_pass(self, cols: dict[str, Column]) -> list[list[object]] | None:
        """Number every column of the cut and, while they fit one batch, turn them into wire chunks.

        Returns the chunks (their points in ``self._points``), or None when the columns hold more
        than one batch (all of them are numbered then; the caller splits them).
        """
        number = self._number_steps
        pause = self._pause
        le = _to_le
        cap = self._cap
        chunks: list[list[object]] = []
        n = 0
        items = list(cols.items())
        for lo in range(0, len(items), SLICE_KEYS):
            if lo:
                pause()
            for key, (steps, values) in items[lo : lo + SLICE_KEYS]:
                if steps:
                    number(key, steps)
                    m = len(steps)
                    n += m
                    if n <= cap:
                        if m < VIEW_ITEMS:
                            chunks.append([key, le(steps), le(values)])
                        else:  # a long column: a view, which the packer copies once (le_payload)
                            chunks.append([key, le_payload(steps), le_payload(values)])
        self._points = n
        return chunks if n <= cap else None


def _no_pause() -> None:
    """The default ``pause``: nothing to yield to."""


SHED_ITEMS = 131072
"""Items :func:`_shed` gives back between two pauses (1 MiB of an int64 or float64 array) where
the system cannot take pages back outside the GIL (:func:`~coordinator.transport.pages.give_back`)."""

SHED_BYTES = 128 * 1024
"""Arrays of a cut generation at least this long have their pages given back before they are freed."""

SHED_POINTS = SHED_BYTES // 8
"""Points of a cut below which no array of it can be that long: :func:`_shed` is not called."""


def _shed(columns: Iterable[Column], pause: Callable[[], None]) -> None:
    """Give back the pages of each long array of a cut generation, then free it.

    A rank logging flat out cuts columns of up to ``max_points`` (16 MiB an array at 2M points).
    Freed holding the GIL, an array's pages go back to the system in one ``munmap``, ``mremap`` or
    ``madvise`` of the allocator: 30 µs to 1 ms at the end of the cut. Here they go first, the GIL
    released (:func:`~coordinator.transport.pages.give_back`), and the free that follows finds
    none left. Where that is refused, each array shrinks :data:`SHED_ITEMS` at a time, ``pause``
    between. The arrays must have no view left: the first shrink raises ``BufferError`` if one
    has, before any page goes. Call it once the batches are encoded.
    """
    long = [a for column in columns for a in column if len(a) * a.itemsize >= SHED_BYTES]
    for a in long:
        del a[len(a) - 1 :]  # BufferError while a view is left, before any page goes
    # Every array's pages first, then the frees: a free may also return free memory next to it.
    given = [give_back(a.buffer_info()[0], len(a) * a.itemsize) for a in long]
    for a, gone in zip(long, given, strict=True):
        if gone:
            del a[:]
            continue
        while len(a) > SHED_ITEMS:
            del a[len(a) - SHED_ITEMS :]
            pause()


def _no_frame_steps(keys: tuple[str, ...], steps: array[int]) -> bool:
    """The default ``frame_steps``: no last steps kept; a frame with rows to number goes per key."""
    return explicit(steps)


def _chunk(c: Chunk) -> list[object]:
    """A chunk as on the wire: ``[key, LE int64 steps, LE float64 values]``."""
    return [c[0], le_payload(c[1]), le_payload(c[2])]


def _encoded(parts: list[Part], pause: Callable[[], None]) -> list[Encoded]:
    """Parts of :func:`split_columns` (without fields) as wire chunks, a ``pause`` between parts.

    A full part's bytes are ~0.2 ms of copying (fresh pages) on the sender thread, which holds
    the GIL meanwhile: a generation of several batches is not one stretch.
    """
    out: list[Encoded] = []
    for m, _, n in parts:
        pause()
        out.append(([_chunk(c) for c in m], [], n))
    return out


def _numbered(key: str, steps: array[int]) -> None:
    """``number_steps`` for columns the one pass has numbered already."""


_to_le = array.tobytes if sys.byteorder == "little" else to_le
"""An array's items as little-endian bytes (the unbound method where that is the native order)."""


def split_columns(
    cols: dict[str, Column],
    fields: list[tuple[str, FieldValue]],
    cap: int,
    number_steps: NumberSteps,
    pause: Callable[[], None] = _no_pause,
) -> list[Part]:
    """Split columns into parts of at most ``cap`` points; the fields go with the last part.

    Always returns at least one part. Empty columns are skipped; the others get their -1 steps
    numbered by ``number_steps`` first. A column split across parts goes into them as views of
    its arrays, not copies (a rank logging flat out cuts columns of up to ``max_points``: each
    part's copy was a megabyte of fresh pages in one C call, 0.1-3 ms holding the GIL); the
    packing copies them, in slices. ``pause`` is called after each column and each full part.
    """
    out: list[Part] = []
    cur: list[Chunk] = []
    n = 0
    for key, (steps, values) in cols.items():
        if not steps:
            continue
        number_steps(key, steps)
        i = 0
        views: tuple[memoryview, memoryview] | None = None
        while i < len(steps):
            take = min(len(steps) - i, cap - n)
            if i == 0 and take == len(steps):
                cur.append((key, steps, values))
            else:
                if views is None:
                    views = memoryview(steps), memoryview(values)
                cur.append((key, views[0][i : i + take], views[1][i : i + take]))
            n += take
            i += take
            if n >= cap:
                out.append((cur, [], n))
                cur, n = [], 0
                pause()
        pause()
    if cur or fields or not out:
        out.append((cur, fields, n))
    else:
        out[-1] = (out[-1][0], fields, out[-1][2])
    return out


def split_frames(frames: list[Frame], cap: int, room: int) -> list[tuple[list[wire.BlockItem], int]]:
    """Frames as wire blocks in parts of at most ``cap`` points, split by step rows.

    The first part holds at most ``room`` points (the room left in the batch it joins; it may be
    empty); a frame that does not fit whole goes on in the next part, ``cap // K`` rows per part.
    Every frame has at most ``cap`` keys.
    """
    out: list[tuple[list[wire.BlockItem], int]] = []
    cur: list[wire.BlockItem] = []
    n = 0
    limit = room
    for f in frames:
        k = len(f.keys)
        rows = len(f.steps)
        r = 0
        while r < rows:
            take = min(rows - r, (limit - n) // k)
            if not take:
                out.append((cur, n))
                cur, n, limit = [], 0, cap
                continue
            cur.append(f.block() if take == rows else f.block(r, r + take))
            n += take * k
            r += take
    out.append((cur, n))
    return out


def split_texts(
    texts: dict[str, TextColumn], cap: int, number_steps: NumberSteps
) -> list[tuple[list[wire.TextChunk], int]]:
    """Split text columns into parts of at most ``cap`` texts and :data:`MAX_BATCH_TEXT_CHARS` characters.

    Each column's -1 steps are numbered by ``number_steps`` first. A part holds at least one text.
    """
    out: list[tuple[list[wire.TextChunk], int]] = []
    cur: list[wire.TextChunk] = []
    n = chars = 0
    for key, (steps, values) in texts.items():
        if not steps:
            continue
        number_steps(key, steps)
        start = 0
        for i, t in enumerate(values):
            if n and (n >= cap or chars + len(t) > MAX_BATCH_TEXT_CHARS):
                if i > start:
                    cur.append((key, steps[start:i], values[start:i]))
                out.append((cur, n))
                cur, n, chars, start = [], 0, 0, i
            n += 1
            chars += len(t)
        cur.append((key, steps[start:], values[start:]))
    if cur:
        out.append((cur, n))
    return out
