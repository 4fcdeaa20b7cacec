"""The sender's cut of one generation into wire batches, in process: time per cut and its longest slice.

The sender thread holds the GIL while it cuts the buffer and encodes the batches, except at the
``pause`` points between slices (``transport/slices.py``), where a training thread that wants
the GIL gets it. This times :meth:`Cutter.cut` (``time.perf_counter``) on generations of three
shapes and records the time between consecutive pauses, whose longest is what a training thread
calling ``log()`` at that moment could wait at most (on an otherwise idle CPU):

* ``column``: one key, 65,536 points (a full batch: scalar ``log()``/``append()`` flat out);
* ``frame``: a 100-key dict at 655 steps (a full batch of dicts flat out);
* ``paced``: a 100-key dict at 3 steps (a 50 ms flush of a rank logging it 50 times a second).

Both are wall-clock times. A call inside a slice that releases the GIL counts in it: since round
29, the ``madvise`` that gives back a long cut's pages (``pages.give_back``) falls in the last
slice of a full cut, so a slice is an upper bound of the GIL held there, not the hold itself
(``benchmarks.gil_holds`` measures the holds).

Each generation is built afresh (its arrays untouched by the cut before), cut, and its batches
decoded and checked point by point (outside the timing). The batches of the last ``--hold``
cuts are kept, as the sender's window keeps batches until they are acknowledged (at full load
two or three flushes): the heap a cut allocates its payloads from is then the sender's, and a
full batch's payload lands in fresh pages. Figures: median and longest over ``--repeats`` cuts,
after 3 untimed ones.

    python -m benchmarks.cut [--repeats 50] [--hold 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from array import array

from coordinator.transport import wire
from coordinator.transport.batches import Cutter, OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.frames import Frame

__all__ = ["build", "main", "measure"]

_CAP = 65_536
_SHAPES = {"column": (1, _CAP), "frame": (100, _CAP // 100), "paced": (100, 3)}
"""shape -> (keys, steps)."""


def build(keys: int, steps: int) -> Buffer:
    """A buffer holding one generation: one key's column of ``steps`` points, or a ``keys``-key
    frame of ``steps`` rows."""
    buf = Buffer(10 * _CAP)
    if keys == 1:
        buf.cols["loss"] = (array("q", range(steps)), array("d", (s / 7 for s in range(steps))))
    else:
        kt = tuple(f"train/m{j:03d}" for j in range(keys))
        f = buf.frames[kt] = Frame(kt)
        buf.framed.update(dict.fromkeys(kt, f))
        for s in range(steps):
            f.steps.append(s)
            f.values.extend(s + j / 1000 for j in range(keys))
    buf.pending = keys * steps
    return buf


def _check(batches: list[OutBatch], keys: int, steps: int) -> None:
    """Every point decoded back, at its step with its value."""
    got: dict[str, list[tuple[int, float]]] = {}
    for b in batches:
        d = wire.decode_batch(b.payload or b"", blocks=True)
        for k, s, v in d.metrics:
            got.setdefault(k, []).extend(zip(s, v, strict=True))
        for blk in d.blocks:
            for j, k in enumerate(blk.keys):
                got.setdefault(k, []).extend(zip(blk.steps, blk.values[j].tolist(), strict=True))
    if keys == 1:
        assert got == {"loss": [(s, s / 7) for s in range(steps)]}, "a point lost or changed"
    else:
        assert len(got) == keys and all(
            v == [(s, s + j / 1000) for s in range(steps)] for j, v in enumerate(got.values())
        ), "a point lost or changed"


def measure(shape: str, repeats: int, hold: int = 3) -> tuple[list[float], list[float]]:
    """Per timed cut of ``shape``: its time and its longest slice between pauses (seconds); the
    batches of the last ``hold`` cuts kept meanwhile."""
    keys, steps = _SHAPES[shape]
    marks: list[float] = []
    cutter = Cutter(lambda k, s: None, _CAP, pause=lambda: marks.append(time.perf_counter()))
    totals: list[float] = []
    longest: list[float] = []
    held: list[list[OutBatch]] = []
    for i in range(repeats + 3):
        buf = build(keys, steps)
        marks.clear()
        t0 = time.perf_counter()
        batches = cutter.cut(buf)
        t1 = time.perf_counter()
        edges = [t0, *marks, t1]
        _check(batches, keys, steps)
        held = [*held, batches][-hold:] if hold else []
        if i >= 3:
            totals.append(t1 - t0)
            longest.append(max(b - a for a, b in itertools.pairwise(edges)))
    return totals, longest


def main(argv: list[str] | None = None) -> None:
    """Print, per shape, the cut's median and longest time and its longest slice."""
    ap = argparse.ArgumentParser(prog="benchmarks.cut", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--hold", type=int, default=3, help="keep the batches of this many recent cuts (the window's)")
    args = ap.parse_args(argv)
    for shape, (keys, steps) in _SHAPES.items():
        totals, longest = measure(shape, args.repeats, args.hold)
        print(
            f"{shape:7s} {keys:3d} keys x {steps:5d} steps: cut median {statistics.median(totals) * 1e6:8.1f} µs"
            f" (longest {max(totals) * 1e6:8.1f}); longest slice median {statistics.median(longest) * 1e6:8.1f} µs"
            f" (longest {max(longest) * 1e6:8.1f}); {args.repeats} cuts, {args.hold} held, every point checked"
        )


if __name__ == "__main__":
    main()
