"""Copies of the uncut generation: each row written once, in call order, and what a copy refuses."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from coordinator.errors import SinkError
from coordinator.transport import copies as copies_mod
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies, copy_batches, copy_path, read_copies
from coordinator.transport.frames import Frame


def _frame_row(b: Buffer, keys: tuple[str, ...], step: int, values: list[float]) -> None:
    """What ``log(dict, step=...)`` appends for a dict of plain numbers (lock held there)."""
    fr = b.frames.get(keys)
    if fr is None:
        fr = b.frames[keys] = Frame(keys)
        b.framed.update(dict.fromkeys(keys, fr))
    fr.steps.append(step)
    fr.values.extend(values)
    b.pending += len(keys)


def _point(b: Buffer, key: str, step: int, value: float) -> None:
    """What ``run[key].append(value, step=...)`` appends (-1: a step the sender numbers)."""
    steps, values = b.cols.setdefault(key, (array("q"), array("d")))
    steps.append(step)
    values.append(value)
    b.pending += 1


def _only(d: Path) -> dict[str, list[tuple[int, float]]]:
    [g] = read_copies(d)
    return {k: list(zip(s, v, strict=True)) for k, (s, v) in g.columns.items()}


def test_each_copy_takes_only_the_rows_since_the_last_and_reads_back_per_key_in_call_order(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _frame_row(b, ("a", "b"), 0, [1.0, 2.0])
    _frame_row(b, ("a", "b"), 1, [3.0, 4.0])
    _point(b, "c", 0, 5.0)
    assert c.copy() and c.copies == 1
    assert c.copy() and c.copies == 1  # nothing new: nothing written
    size = copy_path(tmp_path, 0).stat().st_size
    _frame_row(b, ("a", "b"), 2, [5.0, 6.0])
    _point(b, "c", 1, 7.0)
    assert c.copy() and c.copies == 2
    # The second record holds only the new rows (the key names are in the first one).
    assert copy_path(tmp_path, 0).stat().st_size - size < size
    assert _only(tmp_path) == {
        "a": [(0, 1.0), (1, 3.0), (2, 5.0)],
        "b": [(0, 2.0), (1, 4.0), (2, 6.0)],
        "c": [(0, 5.0), (1, 7.0)],
    }


def test_a_frame_spilled_into_columns_keeps_the_count_of_its_copied_rows(tmp_path: Path) -> None:
    """A per-key call of a framed key spills the frame; its rows already copied are not copied again."""
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _frame_row(b, ("a", "b"), 0, [1.0, 2.0])
    _frame_row(b, ("a", "b"), 1, [3.0, 4.0])
    assert c.copy()
    _frame_row(b, ("a", "b"), 2, [5.0, 6.0])  # not copied yet when the frame spills
    b.spill("a")
    _point(b, "a", 3, 7.0)
    assert c.copy()
    assert _only(tmp_path) == {
        "a": [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)],
        "b": [(0, 2.0), (1, 4.0), (2, 6.0)],
    }


@pytest.mark.parametrize("what", ["numbered_step", "field", "text", "tensor"])
def test_what_a_copy_cannot_hold_makes_it_refuse_and_write_nothing(what: str, tmp_path: Path) -> None:
    """The sender then cuts instead: a step it numbers, a field, a text, a tensor not read yet."""
    b = Buffer(10_000)
    waiting = what == "tensor"
    c = Copies(tmp_path, b, rank=0, deferred=lambda: waiting)
    _point(b, "a", 0, 1.0)
    if what == "numbered_step":
        _point(b, "n", -1, 2.0)
    elif what == "field":
        b.fields.append(("f", 1))
    elif what == "text":
        b.texts["t"] = (array("q", [0]), ["x"])
    assert not c.copy()
    assert c.copies == 0 and read_copies(tmp_path) == []


def test_a_long_column_of_explicit_steps_is_copied_and_one_numbered_step_anywhere_refuses(tmp_path: Path) -> None:
    """Past a few dozen new rows the smallest step is found with numpy: the same answer."""
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    for s in range(200):
        _point(b, "a", s, float(s))
    assert c.copy()
    for s in range(200, 300):
        _point(b, "a", s, float(s))
    _point(b, "a", -1, 0.0)
    assert not c.copy()
    assert [s for s, _ in _only(tmp_path)["a"]] == list(range(200))


def test_each_generation_has_its_file_its_cut_is_recorded_and_the_file_goes_once_on_disk(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _point(b, "a", 0, 1.0)
    assert c.copy()
    gen, cols, _, _, _ = b.cut({})
    assert gen == 0 and list(cols["a"][0]) == [0]
    c.cut(0, 5, 6)
    _point(b, "a", 1, 2.0)
    assert c.copy()
    gens = read_copies(tmp_path)
    assert [(g.gen, g.seqs, g.points) for g in gens] == [(0, (5, 6), 1), (1, None, 1)]
    c.spooled(5)  # batch 6 of generation 0 is not on disk yet
    assert copy_path(tmp_path, 0).exists()
    c.spooled(6)
    assert not copy_path(tmp_path, 0).exists() and copy_path(tmp_path, 1).exists()
    c.close(keep_uncut=True)  # points stay in the buffer: the uncut generation's file holds them
    assert copy_path(tmp_path, 1).exists()


def test_at_close_the_uncut_generations_file_goes_when_nothing_is_left_in_the_buffer(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _point(b, "a", 0, 1.0)
    assert c.copy()
    c.close()
    assert read_copies(tmp_path) == []


def test_a_cut_of_a_generation_never_copied_writes_no_file(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _point(b, "a", 0, 1.0)
    b.cut({})
    c.cut(0, 1, 1)
    c.spooled(1)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_copy_is_reported_and_refused_then_tried_again_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (here: the file's name is a directory) is a SinkError for wait(); the sender cuts."""
    monkeypatch.setattr(copies_mod, "_PAUSE_AFTER_FAILURE_S", 0.0)
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=3)
    _point(b, "a", 0, 1.0)
    copy_path(tmp_path, 0).mkdir()
    assert not c.copy()
    [err] = b.errors
    assert isinstance(err, SinkError) and "rank 3" in str(err) and "cuts instead" in str(err)
    copy_path(tmp_path, 0).rmdir()
    _point(b, "a", 1, 2.0)
    assert c.copy()  # the whole generation, the row of the failed copy too
    assert _only(tmp_path) == {"a": [(0, 1.0), (1, 2.0)]}


def test_a_torn_last_record_ends_the_file_and_the_records_before_it_are_read(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    _point(b, "a", 0, 1.0)
    assert c.copy()
    _point(b, "a", 1, 2.0)
    assert c.copy()
    p = copy_path(tmp_path, 0)
    p.write_bytes(p.read_bytes()[:-3])  # the kill came in the middle of the second write
    [g] = read_copies(tmp_path)
    assert g.torn > 0 and list(g.columns["a"][0]) == [0]


def test_a_copied_generation_goes_in_as_batches_of_at_most_the_cap(tmp_path: Path) -> None:
    b = Buffer(10_000)
    c = Copies(tmp_path, b, rank=0)
    for s in range(7):
        _point(b, "a", s, float(s))
    for s in range(3):
        _point(b, "z", s, -float(s))
    assert c.copy()
    [g] = read_copies(tmp_path)
    payloads = copy_batches(g, 4)
    chunks = [ch for p in payloads for ch in wire.decode_batch(p).metrics]
    assert [sum(len(st) for _, st, _ in wire.decode_batch(p).metrics) for p in payloads] == [4, 4, 2]
    got = {}
    for key, steps, values in chunks:
        got.setdefault(key, []).extend(zip(steps, values, strict=True))
    assert got == {"a": [(s, float(s)) for s in range(7)], "z": [(s, -float(s)) for s in range(3)]}
