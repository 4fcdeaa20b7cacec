"""Copies of the uncut generation: each row written once, in call order; what a copy refuses; the timer behind them."""

from __future__ import annotations

import select
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.core.columns import to_le
from coordinator.errors import SinkError
from coordinator.transport import copies as copies_mod
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from coordinator.transport.copyfile import ROWS, CopyFile, copy_path
from coordinator.transport.copyread import copy_batches, read_copies
from coordinator.transport.frames import Frame
from coordinator.transport.plain import packb

WINDOW = 0.05


class _Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Rank:
    """A buffer, its copies and their clock: what a rank's training thread copies from and into."""

    def __init__(
        self,
        d: Path,
        *,
        rank: int = 0,
        deferred: Callable[[], bool] | None = None,
        cut: bool = True,
        last_step: Callable[[str], int] | None = None,
    ) -> None:
        self.buf = Buffer(1_000_000)
        self.buf.wake_at(1_000_000, lambda: None)  # a sender to wake: a refused copy asks it for a cut
        self.clock = _Clock()
        self.copies = Copies(
            d, self.buf, rank=rank, window_s=WINDOW, cut=cut, clock=self.clock, deferred=deferred, last_step=last_step
        )

    def copy(self) -> bool:
        """A copy as the training thread makes one (half a kill window after the last, lock held); False: refused."""
        self.clock.t += WINDOW
        b = self.buf
        with b.lock:
            b.flush_requested = False
            self.copies.check()
            refused = b.flush_requested
            b.flush_requested = False
        return not refused


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
    r = _Rank(tmp_path)
    b = r.buf
    _frame_row(b, ("a", "b"), 0, [1.0, 2.0])
    _frame_row(b, ("a", "b"), 1, [3.0, 4.0])
    _point(b, "c", 0, 5.0)
    assert r.copy() and r.copies.copies == 1
    assert r.copy() and r.copies.copies == 1  # nothing new: nothing written
    [first] = read_copies(tmp_path)
    _frame_row(b, ("a", "b"), 2, [5.0, 6.0])
    _point(b, "c", 1, 7.0)
    assert r.copy() and r.copies.copies == 2
    [both] = read_copies(tmp_path)
    assert both.end - first.end < first.end  # the second record: only the new rows (the first named the keys)
    assert _only(tmp_path) == {
        "a": [(0, 1.0), (1, 3.0), (2, 5.0)],
        "b": [(0, 2.0), (1, 4.0), (2, 6.0)],
        "c": [(0, 5.0), (1, 7.0)],
    }


def test_a_frame_spilled_into_columns_keeps_the_count_of_its_copied_rows(tmp_path: Path) -> None:
    """A per-key call of a framed key spills the frame; its rows already copied are not copied again."""
    r = _Rank(tmp_path)
    b = r.buf
    _frame_row(b, ("a", "b"), 0, [1.0, 2.0])
    _frame_row(b, ("a", "b"), 1, [3.0, 4.0])
    assert r.copy()
    _frame_row(b, ("a", "b"), 2, [5.0, 6.0])  # not copied yet when the frame spills
    b.spill("a")
    _point(b, "a", 3, 7.0)
    assert r.copy()
    assert _only(tmp_path) == {
        "a": [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)],
        "b": [(0, 2.0), (1, 4.0), (2, 6.0)],
    }


@pytest.mark.parametrize("what", ["field", "text", "tensor"])
def test_what_a_copy_cannot_hold_makes_it_refuse_write_nothing_and_ask_for_a_cut(what: str, tmp_path: Path) -> None:
    """A field, a text, a tensor not read yet (the client reads what it can first:
    ``DeviceScalars.deferred``): the sender cuts instead."""
    waiting = what == "tensor"
    r = _Rank(tmp_path, deferred=lambda: waiting)
    b = r.buf
    _point(b, "a", 0, 1.0)
    if what == "field":
        b.fields.append(("f", ("int", 1)))
    elif what == "text":
        b.texts["t"] = (array("q", [0]), ["x"])
    assert not r.copy()
    assert r.copies.copies == 0 and read_copies(tmp_path) == []


def test_without_early_cuts_a_refused_generation_waits_for_its_flush_and_the_next_is_copied_again(
    tmp_path: Path,
) -> None:
    """The automatic kill window of a large job (``cut=False``): what a copy cannot take asks for no cut and sets no
    timer (the cuts stay at the flush interval's rate), and the generation's later rows are not copied either (a
    copy of them alone could outlive the refused ones). After its cut, the next generation is copied."""
    r = _Rank(tmp_path, cut=False)
    b, c = r.buf, r.copies
    _point(b, "a", 0, 1.0)
    assert r.copy() and c.copies == 1
    c.timer.disarm()
    b.fields.append(("f", ("int", 1)))  # as the hot path does: a field write tells the copies
    c._slow_write()
    assert not c.timer.armed
    _point(b, "a", 1, 2.0)
    assert r.copy()  # refused, but no cut asked for
    assert not b.flush_requested and not c.timer.armed and b.copy_mark > b.pending + 1_000_000
    _point(b, "a", 2, 3.0)
    c.timer.arm(1e-4)
    time.sleep(0.01)
    assert c.backstop()  # the timer of an earlier copy fired: still refused (the field stays until the cut), no cut
    assert not b.flush_requested and c.copies == 1 and [s for s, _ in _only(tmp_path)["a"]] == [0]
    assert b.cut({})[0] == 0 and not b.fields
    c.cut(0, 1, 1)
    c.spooled(1)
    c.cut_done(0, c.now())
    assert b.mark <= b.pending
    _point(b, "a", 3, 4.0)
    assert r.copy() and c.copies == 3  # the cut's record, then the next generation's copy
    assert [(g.gen, g.seqs, g.points) for g in read_copies(tmp_path)] == [(0, (1, 1), 1), (1, None, 1)]


def test_steps_the_sender_numbers_are_copied_as_they_are_and_read_back_numbered_as_the_sender_would(
    tmp_path: Path,
) -> None:
    """A column is named with its key's last step (the sender's numbering, unchanged until the cut): reading the
    copy back numbers each -1 from it, explicit steps in between moving it, as the sender's rule does (short
    columns in Python, long ones with numpy). No cut is asked for."""
    last = {"n": 41}
    r = _Rank(tmp_path, last_step=lambda k: last.get(k, -1))
    b = r.buf
    for s in [-1, -1, 50, -1]:
        _point(b, "n", s, float(s))
    _point(b, "fresh", -1, 1.0)  # a key the numbering has not seen: from -1, so its first step is 0
    assert r.copy()
    last["n"] = 999  # as if the sender numbered meanwhile: a copy of this generation named the key already
    for _ in range(300):
        _point(b, "n", -1, 0.0)
    assert r.copy() and r.copies.copies == 2
    got = _only(tmp_path)
    assert [s for s, _ in got["n"]] == [42, 43, 50, 51, *range(52, 352)]
    assert got["fresh"] == [(0, 1.0)]


def test_dicts_logged_without_a_step_are_copied_with_their_keys_last_steps_and_read_back_numbered_per_key(
    tmp_path: Path,
) -> None:
    """A frame is named with its keys' last steps once it has a row logged without a step (again, where its first
    copied rows had explicit steps): reading the copy back numbers each key from its own, as the sender does
    (once for all the keys where they share it, per key where they do not)."""
    last = {"a": 9, "b": 9, "x": 3, "p": 4}
    r = _Rank(tmp_path, last_step=lambda k: last.get(k, -1))
    b = r.buf
    _frame_row(b, ("a", "b"), -1, [1.0, 2.0])
    _frame_row(b, ("x", "y"), 20, [3.0, 4.0])  # explicit steps: named with its keys alone
    assert r.copy()
    _frame_row(b, ("a", "b"), -1, [5.0, 6.0])
    _frame_row(b, ("a", "b"), 30, [7.0, 8.0])
    _frame_row(b, ("a", "b"), -1, [9.0, 10.0])
    _frame_row(b, ("x", "y"), -1, [11.0, 12.0])  # named again, with x's 3 and y's -1: after its 20 either way
    _frame_row(b, ("p", "q"), -1, [13.0, 14.0])  # p from 4, q from -1
    assert r.copy() and r.copies.copies == 2
    assert _only(tmp_path) == {
        "a": [(10, 1.0), (11, 5.0), (30, 7.0), (31, 9.0)],
        "b": [(10, 2.0), (11, 6.0), (30, 8.0), (31, 10.0)],
        "x": [(20, 3.0), (21, 11.0)],
        "y": [(20, 4.0), (21, 12.0)],
        "p": [(5, 13.0)],
        "q": [(0, 14.0)],
    }


@pytest.mark.parametrize("named", ["column", "frame"])
def test_steps_to_number_in_a_record_named_without_their_last_steps_make_it_malformed(
    named: str, tmp_path: Path
) -> None:
    """Recovery cannot number them as the sender would: the record and the rest of the file are skipped."""
    f = CopyFile(copy_path(tmp_path, 0))
    f.start(0)
    f.write(packb([ROWS, 0, [[0, to_le(array("q", [0])), to_le(array("d", [1.0]))]], [[0, "ok", -1]]]))
    name: list[object] = [1, "c"] if named == "column" else [1, ["d", "e"]]
    values = [2.0] if named == "column" else [2.0, 3.0]
    f.write(packb([ROWS, 0, [[1, to_le(array("q", [-1])), to_le(array("d", values))]], [name]]))
    f.close()
    [g] = read_copies(tmp_path)
    assert g.torn > 0 and {k: list(s) for k, (s, _) in g.columns.items()} == {"ok": [0]}


def test_the_next_generation_is_copied_only_once_the_cut_is_written_ahead_and_the_files_are_taken_in_turn(
    tmp_path: Path,
) -> None:
    """A cut holds points its copy does not (logged after its last copy): copying the next generation before
    the cut is on disk could keep later points while a kill loses those (a gap in the series). While a cut's
    write-ahead failed, a copy refuses (the sender cuts)."""
    r = _Rank(tmp_path)
    b, c = r.buf, r.copies
    _point(b, "a", 0, 1.0)
    assert r.copy()
    _point(b, "a", 1, 2.0)  # not copied: only the cut holds it
    assert b.cut({})[0] == 0
    c.cut(0, 5, 6)
    _point(b, "a", 2, 3.0)
    assert r.copy()  # not a refusal (no cut asked for) but no copy: the cut is not on disk yet
    assert c.copies == 2 and b.copy_mark > b.pending + 1_000_000  # its copy, the cut's record; no more checks
    assert [(g.gen, g.seqs, g.points) for g in read_copies(tmp_path)] == [(0, (5, 6), 1)]
    c.spooled(6)
    c.cut_done(0, c.now())  # the sender wrote the cut ahead
    assert b.mark <= b.pending
    assert r.copy()
    assert [(g.gen, g.path.name, g.seqs, g.points) for g in read_copies(tmp_path)] == [
        (0, "copy-0", (5, 6), 1),
        (1, "copy-1", None, 1),
    ]
    b.cut({})
    c.cut(1, 7, 7)
    c.cut_done(1, c.now())  # its write-ahead failed: batch 7 is only in memory
    _point(b, "a", 3, 4.0)
    assert not r.copy()
    c.spooled(7)
    assert r.copy()
    assert [(g.gen, g.path.name, g.seqs, g.points) for g in read_copies(tmp_path)] == [
        (1, "copy-1", (7, 7), 1),
        (2, "copy-0", None, 1),
    ]
    c.close(keep_uncut=True)  # points stay in the buffer: the uncut generation's copy holds them
    assert [g.gen for g in read_copies(tmp_path)] == [1, 2]


def test_at_close_the_files_go_when_nothing_is_left_uncut_or_unspooled(tmp_path: Path) -> None:
    r = _Rank(tmp_path)
    _point(r.buf, "a", 0, 1.0)
    assert r.copy()
    r.copies.close()
    assert list(tmp_path.iterdir()) == []
    assert r.buf.copy_check is None and r.buf.mark == r.buf.max_points  # the hot path asks nothing any more


def test_a_failed_copy_is_reported_and_refused_then_tried_again_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that fails (here: the file's name is a directory) is a SinkError for wait(); the sender cuts."""
    monkeypatch.setattr(copies_mod, "_PAUSE_AFTER_FAILURE_S", 0.0)
    r = _Rank(tmp_path, rank=3)
    _point(r.buf, "a", 0, 1.0)
    copy_path(tmp_path, 0).mkdir()
    assert not r.copy()
    [err] = r.buf.errors
    assert isinstance(err, SinkError) and "rank 3" in str(err) and "cuts instead" in str(err)
    copy_path(tmp_path, 0).rmdir()
    _point(r.buf, "a", 1, 2.0)
    assert r.copy()  # the whole generation, the row of the failed copy too
    assert _only(tmp_path) == {"a": [(0, 1.0), (1, 2.0)]}


def test_a_torn_last_record_ends_the_generation_and_the_records_before_it_are_read(tmp_path: Path) -> None:
    r = _Rank(tmp_path)
    _point(r.buf, "a", 0, 1.0)
    assert r.copy()
    _point(r.buf, "a", 1, 2.0)
    assert r.copy()
    p = copy_path(tmp_path, 0)
    [whole] = read_copies(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: whole.end - 3] + bytes(len(data) - whole.end + 3))  # the last 3 bytes never written
    [g] = read_copies(tmp_path)
    assert g.torn > 0 and list(g.columns["a"][0]) == [0] and g.end < whole.end


def test_a_file_taken_again_does_not_read_back_what_an_earlier_generation_left_in_it(tmp_path: Path) -> None:
    """Generation 2 reuses copy-0 from its start, with fewer bytes than generation 0 wrote there."""
    r = _Rank(tmp_path)
    b, c = r.buf, r.copies
    for s in range(50):
        _point(b, "a", s, float(s))
        assert r.copy()  # fifty records
    b.cut({})
    c.cut(0, 1, 1)
    c.spooled(1)
    c.cut_done(0, c.now())
    b.cut({})  # generation 1: nothing copied
    c.cut_done(1, c.now())
    _point(b, "a", 50, 50.0)
    assert r.copy()
    [g] = read_copies(tmp_path)
    assert (g.gen, g.seqs, list(g.columns["a"][0])) == (2, None, [50])


def test_a_generation_larger_than_the_files_first_allocation_grows_it_and_reads_back_whole(tmp_path: Path) -> None:
    r = _Rank(tmp_path)
    for s in range(10):
        _point(r.buf, "a", s, float(s))
    assert r.copy()
    small = copy_path(tmp_path, 0).stat().st_size
    for s in range(10, 40_000):  # 640 KB of steps and values, past the first 256 KiB
        _point(r.buf, "a", s, float(s))
    assert r.copy()
    assert copy_path(tmp_path, 0).stat().st_size > small
    [g] = read_copies(tmp_path)
    assert list(g.columns["a"][0]) == list(range(40_000)) and g.torn == 0


def test_a_copied_generation_goes_in_as_batches_of_at_most_the_cap(tmp_path: Path) -> None:
    r = _Rank(tmp_path)
    for s in range(7):
        _point(r.buf, "a", s, float(s))
    for s in range(3):
        _point(r.buf, "z", s, -float(s))
    assert r.copy()
    [g] = read_copies(tmp_path)
    payloads = copy_batches(g, 4)
    chunks = [ch for p in payloads for ch in wire.decode_batch(p).metrics]
    assert [sum(len(st) for _, st, _ in wire.decode_batch(p).metrics) for p in payloads] == [4, 4, 2]
    got: dict[str, list[tuple[int, float]]] = {}
    for key, steps, values in chunks:
        got.setdefault(key, []).extend(zip(steps, values, strict=True))
    assert got == {"a": [(s, float(s)) for s in range(7)], "z": [(s, -float(s)) for s in range(3)]}


# ---------------------------------------------------------------------------- when copies are made


def test_the_hot_path_asks_about_once_every_half_kill_window_and_copies_then(tmp_path: Path) -> None:
    """The copy mark follows the rate: a rank logging 100 points every 10 ms is asked every ~2-3 calls, not each."""
    r = _Rank(tmp_path)
    b, c = r.buf, r.copies
    asked = 0
    check = c.check

    def counted() -> None:
        nonlocal asked
        asked += 1
        check()

    b.copy_check = counted
    for step in range(100):  # one second at 100 calls a second, 100 points a call
        r.clock.t += 0.01
        with b.lock:
            if b.pending >= b.mark:
                b.past_mark()
            _frame_row(b, tuple(f"k{i}" for i in range(100)), step, [float(step)] * 100)
    assert 30 <= c.copies <= 50, c.copies  # every 20-30 ms
    assert asked <= 2 * c.copies + 5, (asked, c.copies)
    [g] = read_copies(tmp_path)
    assert g.points >= 9_500  # all but the last calls since the last copy


def test_the_timer_fires_one_kill_window_after_the_last_copy_and_the_senders_backstop_copies_the_rest(
    tmp_path: Path,
) -> None:
    """A rank that stops logging: the sender's poll wakes on the timer and copies what the last calls left."""
    b = Buffer(1_000_000)
    c = Copies(tmp_path, b, rank=0, window_s=WINDOW)  # the real clock: the timer is the system's
    poll = select.poll()
    poll.register(c.timer.fd, select.POLLIN)
    _point(b, "a", 0, 1.0)
    with b.lock:
        c.check()  # the first call copies at once
    assert c.copies == 1 and c.backstop()  # not fired yet: nothing to do
    _point(b, "a", 1, 2.0)  # and then nothing more is logged
    t0 = time.monotonic()
    assert poll.poll(2000)
    assert 0.8 * WINDOW <= time.monotonic() - t0 <= WINDOW + 0.5
    assert c.backstop() and c.copies == 2
    assert poll.poll(2000)  # set again after that copy: it fires once more and finds nothing
    assert c.backstop() and c.copies == 2
    assert not poll.poll(int(3 * WINDOW * 1000))  # then it rests
    assert b.mark <= b.pending  # and the next call copies at once
    c.close()


def test_a_refusal_inside_the_kill_window_leaves_the_cut_to_the_timer_and_asks_nothing_more_until_it(
    tmp_path: Path,
) -> None:
    """A field written half a window after a copy: no cut at once (a rank that writes fields each step would
    be cut at every check), but the timer fires a kill window after the copy and the sender cuts then."""
    window = 0.2
    b = Buffer(1_000_000)
    woken: list[int] = []
    b.wake_at(1_000_000, lambda: woken.append(1))
    c = Copies(tmp_path, b, rank=0, window_s=window)
    poll = select.poll()
    poll.register(c.timer.fd, select.POLLIN)
    _point(b, "a", 0, 1.0)
    with b.lock:
        c.check()
    t_copy = time.monotonic()
    assert c.copies == 1
    b.fields.append(("f", ("int", 1)))
    time.sleep(window * 0.6)
    with b.lock:
        c.check()
        assert not b.flush_requested and not woken  # no cut yet
        assert b.copy_mark > b.pending + 1_000_000  # and no more checks until one
    assert poll.poll(2000)
    assert window * 0.9 <= time.monotonic() - t_copy <= window + 0.5
    assert not c.backstop()  # the sender's wake-up: refused again, so it cuts
    b.cut({})
    c.cut_done(0, c.now())
    assert b.mark <= b.pending  # the next call checks again
    c.close()


def test_a_generation_copied_again_after_a_failure_does_not_read_back_its_first_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty records, then a copy fails: the generation starts again from the file's start with one record,
    shorter than the first attempt's; the zero header after it ends the generation there."""
    monkeypatch.setattr(copies_mod, "_PAUSE_AFTER_FAILURE_S", 0.0)
    r = _Rank(tmp_path)
    for s in range(50):
        _point(r.buf, "a", s, float(s))
        assert r.copy()
    write = CopyFile.write

    def fail_once(slot: CopyFile, body: bytes) -> None:
        monkeypatch.setattr(CopyFile, "write", write)
        raise OSError("no space left on device")

    monkeypatch.setattr(CopyFile, "write", fail_once)
    _point(r.buf, "a", 50, 50.0)
    assert not r.copy() and len(r.buf.errors) == 1
    assert r.copy()
    [g] = read_copies(tmp_path)
    assert (g.torn, list(g.columns["a"][0])) == (0, list(range(51)))


def test_a_field_or_a_text_sets_the_timer_and_its_firing_makes_the_sender_cut(tmp_path: Path) -> None:
    """A copy cannot take a field: written after the last copy, the timer (set by the field itself if it
    was off) fires within a kill window and the sender's backstop refuses to copy: it cuts."""
    b = Buffer(1_000_000)
    c = Copies(tmp_path, b, rank=0, window_s=WINDOW)
    poll = select.poll()
    poll.register(c.timer.fd, select.POLLIN)
    assert not c.timer.armed
    with b.lock:
        b.add_fields([("cfg/lr", ("float", 0.1))])
    assert c.timer.armed
    t0 = time.monotonic()
    assert poll.poll(2000) and time.monotonic() - t0 <= WINDOW + 0.5
    assert not c.backstop()
    c.close()


def test_a_cut_whose_record_fails_leaves_no_copy_to_go_in_beside_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut's batches go ahead to the spool anyway; its copy, read back without their numbers, would go in
    as a generation never cut, a second time: the failure empties the file."""
    r = _Rank(tmp_path)
    _point(r.buf, "a", 0, 1.0)
    assert r.copy()

    def fail(slot: CopyFile, body: bytes) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(CopyFile, "write", fail)
    r.buf.cut({})
    r.copies.cut(0, 1, 1)
    assert len(r.buf.errors) == 1 and read_copies(tmp_path) == []


def test_after_a_slow_write_ahead_the_next_copy_is_due_half_a_window_after_the_cut_not_after_the_write(
    tmp_path: Path,
) -> None:
    """Points logged while the cut is written ahead wait for it (no copy until then); the window counts from the
    cut, so once the write took half a window the next call copies them at once."""
    r = _Rank(tmp_path)
    b, c = r.buf, r.copies
    _point(b, "a", 0, 1.0)
    assert r.copy()
    t_cut = c.now()
    b.cut({})
    c.cut(0, 1, 1)
    _point(b, "a", 1, 2.0)
    r.clock.t += WINDOW * 0.6  # the write-ahead took longer than half a window
    c.spooled(1)
    c.cut_done(0, t_cut)
    with b.lock:
        c.check()
    assert [(g.gen, list(g.columns["a"][0])) for g in read_copies(tmp_path)] == [(0, [0]), (1, [1])]
