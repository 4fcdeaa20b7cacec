"""The sender's code marks of the GIL-stretch benchmark: what is recorded, and how a hold is annotated."""

from __future__ import annotations

import gc
import sys

from benchmarks.gil_spans import annotate, install
from coordinator.transport.slices import GilSlicer
from coordinator.transport.wake import WakePipe


def test_marks_say_where_the_slicer_was_called_and_when_a_step_ran_then_come_off() -> None:
    original = GilSlicer.pause
    marks = install()
    try:
        slicer = GilSlicer(budget_s=10.0)
        line = sys._getframe().f_lineno + 1
        slicer.start()
        slicer.pause()
        pipe = WakePipe()
        pipe.wake()
        pipe.drain()
        pipe.close()
        gc.collect(0)
    finally:
        marks.remove()
    labels = [label for _, label in marks.items() if not label.startswith("gc ")]
    here = "test_gil_spans.py"
    assert labels == [f"start {here}:{line}", f"pause {here}:{line + 1}", "> drain", "< drain"]
    assert {"gc start (generation 0)", "gc stop (generation 0)"} <= {label for _, label in marks.items()}
    times = [t for t, _ in marks.items()]
    assert times == sorted(times)
    assert GilSlicer.pause is original  # removed: nothing marked any more
    n = len(marks.times)
    GilSlicer(budget_s=10.0).pause()
    gc.collect(0)
    assert len(marks.times) == n


def test_a_release_is_marked_as_a_yield_where_it_was_called() -> None:
    marks = install()
    try:
        slicer = GilSlicer(budget_s=10.0)
        line = sys._getframe().f_lineno + 1
        slicer.release()
    finally:
        marks.remove()
    assert [label for _, label in marks.items() if not label.startswith("gc ")] == [f"yield test_gil_spans.py:{line}"]
    assert slicer.yields == 1


def test_annotate_lists_the_longest_holds_on_the_cpu_with_the_marks_around_them() -> None:
    holds = [(1_000_000, 1_100_000), (2_000_000, 2_300_000), (3_000_000, 3_050_000)]
    cpu = [100_000, 120_000, 50_000]  # the second was switched out for 180 µs: second longest on the CPU
    marks = [
        (1_750_000, "too early for the second"),
        (1_950_000, "< wait"),
        (2_010_000, "start sender.py:217"),
        (1_010_000, "> _flush"),
        (2_400_000, "after the second"),
    ]
    out = annotate(holds, cpu, marks, 2)
    assert out == [
        "  hold of 300 µs (120 on the CPU):",
        "       -50.0 µs  < wait",
        "       +10.0 µs  start sender.py:217",
        "  hold of 100 µs (100 on the CPU):",
        "       +10.0 µs  > _flush",
    ]


def test_a_hold_with_no_mark_just_before_it_lists_the_last_mark_before_it() -> None:
    """A hold that starts after a yield and a wait for the GIL (the switch interval) says where the thread stood."""
    holds = [(10_000_000, 10_300_000), (20_000_000, 20_100_000)]
    cpu = [300_000, 100_000]
    marks = [
        (4_700_000, "yield plain.py:75"),  # 5.3 ms before the first hold: the one to list
        (4_900_000, "yield plain.py:75"),
        (10_200_000, "> fresh"),
        (19_000_000, "> ack"),  # 1 ms before the second hold, which has a mark inside it too
        (19_900_000, "< ack"),
        (20_050_000, "yield pipeline.py:167"),
    ]
    assert annotate(holds, cpu, marks, 2) == [
        "  hold of 300 µs (300 on the CPU):",
        "     -5100.0 µs  yield plain.py:75",
        "      +200.0 µs  > fresh",
        "  hold of 100 µs (100 on the CPU):",
        "      -100.0 µs  < ack",
        "       +50.0 µs  yield pipeline.py:167",
    ]
