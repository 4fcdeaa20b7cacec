"""Rows through a ring come back by frame, in order, with their keys, after a restart and after a SIGKILL."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.core.env import COORDINATOR_PUREPYTHON
from coordinator.transport import wire
from coordinator.transport.ring import RingDamaged, RingReader, RingWriter
from coordinator.transport.ringrows import RowReader, RowWriter, ages_s, names_path, row_batches
from tests.aggregator.helpers import env, hello, make_cfg, reopen
from tests.transport.ring_writers import sigkill, writer_process


def test_rows_of_several_frames_come_back_grouped_in_order_with_their_keys(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 16))
    r = RowReader(RingReader(tmp_path / "r"))
    a, b = ("loss", "lr"), ("acc/" + "x" * 200,)
    for step in range(10):
        assert w.row(a, step, [step * 1.5, 0.1])
        if step % 3 == 0:
            assert w.row(b, step, iter([-float(step)]))  # any iterable of numbers
    rows = r.read()
    assert list(rows) == [a, b]
    assert rows[a][0].tolist() == list(range(10)) and rows[a][1].tolist() == [[s * 1.5, 0.1] for s in range(10)]
    assert rows[b][0].tolist() == [0, 3, 6, 9] and rows[b][1][:, 0].tolist() == [0.0, -3.0, -6.0, -9.0]
    assert r.read() == {}
    w.row(a, 10, [1.0, 2.0])
    assert r.read()[a][0].tolist() == [10]
    w.close()
    r.close()


def test_a_reader_started_from_a_kept_position_still_knows_frames_named_long_before(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 4096))
    r = RowReader(RingReader(tmp_path / "r"))
    keys = ("a", "b", "c")
    for lap in range(20):  # 48-byte rows: many laps of the 4 KiB ring, the frame named only before the first
        for step in range(lap * 50, lap * 50 + 50):
            assert w.row(keys, step, [step, step + 0.5, -step])
        assert len(r.read()[keys][0]) == 50
        r.reader.release(r.reader.cursor)
    w.row(keys, 1000, [1, 2, 3])
    kept = r.reader.cursor
    r.close()
    again = RowReader(RingReader(tmp_path / "r", start=kept))
    rows = again.read()
    assert rows[keys][0].tolist() == [1000] and rows[keys][1].tolist() == [[1.0, 2.0, 3.0]]
    again.close()
    w.close()


def test_a_row_of_an_unnamed_frame_or_of_the_wrong_size_is_damage(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path / "r", 4096)
    w = RowWriter(ring)
    r = RowReader(RingReader(tmp_path / "r"))
    w.row(("a",), 1, [1.0])
    assert r.read()[("a",)][0].tolist() == [1]
    ring.put(bytes(16))  # frame 0's head without its value: 40..72
    with pytest.raises(RingDamaged, match="the row at 40 is 16 bytes, not frame 0's"):
        r.read()
    r.reader.cursor = 72  # past it
    w.row(("a",), 2, [2.0])  # 72..112
    ring.put((7).to_bytes(4, "little") + bytes(20))
    with pytest.raises(RingDamaged, match="frame 7, which no name names"):
        r.read()
    assert r.reader.cursor == 72  # the good row before the damage is not taken by a pass that raised
    r.reader.cursor = 152
    ring.put(b"short")
    with pytest.raises(RingDamaged, match="5 bytes, not a row"):
        r.read()
    with pytest.raises(ValueError, match="larger than the ring takes"):
        w.row(tuple(f"k{i}" for i in range(200)), 1, [0.0] * 200)
    w.close()
    r.close()


def test_a_torn_last_name_is_read_once_it_is_whole(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 4096))
    r = RowReader(RingReader(tmp_path / "r"))
    w.row(("a",), 1, [1.0])
    assert r.read()[("a",)][0].tolist() == [1]
    whole = names_path(tmp_path / "r").read_bytes()
    w.row(("b", "c"), 2, [2.0, 3.0])
    entry = names_path(tmp_path / "r").read_bytes()[len(whole) :]
    with open(names_path(tmp_path / "r"), "r+b") as f:  # as a kill mid-append would leave it
        f.truncate(len(whole) + len(entry) - 3)
    r.reader.cursor = 0  # nothing was released: read everything again, frame 1's row included
    r.frames.clear()
    r._names_read = 0
    with pytest.raises(RingDamaged, match="frame 1, which no name names"):
        r.read()
    with open(names_path(tmp_path / "r"), "ab") as f:
        f.write(entry[-3:])
    r.reader.cursor = 0
    assert r.read()[("b", "c")][1].tolist() == [[2.0, 3.0]]
    w.close()
    r.close()


_WRITER = """
import sys
from pathlib import Path
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter
w = RowWriter(RingWriter(Path(sys.argv[1]), 1 << 16))
frames = [tuple(f"f{f}/k{j}" for j in range(f + 1)) for f in range(5)]
step = 0
while True:
    keys = frames[step % 5]
    if w.row(keys, step, [step + j for j in range(len(keys))]):
        step += 1
        if step == 500:
            print("ready", flush=True)
"""


def test_a_writer_killed_mid_run_leaves_every_row_it_published_readable_with_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    with writer_process(_WRITER, path) as p:
        r = RowReader(RingReader(path))
        got: dict[tuple[str, ...], list[np.ndarray]] = {}
        deadline = time.monotonic() + 30
        n = 0
        while n < 20_000 and time.monotonic() < deadline:
            for keys, (steps, values, _) in r.read().items():
                got.setdefault(keys, []).append(steps)
                assert (values == steps[:, None] + np.arange(len(keys))).all()
                n += len(steps)
            r.reader.release(r.reader.cursor)
        sigkill(p)
        for keys, (steps, values, _) in r.read(final=True).items():
            got.setdefault(keys, []).append(steps)
            assert (values == steps[:, None] + np.arange(len(keys))).all()
        steps = np.sort(np.concatenate([s for parts in got.values() for s in parts]))
        assert len(steps) >= 20_000 and steps.tolist() == list(range(len(steps)))  # each once, none missing
        assert sorted(len(k) for k in got) == [1, 2, 3, 4, 5]
        for keys, parts in got.items():
            s = np.concatenate(parts)
            assert (np.diff(s) == 5).all() and s[0] == len(keys) - 1  # each frame's rows in order
        r.close()


def test_rows_go_as_batches_of_at_most_the_cap_that_decode_to_the_same_points(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 16))
    r = RowReader(RingReader(tmp_path / "r"))
    a, b = tuple(f"a/{j}" for j in range(7)), ("b",)
    for step in range(100):
        w.row(a, step, [step * 10.0 + j for j in range(7)])
        w.row(b, step * 2, [-step])
    payloads = row_batches(r.read(), 50, 123.0)
    got: dict[str, list[tuple[int, float]]] = {}
    sizes = []
    for p in payloads:
        batch = wire.decode_batch(p, blocks=True)
        assert batch.ts == 123.0 and not batch.fields and not batch.texts
        sizes.append(batch.points)
        for key, steps, values in batch.metrics:
            got.setdefault(key, []).extend(zip(steps, values, strict=True))
        for blk in batch.blocks:
            for j, key in enumerate(blk.keys):
                got.setdefault(key, []).extend(zip(blk.steps, blk.values[j], strict=True))
    assert max(sizes) <= 50 and sum(sizes) == 800
    assert got["b"] == [(2 * s, -float(s)) for s in range(100)]
    assert all(got[f"a/{j}"] == [(s, s * 10.0 + j) for s in range(100)] for j in range(7))
    assert row_batches({}, 50, 1.0) == []
    with pytest.raises(ValueError, match="at least one key"):
        w.row((), 1, [])
    w.close()
    r.close()


def test_an_aggregator_stores_a_rings_rows_once_as_a_ranks_batches(tmp_path: Path) -> None:
    agg = Aggregator(make_cfg(tmp_path, world=1))
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 16))
    r = RowReader(RingReader(tmp_path / "r"))
    hello(agg, 0)
    seq = 0
    for step in range(0, 300, 3):
        w.row(("loss", "lr"), step, [1.0 / (step + 1), 0.5])
        w.row(("loss", "lr"), step + 1, [2.0, 0.25])
        w.row(("acc",), step, [step / 300])
        for p in row_batches(r.read(), 64, time.time()):
            seq += 1
            assert agg.batch(env(wire.BATCH, 0, 1, seq), p, time.time()) == "new"
            assert agg.batch(env(wire.BATCH, 0, 1, seq), p, time.time()) == "duplicate"  # stored once
        agg.commit()
        r.reader.release(r.reader.cursor)  # committed: the rows' bytes may go
    agg.finalize()
    s = reopen(tmp_path)
    try:
        loss = [(st, 1.0 / (st + 1) if st % 3 == 0 else 2.0) for st in range(300) if st % 3 < 2]
        assert s.values("loss", 0) == loss and s.values("loss") == loss  # one rank: the main series is its
        assert [st for st, _ in s.values("lr", 0)] == [st for st in range(300) if st % 3 < 2]
        assert s.values("acc", 0) == [(st, st / 300) for st in range(0, 300, 3)]
    finally:
        s.close()
    w.close()
    r.close()


def test_scalars_logged_key_by_key_come_back_by_key_from_one_run(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 20))
    r = RowReader(RingReader(tmp_path / "r"))
    keys = [(f"m/{j}",) for j in range(100)]
    for step in range(50):  # the "100 scalars at new steps" pattern: one-key frames, interleaved
        for j, k in enumerate(keys):
            w.row(k, step * 100 + j, [step + j / 100])
    runs = [(n, count) for n, count, view in r.reader.runs() if not view.release()]
    assert runs == [(24, 5000)]  # one run, checked at once
    r.reader.cursor = 0
    rows = r.read()
    assert len(rows) == 100
    for j, k in enumerate(keys):
        assert rows[k][0].tolist() == [s * 100 + j for s in range(50)]
        assert rows[k][1][:, 0].tolist() == [s + j / 100 for s in range(50)]
    w.row(keys[3], 10**6, [1.0])
    w.ring.put((100).to_bytes(4, "little") + bytes(4) + bytes(16))  # a one-key row of a frame nobody named
    with pytest.raises(RingDamaged, match="the row at 200040 is of frame 100, which no name names"):
        r.read()
    w.close()
    r.close()


def test_frames_that_share_a_key_come_back_split_in_one_pass_in_each_keys_write_order(tmp_path: Path) -> None:
    """A dict at each step, an ``append()`` of one of its keys now and then (a one-key frame of its own,
    same row size as another one-key frame), a replacement of a point after it, and a third frame sharing
    nothing: one pass takes every row; the two frames with key ``a`` come back split (``a`` alone, ``b``
    alone), each key's points (steps, values, stamps) in write order, and the frame sharing nothing whole."""
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 16))
    r = RowReader(RingReader(tmp_path / "r"))
    d, a, c = ("a", "b"), ("a",), ("c",)
    want: dict[str, list[tuple[int, float]]] = {"a": [], "b": [], "c": []}
    for step in range(0, 40, 2):
        assert w.row(d, step, [float(step), -float(step)])
        want["a"].append((step, float(step)))
        want["b"].append((step, -float(step)))
        assert w.row(c, step, [0.5])
        want["c"].append((step, 0.5))
        if step % 6 == 2:
            assert w.row(a, step + 1, [float(step + 1)])
            want["a"].append((step + 1, float(step + 1)))
        if step == 10:  # a replacement of a's point at step 10, after it
            assert w.row(a, 10, [99.0])
            want["a"].append((10, 99.0))
    rows = r.read()
    assert set(rows) == {("a",), ("b",), ("c",)}
    got = {f[0]: list(zip(st.tolist(), v[:, 0].tolist(), strict=True)) for f, (st, v, _) in rows.items()}
    assert got == want
    assert all(len(stamps) == len(steps) and (stamps > 0).all() for steps, _, stamps in rows.values())
    assert r.reader.cursor == r.reader.written and r.read() == {}
    w.close()
    r.close()


@pytest.mark.parametrize("seed", range(8))
def test_keys_of_frames_that_share_a_key_come_back_together_by_the_frames_that_hold_them(
    tmp_path: Path, seed: int
) -> None:
    """The frameworks' pattern: a training dict with ``epoch`` at every step, now and then a validation dict
    with ``epoch`` (at the same step or another), a dict of the training keys and one more, a scalar alone.
    In the pass's shared frames, the keys that the same frames hold come back as one frame (the training
    dict without ``epoch``, in its order; ``epoch`` alone; the validation keys), each key's points in write
    order; what shares nothing comes back whole."""
    rng = np.random.default_rng(seed)
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 20))
    r = RowReader(RingReader(tmp_path / "r"))
    train = ("loss", "lr", "grad_norm", "epoch")
    val = ("val/loss", "epoch", "val/acc")
    wide = ("loss", "lr", "grad_norm", "epoch", "extra")
    lone = ("tokens",)
    want: dict[str, list[tuple[int, float]]] = {}

    def write(keys: tuple[str, ...], step: int) -> None:
        vals = rng.normal(size=len(keys)).tolist()
        assert w.row(keys, step, vals)
        for k, v in zip(keys, vals, strict=True):
            want.setdefault(k, []).append((step, v))

    for step in range(300):
        write(wide if rng.random() < 0.05 else train, step)
        if rng.random() < 0.1:
            write(val, step - int(rng.integers(0, 3)))
        write(lone, step)
    rows = r.read()
    assert set(rows) == {("loss", "lr", "grad_norm"), ("epoch",), ("val/loss", "val/acc"), ("extra",), lone}
    got = {
        k: list(zip(steps.tolist(), values[:, j].tolist(), strict=True))
        for keys, (steps, values, _) in rows.items()
        for j, k in enumerate(keys)
    }
    assert got == want
    assert all(len(stamps) == len(steps) and (stamps > 0).all() for steps, _, stamps in rows.values())
    w.close()
    r.close()


def test_alternating_frames_that_share_a_key_are_read_in_one_pass_not_one_a_row(tmp_path: Path) -> None:
    """Seven dicts that share one key, written in turn 7,000 times (a pass stopped at each clash before: one
    pass a row, and the aggregator fell behind a rank writing them flat out): one pass takes them all."""
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 20))
    r = RowReader(RingReader(tmp_path / "r"))
    for s in range(7000):
        assert w.row((f"n{s % 7}", "m"), s, [float(s), -float(s)])
    rows = r.read()
    assert r.reader.cursor == r.reader.written
    assert rows[("m",)][0].tolist() == list(range(7000)) and rows[("m",)][1][:, 0].tolist() == [
        -float(s) for s in range(7000)
    ]
    for i in range(7):
        assert rows[(f"n{i}",)][0].tolist() == list(range(i, 7000, 7))
    w.close()
    r.close()


@pytest.mark.parametrize("pure", [False, True], ids=["c-walk", "python-walk"])
def test_calls_that_alternate_sizes_come_back_whole_over_many_laps_each_size_decoded_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """A 2-key dict, an ``append()`` and a 5-key dict at each step (three record sizes, a run of one each), read
    in passes of 3 to 20 steps over 100 laps of a 4 KiB ring: a size's rows lie apart, and on both sides of
    the wrap in some passes (one gather each). Every point comes back once, in order, with its value; a row
    of a frame nobody named among them is damage at its own position. The records found by the C walk or by
    the Python loop (:mod:`coordinator.transport.ringscan`)."""
    if pure:
        monkeypatch.setenv(COORDINATOR_PUREPYTHON, "1")
    else:
        monkeypatch.delenv(COORDINATOR_PUREPYTHON, raising=False)
    ring = RingWriter(tmp_path / "r", 4096)
    w = RowWriter(ring)
    r = RowReader(RingReader(tmp_path / "r"))
    frames = [("x", "y"), ("z",), tuple(f"a{i}" for i in range(5))]
    got: dict[str, list[tuple[int, float]]] = {}
    step, wraps = 0, 0
    while step < 2600:
        for _ in range(3 + step % 18):
            for keys in frames:
                assert w.row(keys, step, [step + j / 8 for j in range(len(keys))])
            step += 1
        lap = r.reader.cursor // 4096
        for keys, (steps, values, _) in r.read().items():
            for j, k in enumerate(keys):
                got.setdefault(k, []).extend(zip(steps.tolist(), values[:, j].tolist(), strict=True))
        wraps += r.reader.cursor // 4096 > lap
        r.reader.release(r.reader.cursor)
    assert wraps > 30
    for keys in frames:
        for j, k in enumerate(keys):
            assert got[k] == [(s, s + j / 8) for s in range(step)], k
    w.row(frames[0], step, [1.0, 2.0])
    w.row(frames[1], step, [3.0])
    at = ring.written
    ring.put((9).to_bytes(4, "little") + bytes(4) + step.to_bytes(8, "little") + bytes(8))  # a 1-key row of frame 9
    w.row(frames[1], step + 1, [4.0])
    with pytest.raises(RingDamaged, match=f"the row at {at} is of frame 9, which no name names"):
        r.read()
    w.close()
    r.close()


def test_each_row_carries_when_it_was_written_on_the_machines_monotonic_clock(tmp_path: Path) -> None:
    """Two rows ~0.3 s apart: read back together, their ages differ by the time between their writes
    and the newer's is the time since it was written, each to a stamp's ~1 ms (the clock read around
    each write and around the read, so a loaded machine's delays are in the bounds)."""
    w = RowWriter(RingWriter(tmp_path / "r", 1 << 16))
    r = RowReader(RingReader(tmp_path / "r"))
    b0 = time.monotonic()
    assert w.row(("a",), 0, [1.0])
    a0 = time.monotonic()
    time.sleep(0.3)
    b1 = time.monotonic()
    assert w.row(("a",), 1, [2.0])
    a1 = time.monotonic()
    time.sleep(0.1)
    [(_, _, stamps)] = r.read().values()
    before = time.monotonic()
    first, second = ages_s(stamps).tolist()
    after = time.monotonic()
    unit = 2**20 / 1e9  # a stamp's resolution: each age is within one unit of the truth
    assert b1 - a0 - 2 * unit <= first - second <= a1 - b0 + 2 * unit
    assert before - a1 - unit <= second <= after - b1 + unit
    assert ages_s(np.zeros(1, dtype=np.uint32)).tolist() == [0.0]  # no stamp (a ring written before stamps)
    w.close()
    r.close()


def test_a_row_of_a_non_number_publishes_nothing_and_the_next_row_reads(tmp_path: Path) -> None:
    w = RowWriter(RingWriter(tmp_path / "r", 4096))
    r = RowReader(RingReader(tmp_path / "r"))
    w.row(("a", "b"), 1, [1.0, 2.0])
    for bad in (["x", 2.0], [1.0]):
        with pytest.raises(struct.error):
            w.row(("a", "b"), 2, bad)
    assert w.ring.written == 48
    w.row(("a", "b"), 3, [3.0, 4.0])
    assert r.read()[("a", "b")][0].tolist() == [1, 3]
    w.close()
    r.close()


_NAMES_FULL = """
import resource, signal, sys
from pathlib import Path
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringrows import RowWriter, names_path
path = Path(sys.argv[1])
w = RowWriter(RingWriter(path, 4096))
w.row(("a",), 1, [1.0])
size = names_path(path).stat().st_size
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, as ENOSPC on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
try:
    w.row(tuple("k" * 30 + str(j) for j in range(3)), 2, [1.0, 2.0, 3.0])
except OSError as e:
    print("refused:", e.strerror, names_path(path).stat().st_size == size)
w.row(("b",), 3, [3.0])
"""


def test_a_frame_whose_name_could_not_be_written_leaves_no_torn_entry_before_the_next(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NAMES_FULL, str(tmp_path / "r")], capture_output=True, text=True, timeout=60
    )
    # the limit cuts the entry short (a short write, no error): refused all the same, and cut back
    assert (out.returncode, out.stdout) == (0, "refused: No space left on device True\n"), out.stderr
    r = RowReader(RingReader(tmp_path / "r"))
    rows = r.read(final=True)
    assert {k: v[0].tolist() for k, v in rows.items()} == {("a",): [1], ("b",): [3]}
    r.close()
