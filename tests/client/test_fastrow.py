"""The ring row's C path (``_fastrow.c``, :mod:`coordinator.client.rowpath`) against its Python path.

Both write the same calls into rings of their own; each call's answer, each record's position and
bytes (all but the stamp, the time of writing), and what the two RingLogs and writers count must be
the same, through laps of a small ring, a full ring, held frames and values the C path hands back.
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.client import rowpath
from coordinator.client.keys import KeyRegistry
from coordinator.client.ringlog import RingLog
from coordinator.transport.buffer import Buffer
from coordinator.transport.ring import RingReader, RingWriter
from coordinator.transport.ringrows import STAMP_SHIFT, RowWriter

needs_c = pytest.mark.skipif(not rowpath.built(), reason="the C extension was not built (no compiler at install)")


def test_ci_builds_the_extension() -> None:
    """CI installs with a compiler: there the C path must be the one the suite runs."""
    if os.environ.get("CI") != "true":
        pytest.skip("not CI: an install without a compiler takes the Python path")
    assert rowpath.built(), "the C extension coordinator.client._fastrow did not build in CI"


def _ring_log(path: Path, capacity: int, pure: bool, monkeypatch: pytest.MonkeyPatch) -> RingLog:
    if pure:
        monkeypatch.setenv(rowpath.PURE_ENV, "1")
    else:
        monkeypatch.delenv(rowpath.PURE_ENV, raising=False)
    rl = RingLog(RowWriter(RingWriter(path, capacity)), KeyRegistry("r"), Buffer(100_000))
    rl.on = True
    return rl


class _Key(str):
    """A key of a str subclass (equal to, and hashed as, the str): the C path does not index its frame by it."""


def _calls() -> list[tuple[dict[str, Any], int]]:
    """Rows of every kind the C path takes and of several it hands back, at growing steps."""
    big = {f"m{i:03d}": float(i) for i in range(100)}
    out: list[tuple[dict[str, Any], int]] = []
    for s in range(700):
        out.append(({"loss": s * 0.5}, s))
        out.append(({"a": s, "b": bool(s & 1), "c": np.float32(s / 4)}, s))
        if s % 7 == 0:
            out.append(({"n64": np.int64(s), "f64": np.float64(-s), "i32": np.int32(3)}, s))
        if s % 11 == 0:
            out.append(({**big, "m000": float(s)}, s))
        if s % 17 == 0:
            out.append(({_Key("loss"): s * 2.0}, s))  # a str subclass: found through the key tuple, not cached
        if s % 13 == 0:
            out.append(({"loss": 2**1100}, s))  # past a float: both hand it to the socket path
            out.append(({"loss": "text"}, s))  # not a number: the same
            out.append(({"loss": np.float16(1.5)}, s))  # a numpy type a frame does not take
    return out


def _run_calls(rl: RingLog, reader: RingReader, hold_at: Callable[[int], bool]) -> list[object]:
    """Each call's answer, reading and releasing the ring every 50 calls (its laps); some frames held."""
    answers: list[object] = []
    for i, (data, step) in enumerate(_calls()):
        if hold_at(i):
            for f in rl._frames.values():
                f[5] = rl._buf.acked_gen + 1  # a write of its keys over the socket not acknowledged yet
        elif hold_at(i - 5):
            rl._buf.acked_gen += 1  # acknowledged: the rows go into the ring again
        answers.append(rl.row(data, step))
        if i % 50 == 49:
            records = list(reader.records())
            answers.append([(pos, bytes(body[:4]) + bytes(body[8:])) for pos, body in records])  # the stamp out
            if records:
                reader.release(reader.cursor)
    return answers


@needs_c
def test_the_c_path_writes_what_the_python_path_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for pure in (False, True):
        path = tmp_path / f"ring-{pure}"
        rl = _ring_log(path, 16384, pure, monkeypatch)
        assert (rl.row == rl._row) is pure
        reader = RingReader(path)
        answers = _run_calls(rl, reader, lambda i: i % 400 == 399)
        w = rl._ring
        assert {type(f) is list for f in rl._frames.values()} == {pure}  # the C path's frames are its Frame
        frames = {kt: (f[0], f[2], f[3], f[5]) for kt, f in rl._frames.items()}
        counts = (rl.points, rl.full, rl.held, rl._seq, w.written, w._pos, len(rl._marks), frames)
        results.append((answers, counts))
        reader.close()
        rl._rows.close()
    (c_answers, c_counts), (py_answers, py_counts) = results
    assert len(c_answers) == len(py_answers)
    for i, (c, p) in enumerate(zip(c_answers, py_answers, strict=True)):
        assert c == p, f"answer {i}: C {c!r}, Python {p!r}"
    assert c_counts == py_counts
    points, full, held, seq, written, _, marks, _ = c_counts
    assert points > 9000 and written > 5 * 16384 and held > 0 and seq > 256 and marks > 0  # laps, marks, holds
    assert full == 0  # read every 50 calls: the ring never filled


@needs_c
def test_a_frame_reads_and_stores_its_items_as_the_python_paths_list_does() -> None:
    from coordinator.client._fastrow import Frame

    framing = (object(), 40, 1)
    items: list[Any] = [7, framing, -1, -1, 1, -1, 1]
    frame = Frame(*items)
    assert len(frame) == 7 and list(frame) == items and frame[1] is framing and frame[-2] == -1 and frame[-1] == 1
    for i, v in ((2, 2**40), (3, 2**63 - 1), (5, 3), (0, 2**32 - 1), (6, 0)):
        frame[i] = items[i] = v
    assert list(frame) == items and [frame[i] for i in range(-7, 0)] == items
    other = (None, 48, 2)
    frame[1] = items[1] = other
    assert frame[1] is other
    with pytest.raises(IndexError):
        frame[7]
    with pytest.raises(IndexError):
        frame[7] = 1
    with pytest.raises(OverflowError):
        frame[3] = 2**63  # the Python path packs a step before it stores it: no step past int64 comes here
    with pytest.raises(TypeError):
        frame[2] = 1.5
    with pytest.raises(TypeError):
        del frame[2]
    with pytest.raises(TypeError):
        Frame(1, framing, 2)
    assert list(frame) == items  # a refused store changed nothing


@needs_c
def test_a_full_ring_hands_the_row_back_counted_as_the_python_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never read: the ring fills, and each row after that comes back False, counted in ``full``."""
    for pure in (False, True):
        rl = _ring_log(tmp_path / f"full-{pure}", 4096, pure, monkeypatch)
        answers = [rl.row({"x": float(s)}, s) for s in range(200)]
        assert answers == [True] * 102 + [False] * 98, (pure, answers.count(True))  # 4096 bytes, 40 a row
        assert (rl.points, rl.full) == (102, 98)
        rl._rows.close()


@pytest.mark.parametrize("pure", [False, True])
def test_a_step_past_int64_into_a_full_ring_leaves_the_frame_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """A row at a step past int64 goes to the socket path, which refuses it (ValueError at the call): with the
    ring full too, the frame's last write and step stay those of its last row, on either path."""
    rl = _ring_log(tmp_path / "full", 4096, pure, monkeypatch)
    for s in range(110):
        rl.row({"x": float(s)}, s)  # 102 fit, then the ring is full
    f = rl._frames[("x",)]
    before = (f[2], f[3], rl._seq, rl.full)
    assert rl.row({"x": 1.0}, 2**63) is False
    assert (f[2], f[3], rl._seq, rl.full) == before
    rl._rows.close()


@needs_c
def test_the_c_path_stamps_each_row_with_the_time_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ring"
    rl = _ring_log(path, 16384, False, monkeypatch)
    reader = RingReader(path)
    rl.row({"x": 0.5}, 0)  # the frame's first row: the Python path (it admits the frame)
    t0 = time.monotonic_ns() >> STAMP_SHIFT
    assert rl.row({"x": 1.5}, 1) and rl.row({"x": 2.5}, 2)
    t1 = time.monotonic_ns() >> STAMP_SHIFT
    records = [bytes(b) for _, b in reader.records()]
    assert len(records) == 3
    for body in records[1:]:
        stamp = int.from_bytes(body[4:8], "little")
        assert t0 & 0xFFFFFFFF <= stamp <= t1 & 0xFFFFFFFF
    assert [np.frombuffer(b[16:], "<f8")[0] for b in records] == [0.5, 1.5, 2.5]
    assert [int.from_bytes(b[8:16], "little") for b in records] == [0, 1, 2]
    reader.close()
    rl._rows.close()


@needs_c
def test_a_closed_ring_and_an_off_ring_go_to_the_python_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rl = _ring_log(tmp_path / "ring", 16384, False, monkeypatch)
    assert rl.row({"x": 0.5}, 0) and rl.row({"x": 0.5}, 1)
    rl.on = False
    assert not rl.row({"x": 0.5}, 2)
    rl.on = True
    rl._rows.close()  # its map closed: the C path cannot take the buffer and hands the call back
    with pytest.raises(TypeError, match="read-write"):  # what the Python path says of a closed map
        rl.row({"x": 0.5}, 3)
    assert rl.points == 2


@needs_c
def test_a_ring_log_with_the_c_path_is_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C object and the RingLog refer to each other: the cycle collector must free them (a run's ring
    log kept for ever would keep its map)."""
    rl = _ring_log(tmp_path / "ring", 16384, False, monkeypatch)
    assert rl.row({"x": 0.5}, 0) and rl.row({"x": 0.5}, 1)
    rl._rows.close()
    gone = weakref.ref(rl)
    del rl
    gc.collect()
    assert gone() is None
