"""Frames: a dict's rows kept step-major, as per-key columns (spill) and wire blocks; the buffer's one-place rule."""

from __future__ import annotations

from array import array

from coordinator.core.columns import from_le
from coordinator.transport.buffer import Buffer
from coordinator.transport.frames import Frame


def frame(keys: tuple[str, ...], rows: list[tuple[int, list[float]]]) -> Frame:
    """A frame holding ``rows`` of (step, one value per key), as ``log()`` appends them."""
    f = Frame(keys)
    for step, vals in rows:
        f.steps.append(step)
        f.values.extend(vals)
    return f


def test_columns_give_each_key_its_points_in_row_order() -> None:
    f = frame(("a", "b"), [(3, [1.0, 2.0]), (1, [3.0, 4.0]), (3, [5.0, 6.0])])
    assert f.points == 6
    cols = f.columns()
    assert {k: (list(s), list(v)) for k, (s, v) in cols.items()} == {
        "a": ([3, 1, 3], [1.0, 3.0, 5.0]),
        "b": ([3, 1, 3], [2.0, 4.0, 6.0]),
    }
    cols["a"][0].append(9)  # each column owns its arrays
    assert list(cols["b"][0]) == [3, 1, 3] and list(f.steps) == [3, 1, 3]


def test_a_block_is_keys_le_steps_and_step_major_le_values_of_the_rows_asked() -> None:
    f = frame(("a", "b"), [(0, [1.0, 2.0]), (1, [3.0, 4.0]), (2, [5.0, 6.0])])
    keys, sb, vb = f.block()
    assert keys == ("a", "b") and list(from_le("q", sb)) == [0, 1, 2]
    assert list(from_le("d", vb)) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    _, sb, vb = f.block(1, 3)
    assert list(from_le("q", sb)) == [1, 2] and list(from_le("d", vb)) == [3.0, 4.0, 5.0, 6.0]


def test_spill_moves_a_frame_into_columns_and_frees_all_its_keys() -> None:
    buf = Buffer(100)
    f = buf.frames[("a", "b")] = frame(("a", "b"), [(0, [1.0, 2.0])])
    buf.framed.update(dict.fromkeys(("a", "b"), f))
    buf.frames[("c", "d")] = g = frame(("c", "d"), [(0, [0.0, 0.0])])
    buf.framed.update(dict.fromkeys(("c", "d"), g))
    buf.spill("b")
    assert list(buf.frames) == [("c", "d")] and set(buf.framed) == {"c", "d"}
    assert {k: (list(s), list(v)) for k, (s, v) in buf.cols.items()} == {"a": ([0], [1.0]), "b": ([0], [2.0])}


def test_cut_hands_over_the_frames_rows_and_keeps_each_frame_empty_for_the_next_generation() -> None:
    buf = Buffer(100)
    f = buf.frames[("a", "b")] = frame(("a", "b"), [(0, [1.0, 2.0])])
    buf.framed.update(dict.fromkeys(("a", "b"), f))
    buf.pending = 2
    gen, cols, frames, fields, texts = buf.cut({"x": (array("q"), array("d"))})
    assert gen == 0 and cols == {} and fields == [] and texts == {}
    (rows,) = frames.values()
    assert rows is not f and rows.keys == ("a", "b") and list(rows.steps) == [0] and list(rows.values) == [1.0, 2.0]
    # The frame stays, without a row, and still holds its keys: the next dict of them appends to it.
    assert buf.frames == {("a", "b"): f} and buf.framed == {"a": f, "b": f} and not f.steps and not f.values
    assert f.steps is not rows.steps and f.values is not rows.values  # what was cut is no longer written
    assert list(buf.cols) == ["x"] and buf.pending == 0 and buf.in_flight == 2


def test_a_frame_without_a_row_in_a_generation_goes_at_its_cut_and_frees_its_keys() -> None:
    buf = Buffer(100)
    f = buf.frames[("a", "b")] = frame(("a", "b"), [(0, [1.0, 2.0])])
    buf.framed.update(dict.fromkeys(("a", "b"), f))
    buf.cut({})
    _, _, frames, _, _ = buf.cut({})  # nothing logged in this generation
    assert frames == {} and buf.frames == {} and buf.framed == {}


def test_a_column_built_ahead_for_a_key_a_kept_frame_holds_is_dropped_one_place_per_key() -> None:
    """The cutter builds columns ahead for the keys logged per key in the last generation; a key
    that a frame took since must not have both in the next one (its points would split)."""
    buf = Buffer(100)
    f = buf.frames[("a", "b")] = frame(("a", "b"), [(3, [1.0, 2.0])])
    buf.framed.update(dict.fromkeys(("a", "b"), f))
    buf.cut({"a": (array("q"), array("d")), "x": (array("q"), array("d"))})
    assert list(buf.cols) == ["x"] and set(buf.framed) == {"a", "b"}
