"""Cutting the buffer into wire batches: size bounds, field placement, step numbering, encoding, frames."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import pytest
from pytest import MonkeyPatch

from coordinator.client.steps import StepNumbering
from coordinator.core.columns import Column
from coordinator.transport import batches as batches_module
from coordinator.transport import wire
from coordinator.transport.batches import SHED_ITEMS, Cutter, OutBatch, _shed, split_columns
from coordinator.transport.buffer import Buffer
from coordinator.transport.frames import Frame


def _col(steps: list[int]) -> Column:
    return array("q", steps), array("d", [float(s) for s in steps])


def _no_numbering(key: str, steps: array[int]) -> None:
    pass


def test_a_column_longer_than_the_cap_is_split_across_batches_and_fields_ride_with_the_last() -> None:
    cols = {"a": _col(list(range(5))), "b": _col([10, 11])}
    parts = split_columns(cols, [("f", ("int", 1))], 3, _no_numbering)
    assert [n for _, _, n in parts] == [3, 3, 1]
    assert [[(k, list(s)) for k, s, _ in m] for m, _, _ in parts] == [
        [("a", [0, 1, 2])],
        [("a", [3, 4]), ("b", [10])],
        [("b", [11])],
    ]
    assert [f for _, f, _ in parts] == [[], [], [("f", ("int", 1))]]


def test_fields_after_a_full_batch_go_in_a_batch_of_their_own() -> None:
    parts = split_columns({"a": _col([0, 1])}, [("f", ("bool", True))], 2, _no_numbering)
    assert [(f, n) for _, f, n in parts] == [([], 2), ([("f", ("bool", True))], 0)]


def test_empty_columns_are_skipped_and_there_is_always_one_part() -> None:
    assert split_columns({"a": _col([])}, [], 4, _no_numbering) == [([], [], 0)]


def test_steps_left_as_minus_one_are_numbered_by_the_given_rule() -> None:
    seen: list[str] = []

    def number(key: str, steps: array[int]) -> None:
        seen.append(key)
        for i in range(len(steps)):
            steps[i] = 100 + i

    [(metrics, _, _)] = split_columns({"a": _col([-1, -1]), "e": _col([])}, [], 10, number)
    assert seen == ["a"] and list(metrics[0][1]) == [100, 101]


def test_cutter_encodes_a_generation_that_decodes_to_the_same_points() -> None:
    buf = Buffer(1000)
    buf.cols["a"] = _col([0, 1, 2])
    buf.fields.append(("p", ("str", "x")))
    buf.pending = 3
    cutter = Cutter(_no_numbering, max_batch_points=2)
    batches = cutter.cut(buf)
    assert [(b.gen, b.points, b.seq) for b in batches] == [(0, 2, 0), (0, 1, 0)]
    decoded = [wire.decode_batch(b.payload or b"") for b in batches]
    assert [list(s) for d in decoded for _, s, _ in d.metrics] == [[0, 1], [2]]
    assert decoded[-1].fields == [("p", ("str", "x"))]
    assert cutter.cut_gen == 0 and not cutter.idle and cutter.hot_keys == ["a"]
    # A key logged in this cut gets its column pre-built for the next one.
    assert cutter.cut(buf) == [] and "a" in buf.cols and not buf.cols["a"][0]


def test_cutting_an_empty_buffer_gives_no_batch_but_advances_the_generation() -> None:
    buf = Buffer(1000)
    cutter = Cutter(_no_numbering, max_batch_points=10)
    assert cutter.cut(buf) == [] and cutter.cut(buf) == []
    assert cutter.cut_gen == 1 and cutter.idle


def test_a_cut_of_many_keys_pauses_between_slices_and_decodes_to_the_same_points() -> None:
    from coordinator.transport.batches import SLICE_KEYS

    buf = Buffer(100_000)
    keys = [f"k{j:03d}" for j in range(3 * SLICE_KEYS + 1)]
    for j, k in enumerate(keys):
        buf.cols[k] = _col([j, j + 1])
    buf.cols["empty"] = _col([])
    pauses: list[int] = []
    (b,) = Cutter(_no_numbering, 10_000, pause=lambda: pauses.append(1)).cut(buf)
    # Two after the swap (before and after the frames' numbering), three between the four
    # slices of keys, one before the encoding.
    assert len(pauses) == 6 and b.points == 2 * len(keys)
    d = wire.decode_batch(b.payload or b"")
    assert [(k, list(s), list(v)) for k, s, v in d.metrics] == [
        (k, [j, j + 1], [float(j), float(j + 1)]) for j, k in enumerate(keys)
    ]


def test_a_generation_of_several_batches_pauses_between_their_copies_and_encodings() -> None:
    """Each batch's encoding is tens to hundreds of µs at full size: a pause comes between them."""
    buf = Buffer(100_000)
    buf.cols["k"] = _col(list(range(35)))
    pauses: list[int] = []
    batches = Cutter(_no_numbering, 10, pause=lambda: pauses.append(len(pauses))).cut(buf)
    assert [b.points for b in batches] == [10, 10, 10, 5]
    assert len(pauses) >= 2 * len(batches)  # one before each part's copy, one before each encoding


def test_a_generation_larger_than_a_batch_numbers_each_column_once() -> None:
    """The one pass numbers every column before it finds they do not fit; the split must not number again."""
    calls: list[str] = []

    def number(key: str, steps: array[int]) -> None:
        calls.append(key)
        for i in range(len(steps)):
            if steps[i] < 0:
                steps[i] = 1000 + i

    buf = Buffer(100_000)
    buf.cols["a"] = _col([-1, -1, -1])
    buf.cols["b"] = _col([5, 6])
    batches = Cutter(number, max_batch_points=2).cut(buf)
    assert calls == ["a", "b"]
    got = [(k, list(s)) for x in batches for k, s, _ in wire.decode_batch(x.payload or b"").metrics]
    assert got == [("a", [1000, 1001]), ("a", [1002]), ("b", [5]), ("b", [6])]


# ----------------------------------------------------------------------------- frames


def _frame(buf: Buffer, keys: tuple[str, ...], rows: list[int]) -> Frame:
    """A frame of ``keys`` in ``buf`` with one row per step (values: step + key index / 10)."""
    f = buf.frames[keys] = Frame(keys)
    buf.framed.update(dict.fromkeys(keys, f))
    for s in rows:
        f.steps.append(s)
        f.values.extend(s + j / 10 for j in range(len(keys)))
    buf.pending += len(rows) * len(keys)
    return f


def _points(batches: list[OutBatch]) -> dict[str, list[tuple[int, float]]]:
    """Every key's (step, value) pairs over the batches, in order, decoded per key."""
    out: dict[str, list[tuple[int, float]]] = {}
    for b in batches:
        for k, s, v in wire.decode_batch(b.payload or b"").metrics:
            out.setdefault(k, []).extend(zip(s, v, strict=True))
    return out


def test_a_frame_is_cut_as_one_block_beside_the_columns_and_needs_no_numbering() -> None:
    calls: list[str] = []
    buf = Buffer(1000)
    buf.cols["solo"] = _col([7])
    _frame(buf, ("a", "b", "c"), [0, 1])
    buf.fields.append(("p", ("int", 1)))
    (b,) = Cutter(lambda k, s: calls.append(k), max_batch_points=100).cut(buf)
    assert b.points == 7 and calls == ["solo"]
    d = wire.decode_batch(b.payload or b"", blocks=True)
    assert [blk.keys for blk in d.blocks] == [("a", "b", "c")] and [k for k, _, _ in d.metrics] == ["solo"]
    assert d.blocks[0].values.tolist() == [[0.0, 1.0], [0.1, 1.1], [0.2, 1.2]] and d.fields == [("p", ("int", 1))]
    assert all(not f.steps for f in buf.frames.values()) and set(buf.framed) == {"a", "b", "c"} and buf.pending == 0


def test_a_cut_of_frames_pauses_after_the_swap_the_numbering_and_before_the_encoding() -> None:
    """Each stage is tens of µs on a cold CPU: the sender's GIL slicer gets a chance between them."""
    buf = Buffer(1000)
    _frame(buf, ("a", "b"), [0, 1])
    seen: list[tuple[bool, int]] = []  # at each pause: the generation swapped out?, points left to cut

    def swapped() -> bool:  # the frame stays in the buffer; its rows went with the cut
        return not buf.frames[("a", "b")].steps

    cutter = Cutter(_no_numbering, max_batch_points=100, pause=lambda: seen.append((swapped(), buf.pending)))
    (b,) = cutter.cut(buf)
    assert seen == [(True, 0), (True, 0), (True, 0)] and b.points == 4


def test_a_frame_larger_than_the_room_left_is_split_by_step_rows() -> None:
    buf = Buffer(1000)
    buf.cols["solo"] = _col([0, 1, 2, 3])
    _frame(buf, ("a", "b", "c"), list(range(10)))  # 30 points, K = 3
    batches = Cutter(_no_numbering, max_batch_points=10).cut(buf)
    # 4 column points + 2 rows (6) fill the first batch; then floor(10 / 3) = 3 rows a batch.
    assert [b.points for b in batches] == [10, 9, 9, 6]
    got = _points(batches)
    assert got["solo"] == [(s, float(s)) for s in range(4)]
    for j, k in enumerate(("a", "b", "c")):
        assert got[k] == [(s, s + j / 10) for s in range(10)]
    blocks = [wire.decode_batch(b.payload or b"", blocks=True).blocks for b in batches]
    assert [[list(x.steps) for x in bl] for bl in blocks] == [[[0, 1]], [[2, 3, 4]], [[5, 6, 7]], [[8, 9]]]


def test_a_frame_with_more_keys_than_a_batch_holds_goes_per_key() -> None:
    buf = Buffer(1000)
    keys = tuple(f"k{j}" for j in range(5))
    _frame(buf, keys, [3, 4])
    batches = Cutter(_no_numbering, max_batch_points=4).cut(buf)
    assert [b.points for b in batches] == [4, 4, 2]
    assert all("b" not in wire.decode_map(b.payload or b"") for b in batches)
    got = _points(batches)
    assert {k: [s for s, _ in v] for k, v in got.items()} == {k: [3, 4] for k in keys}


def test_steps_without_a_step_continue_after_a_frame_and_a_frame_keeps_a_rank_welcome_out() -> None:
    numbering = StepNumbering()
    cutter = Cutter(numbering, max_batch_points=100, frame_steps=numbering.frame)
    buf = Buffer(1000)
    _frame(buf, ("a", "b"), [5, 9])
    cutter.cut(buf)
    buf.cols["a"] = _col([-1, -1])
    buf.cols["c"] = _col([-1])
    got = _points(cutter.cut(buf))
    assert [s for s, _ in got["a"]] == [10, 11] and [s for s, _ in got["c"]] == [0]
    numbering.welcome({"b": 100})  # a key this incarnation logged (in a frame) keeps its own numbering
    buf.cols["b"] = _col([-1])
    assert [s for s, _ in _points(cutter.cut(buf))["b"]] == [10]


def test_a_frame_of_dicts_logged_without_a_step_is_numbered_once_for_all_its_keys_and_cut_as_a_block() -> None:
    numbering = StepNumbering()
    cutter = Cutter(numbering, max_batch_points=100, frame_steps=numbering.frame)
    buf = Buffer(1000)
    _frame(buf, ("a", "b"), [-1, -1, 7, -1])
    [batch] = cutter.cut(buf)
    assert wire.decode_map(batch.payload or b"")["b"]  # one block, no per-key chunks
    got = _points([batch])
    assert [s for s, _ in got["a"]] == [s for s, _ in got["b"]] == [0, 1, 7, 8]
    buf.cols["a"] = _col([-1])  # the next generation: a alone, from the frame's last step
    assert [s for s, _ in _points(cutter.cut(buf))["a"]] == [9]
    _frame(buf, ("a", "b"), [-1, -1])  # a ended at 9, b at 8: per key, each from its own
    [batch] = cutter.cut(buf)
    assert "b" not in wire.decode_map(batch.payload or b"")
    got = _points([batch])
    assert [s for s, _ in got["a"]] == [10, 11] and [s for s, _ in got["b"]] == [9, 10]
    _frame(buf, ("a", "b"), [-1])  # a ended at 11, b at 10: per key again
    assert {k: [s for s, _ in v] for k, v in _points(cutter.cut(buf)).items()} == {"a": [12], "b": [11]}


def test_without_a_frame_rule_a_frame_with_rows_to_number_goes_per_key_and_is_numbered_there() -> None:
    buf = Buffer(1000)
    _frame(buf, ("a", "b"), [3, -1])
    [batch] = Cutter(StepNumbering(), max_batch_points=100).cut(buf)
    assert "b" not in wire.decode_map(batch.payload or b"")
    assert {k: [s for s, _ in v] for k, v in _points([batch]).items()} == {"a": [3, 4], "b": [3, 4]}


def test_a_cut_of_frames_alone_builds_no_columns_for_the_next_generation_and_is_not_idle() -> None:
    buf = Buffer(1000)
    _frame(buf, ("a", "b"), [0])
    cutter = Cutter(_no_numbering, max_batch_points=100)
    assert len(cutter.cut(buf)) == 1
    assert cutter.hot_keys == [] and buf.cols == {} and not cutter.idle
    assert cutter.cut(buf) == [] and cutter.idle


def test_frames_columns_and_texts_of_one_generation_arrive_complete() -> None:
    buf = Buffer(1000)
    buf.cols["solo"] = _col([-1, -1])
    _frame(buf, ("a", "b"), [0, 1, 2])
    buf.texts["t"] = (array("q", [-1]), ["hello"])
    buf.pending += 1
    numbering = StepNumbering()
    batches = Cutter(numbering, max_batch_points=5, frame_steps=numbering.frame).cut(buf)
    assert sum(b.points for b in batches) == 2 + 6 + 1 and all(b.points <= 5 for b in batches)
    got = _points(batches)
    assert got["solo"] == [(0, -1.0), (1, -1.0)] and [s for s, _ in got["a"]] == [0, 1, 2] == [s for s, _ in got["b"]]
    texts = [t for b in batches for t in wire.decode_batch(b.payload or b"").texts]
    assert [(k, list(s), x) for k, s, x in texts] == [("t", [0], ["hello"])]


def test_a_frame_and_a_text_logged_while_the_cutter_pauses_are_cut_once_in_the_next_generation() -> None:
    """The training thread runs during the cutter's pauses: what it logs then is the next generation's only."""
    buf = Buffer(1000)
    buf.cols["a"] = _col(list(range(30)))  # several batches of 10: several pauses
    buf.pending = 30
    logged: list[int] = []

    def pause() -> None:  # the GIL released: the training thread logs a dict and a text
        with buf.lock:
            if not logged:
                _frame(buf, ("f", "g"), [5])
                buf.texts["t"] = (array("q", [5]), ["hi"])
                buf.pending += 1
            logged.append(1)

    cutter = Cutter(_no_numbering, max_batch_points=10, pause=pause)
    batches = cutter.cut(buf) + cutter.cut(buf)
    got = _points(batches)
    assert got == {"a": [(s, float(s)) for s in range(30)], "f": [(5, 5.0)], "g": [(5, 5.1)]}
    texts = [(k, list(s), t) for b in batches for k, s, t in wire.decode_batch(b.payload or b"").texts]
    assert texts == [("t", [5], ["hi"])]
    assert sum(b.points for b in batches) == 33 and buf.pending == 0


def test_long_columns_and_frames_are_packed_from_views_that_end_with_the_cut() -> None:
    """A column or frame block of VIEW_ITEMS items or more goes to the packer as a view of its array
    and a large payload is a view of the buffer it is copied into: the batches decode to the same points,
    split or not, and nothing keeps a view of a cut array afterwards (resizing one would raise
    ``BufferError``)."""
    from coordinator.core.columns import VIEW_ITEMS

    n = VIEW_ITEMS + 5
    for cap in (100_000, VIEW_ITEMS + 1000):  # one batch; then the columns and the frame are split
        buf = Buffer(10**6)
        long, short = _col(list(range(n))), _col([1, 2])
        buf.cols["long"], buf.cols["short"] = long, short
        _frame(buf, ("a", "b"), list(range(n)))
        cut_arrays = [long[0], long[1], buf.frames[("a", "b")].steps, buf.frames[("a", "b")].values]
        batches = Cutter(_no_numbering, max_batch_points=cap).cut(buf)
        assert sum(b.points for b in batches) == 3 * n + 2
        assert any(isinstance(b.payload, memoryview) and b.payload.readonly for b in batches) == (cap == 100_000)
        got = _points(batches)
        assert got["long"] == [(s, float(s)) for s in range(n)] and got["short"] == [(1, 1.0), (2, 2.0)]
        blocks = [blk for b in batches for blk in wire.decode_batch(b.payload or b"", blocks=True).blocks]
        assert [s for blk in blocks for s in blk.steps] == list(range(n))
        assert [v for blk in blocks for v in blk.values[1].tolist()] == [s + 0.1 for s in range(n)]
        for a in cut_arrays:
            a.append(0)  # no view of it left


def _long_cut(pause: Callable[[], None], watched: list[array[Any]]) -> tuple[array[Any], ...]:
    """A generation of a column and a two-key frame, each longer than three batches, cut (the
    column's steps in ``watched`` first); every point checked; its four arrays afterwards."""
    n = 3 * SHED_ITEMS + 7
    buf = Buffer(10**7)
    col = buf.cols["a"] = _col(list(range(n)))
    watched.append(col[0])
    frame = _frame(buf, ("f", "g"), list(range(n)))
    buf.pending += n
    batches = Cutter(_no_numbering, max_batch_points=SHED_ITEMS, pause=pause).cut(buf)
    assert sum(b.points for b in batches) == 3 * n
    assert _points(batches)["a"] == [(s, float(s)) for s in range(n)]
    blocks = [blk for b in batches for blk in wire.decode_batch(b.payload or b"", blocks=True).blocks]
    assert [s for blk in blocks for s in blk.steps] == list(range(n))
    assert [v for blk in blocks for v in blk.values[1].tolist()] == [s + 0.1 for s in range(n)]
    return (*col, frame.steps, frame.values)


def test_a_generation_of_several_full_batches_is_cut_from_views_and_its_long_arrays_are_given_back() -> None:
    """A column longer than a batch goes into its parts as views of its arrays, not copies; once the
    batches are encoded, the pages of the cut's long arrays (columns and frames) go back to the
    system, and the arrays are emptied. Every point decodes once, in order."""
    n = 3 * SHED_ITEMS + 7
    parts = split_columns({"a": _col(list(range(n)))}, [], SHED_ITEMS, _no_numbering)
    assert [p for _, _, p in parts] == [SHED_ITEMS] * 3 + [7]
    assert all(isinstance(s, memoryview) and isinstance(v, memoryview) for m, _, _ in parts for _, s, v in m)

    arrays = _long_cut(lambda: None, [])
    assert [len(a) for a in arrays] == [0, 0, 0, 0]


def test_where_pages_cannot_be_given_back_the_long_arrays_shrink_a_slice_at_a_time(monkeypatch: MonkeyPatch) -> None:
    """On a system without ``madvise`` each long array shrinks :data:`SHED_ITEMS` at a time, a
    pause after each, instead of being freed at once; the batches are the same."""
    monkeypatch.setattr(batches_module, "give_back", lambda address, nbytes: False)
    watched: list[array[Any]] = []
    lengths: list[int] = []  # the column's steps' length at each pause
    arrays = _long_cut(lambda: lengths.append(len(watched[0])), watched)
    assert all(len(a) <= SHED_ITEMS for a in arrays), [len(a) for a in arrays]
    # One item goes first (the check for a view left), then a slice at a time, a pause after each.
    assert {2 * SHED_ITEMS + 6, SHED_ITEMS + 6, 6} <= set(lengths)


def test_a_long_array_with_a_view_left_is_not_given_back() -> None:
    """A view of a cut array still alive when the cut ends is a bug: the shrink raises before any page goes."""
    a = array("d", range(3 * SHED_ITEMS))
    view = memoryview(a)
    with pytest.raises(BufferError):
        _shed([(array("q"), a)], lambda: None)
    assert view[3 * SHED_ITEMS - 1] == 3 * SHED_ITEMS - 1 and view[SHED_ITEMS] == SHED_ITEMS, "its values are intact"
    view.release()
