"""What the sender thread ran inside its longest GIL stretches: marks in its code, lined up with the recording.

``benchmarks.gil_holds --spans N`` says how long the sender held the GIL; this says what it did
meanwhile. The logging process calls :func:`install` before ``init_run``: it wraps the sender's
GIL slicer (``start``, ``resume``, ``pause``, ``release``) and a few of its steps (:data:`MARKED`) so that
each records a *mark* (``CLOCK_MONOTONIC`` ns, the same clock as ``perf record -k
CLOCK_MONOTONIC``, and what happened) into two ``array('q')``: no object the garbage collector
tracks, so the recording's collections stay the process's own. :func:`annotate` then lists, for
each of the N longest holds on the CPU, the marks from 0.2 ms before it to its end (and, when
none of them comes before its start, the last mark before it: where the thread stood while it
waited for the GIL), in µs from its start: a slicer mark says where (``pause sender.py:226``,
``yield`` when it released the GIL), a step says when it began (``>``) and ended (``<``), and the
garbage collector's runs (in any thread) are marked too.

Each mark costs a few µs on a cold CPU, and is inside the holds it marks: the holds of a marked
recording are longer than an unmarked one's. Use it to find the pieces, the unmarked recording
for the figures.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MARKED", "Marks", "annotate", "install"]

MARKED = (
    ("coordinator.transport.loopio", "LoopIO", "wait"),
    ("coordinator.transport.sender", "SenderThread", "_on_reply"),
    ("coordinator.transport.sender", "SenderThread", "_flush"),
    ("coordinator.transport.buffer", "Buffer", "cut"),
    ("coordinator.transport.wire", None, "encode_chunks"),
    ("coordinator.transport.sender", "SenderThread", "_housekeeping"),
    ("coordinator.transport.wake", "WakePipe", "drain"),
    ("zmq", "Socket", "recv_multipart"),
    ("coordinator.transport.pipeline", "Pipeline", "pump"),
    ("coordinator.transport.pipeline", "Pipeline", "ack"),
    ("coordinator.transport.pipeline", "Pipeline", "_send_batch"),
    ("coordinator.transport.loopio", "LoopIO", "send"),
    ("coordinator.transport.writeahead", "WriteAhead", "write"),
    ("coordinator.transport.outbox", "Outbox", "hold"),
    ("coordinator.transport.spool", "SegmentedSpool", "read_payload"),
    ("coordinator.transport.plain", None, "_list_parts"),
    ("coordinator.transport.pages", None, "take"),
    ("coordinator.transport.pages", None, "populate"),
    ("coordinator.transport.batches", None, "_shed"),
    ("coordinator.transport.batches", None, "give_back"),
    ("coordinator.transport.sender", "SenderThread", "_doze"),
    ("zmq", None, "zmq_poll"),
)
"""(module, class or None, function) of the steps marked at their start and end."""

_BEFORE_NS = 200_000
_LAST_BEFORE_NS = 20_000_000
"""A hold with no mark in the 0.2 ms before it also lists the last mark up to this far before it: a
thread that yielded waits for the GIL for the switch interval (5 ms) when the other thread runs flat
out, and its next hold starts where it yielded."""
_KINDS = ("start", "pause", "yield", "resume")


class Marks:
    """The marks recorded since :func:`install`; :meth:`remove` puts the original functions back."""

    def __init__(self) -> None:
        self.times = array("q")
        self.codes = array("q")
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        self._undo: list[tuple[object, str, object]] = []
        self._on_gc: Callable[[str, dict[str, int]], None] | None = None

    def code(self, label: str) -> int:
        """The number standing for ``label`` in :attr:`codes`."""
        i = self._index.get(label)
        if i is None:
            i = self._index[label] = len(self.labels)
            self.labels.append(label)
        return i

    def patch(self, owner: object, name: str, new: object) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def remove(self) -> None:
        for owner, name, old in reversed(self._undo):
            setattr(owner, name, old)
        self._undo.clear()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def items(self) -> list[tuple[int, str]]:
        """Every mark as (monotonic ns, label), in recording order."""
        return [(t, self.labels[c]) for t, c in zip(self.times, self.codes, strict=True)]

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.items()))


def install() -> Marks:
    """Start marking the slicer's calls and the :data:`MARKED` steps in this process."""
    from coordinator.transport.slices import GilSlicer

    m = Marks()
    times, codes, clock = m.times, m.codes, time.monotonic_ns

    def where(kind: str) -> int:
        """The code of ``kind`` at the slicer's caller (its label formatted once per call site)."""
        f = sys._getframe(2)
        key = id(f.f_code) << 22 | f.f_lineno << 2 | _KINDS.index(kind)  # an int: nothing allocated per call
        c = sites.get(key)
        if c is None:
            c = sites[key] = m.code(f"{kind} {Path(f.f_code.co_filename).name}:{f.f_lineno}")
        return c

    sites: dict[int, int] = {}

    start, pause, release, resume = GilSlicer.start, GilSlicer.pause, GilSlicer.release, GilSlicer.resume

    def marked_start(self: GilSlicer) -> None:
        times.append(clock())
        codes.append(where("start"))
        start(self)

    def marked_resume(self: GilSlicer) -> None:
        times.append(clock())
        codes.append(where("resume"))
        resume(self)

    def marked_pause(self: GilSlicer) -> None:
        before, t = self.yields, clock()
        pause(self)
        times.append(t)
        codes.append(where("yield" if self.yields != before else "pause"))

    def marked_release(self: GilSlicer) -> None:  # yields unless the watched thread slept through the stretch
        before, t = self.yields, clock()
        release(self)
        times.append(t)
        codes.append(where("yield" if self.yields != before else "pause"))

    def on_gc(phase: str, info: dict[str, int]) -> None:
        times.append(clock())
        codes.append(m.code(f"gc {phase} (generation {info['generation']})"))

    gc.callbacks.append(on_gc)
    m._on_gc = on_gc
    m.patch(GilSlicer, "start", marked_start)
    m.patch(GilSlicer, "pause", marked_pause)
    m.patch(GilSlicer, "release", marked_release)
    m.patch(GilSlicer, "resume", marked_resume)
    for mod, cls, fn in MARKED:
        owner: Any = importlib.import_module(mod)
        if cls is not None:
            owner = getattr(owner, cls)
        m.patch(owner, fn, _wrap(getattr(owner, fn), m.code("> " + fn), m.code("< " + fn), times, codes))
    return m


def _wrap(f: Callable[..., Any], enter: int, leave: int, times: array[int], codes: array[int]) -> Callable[..., Any]:
    clock = time.monotonic_ns

    @functools.wraps(f)
    def marked(*args: Any, **kwargs: Any) -> Any:
        times.append(clock())
        codes.append(enter)
        try:
            return f(*args, **kwargs)
        finally:
            times.append(clock())
            codes.append(leave)

    return marked


def annotate(holds: list[tuple[int, int]], cpu: list[int], marks: list[tuple[int, str]], top: int) -> list[str]:
    """The ``top`` longest holds on the CPU (``cpu[i]`` ns for ``holds[i]``), each with the marks around it."""
    marks = sorted(marks)
    out: list[str] = []
    for i in sorted(range(len(holds)), key=lambda i: -cpu[i])[:top]:
        a, b = holds[i]
        out.append(f"  hold of {(b - a) / 1000:.0f} µs ({cpu[i] / 1000:.0f} on the CPU):")
        near = [(t, label) for t, label in marks if a - _BEFORE_NS <= t <= b]
        if not near or near[0][0] >= a:  # say where the thread was: a hold after a yield starts ~5 ms after it
            near[:0] = [(t, label) for t, label in marks if a - _LAST_BEFORE_NS <= t < a - _BEFORE_NS][-1:]
        out.extend(f"    {(t - a) / 1000:+8.1f} µs  {label}" for t, label in near)
    return out
