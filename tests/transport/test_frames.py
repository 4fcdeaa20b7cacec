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


def test_cut_hands_over_the_frames_and_starts_the_next_generation_without_any() -> None:
    buf = Buffer(100)
    f = buf.frames[("a", "b")] = frame(("a", "b"), [(0, [1.0, 2.0])])
    buf.framed.update(dict.fromkeys(("a", "b"), f))
    buf.pending = 2
    gen, cols, frames, fields, texts = buf.cut({"x": (array("q"), array("d"))})
    assert gen == 0 and cols == {} and frames == {("a", "b"): f} and fields == [] and texts == {}
    assert buf.frames == {} and buf.framed == {} and list(buf.cols) == ["x"]
    assert buf.pending == 0 and buf.in_flight == 2
