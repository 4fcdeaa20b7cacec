"""Cutting the buffer into wire batches: size bounds, field placement, step numbering, encoding."""

from __future__ import annotations

from array import array

from coordinator.core.columns import Column
from coordinator.transport import wire
from coordinator.transport.batches import Cutter, split_columns
from coordinator.transport.buffer import Buffer


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
    assert len(pauses) == 3 and b.points == 2 * len(keys)
    d = wire.decode_batch(b.payload or b"")
    assert [(k, list(s), list(v)) for k, s, v in d.metrics] == [
        (k, [j, j + 1], [float(j), float(j + 1)]) for j, k in enumerate(keys)
    ]


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
