"""A ring hands each record over once, in order, frees it only when released, keeps what a killed writer published."""

from __future__ import annotations

import mmap
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.transport.ring import (
    HEADER_BYTES,
    SKIP,
    RingDamaged,
    RingReader,
    RingWriter,
)
from tests.transport.ring_writers import sigkill, writer_process

ROW = struct.Struct("<qd")


def _bodies(reader: RingReader, **kw: bool) -> list[bytes]:
    return [bytes(v) for _, v in reader.records(**kw)]


def test_records_come_back_once_in_order_with_their_positions(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    assert w.put(b"abc") and w.put(b"") and w.pack(ROW, 7, 1.5) and w.put(memoryview(b"x" * 8))
    got = list(r.records())
    assert [bytes(v) for _, v in got] == [b"abc", b"", ROW.pack(7, 1.5), b"x" * 8]
    assert [p for p, _ in got] == [0, 24, 40, 72]  # 16 bytes of edges, bodies padded to 8
    assert r.cursor == w.written == 96 and _bodies(r) == []
    assert w.put(b"more") and _bodies(r) == [b"more"]
    del got  # a record's view holds the map: closing with one held raises
    w.close()
    r.close()


def test_a_ring_written_past_its_capacity_many_times_loses_and_repeats_nothing(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    rng = random.Random(5)
    sent: list[bytes] = []
    got: list[bytes] = []
    refused = 0
    structs = [struct.Struct(f"<{k}i") for k in range(61)]
    for i in range(20_000):  # ~1.2 MB through 4 KiB: ~300 laps, with a skip mark at many of their ends
        k = rng.randint(0, 60)
        body = i.to_bytes(4, "little") * k
        if (
            w.put(body)
            if i % 3
            else w.pack_row(w.framing(structs[k]), (), [i] * k)
            if i % 2
            else w.pack(structs[k], *[i] * k)
        ):
            sent.append(body)
        else:
            refused += 1  # full: nothing was written; the reader takes and releases, then it fits
            got += _bodies(r)
            r.release(r.cursor)
            assert w.put(body)
            sent.append(body)
        if rng.random() < 0.1:
            got += _bodies(r)
            if rng.random() < 0.5:
                r.release(r.cursor)
    got += _bodies(r)
    assert got == sent and refused > 100 and w.written > 250 * 4096
    w.close()
    r.close()


def test_a_scalar_row_packs_the_same_record_as_a_row_and_waits_for_room_like_one(tmp_path: Path) -> None:
    """``pack_scalar`` (a scalar's row without argument tuples) writes what ``pack_row`` writes, through
    laps and skip marks; with no room it writes nothing, and it counts one point a row."""
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    one, three = struct.Struct("<IIqd"), struct.Struct("<IIq3d")
    f1, f3 = w.framing(one), w.framing(three)
    sent: list[bytes] = []
    got: list[bytes] = []
    for i in range(5_000):  # ~250 KB through 4 KiB, rows of 24 and 40 bytes: skip marks at many lap ends
        if i % 3:
            ok, body = w.pack_scalar(f1, 1, i & 0xFFFF, i, i * 0.5), one.pack(1, i & 0xFFFF, i, i * 0.5)
        else:
            ok, body = w.pack_row(f3, (3, 0, i), (i, -i, 0.25), 3), three.pack(3, 0, i, i, -i, 0.25)
        if not ok:
            tally = w.tally
            assert not w.pack_scalar(f1, 1, 0, i, 1.0) and w.tally == tally  # still no room: nothing written
            got += _bodies(r)
            r.release(r.cursor)
            assert (
                w.pack_scalar(f1, 1, i & 0xFFFF, i, i * 0.5) if i % 3 else w.pack_row(f3, (3, 0, i), (i, -i, 0.25), 3)
            )
        sent.append(body)
    got += _bodies(r)
    assert got == sent and w.written > 50 * 4096
    assert w.tally == sum(1 if i % 3 else 3 for i in range(5_000))
    with pytest.raises(struct.error):
        w.pack_scalar(f1, 1, 0, 7, "not a number")
    assert _bodies(r) == []  # a value that does not pack publishes nothing
    w.close()
    r.close()


def test_bytes_are_written_again_only_after_the_reader_releases_them(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    body = b"z" * 1000  # 1016 bytes a record: four fit
    assert all(w.put(body) for _ in range(4)) and not w.put(body) and w.space() < 1016
    assert len(_bodies(r)) == 4 and not w.put(body)  # read is not released: a commit may still need them
    r.release(1016)
    assert w.put(body) and not w.put(body)
    with pytest.raises(ValueError, match="outside"):
        r.release(0)  # behind what was released
    with pytest.raises(ValueError, match="outside"):
        r.release(r.cursor + 8)  # past what was read
    with pytest.raises(ValueError, match="larger than a quarter"):
        w.put(b"y" * 1025)
    with pytest.raises(ValueError, match="larger than a quarter"):
        w.pack(struct.Struct("<129q"), *range(129))
    with pytest.raises(ValueError, match="little-endian"):
        w.pack(struct.Struct("qd"), 1, 2.0)
    w.close()
    r.close()


def test_a_restarted_reader_reads_again_from_the_position_a_journal_kept(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    for i in range(6):
        w.put(bytes([i]) * 10)
    seen = [p for p, _ in r.records()]
    r.release(seen[2])  # records 0 and 1 committed; 2 to 5 read, then the reader died
    r.close()
    again = RingReader(tmp_path / "r")
    assert _bodies(again) == [bytes([i]) * 10 for i in range(2, 6)]
    again.close()
    kept = RingReader(tmp_path / "r", start=seen[4])  # the journal says 0..3 are committed
    assert _bodies(kept) == [bytes([4]) * 10, bytes([5]) * 10]
    kept.close()
    for bad in (8, seen[1], w.written + 8, seen[3] + 4):  # not a record's start, or released, or unwritten
        with pytest.raises(RingDamaged, match="outside"):
            RingReader(tmp_path / "r", start=bad if bad != 8 else 4)
    w.close()


def test_a_ring_is_made_once_and_only_a_ring_is_read(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    with pytest.raises(FileExistsError):
        RingWriter(tmp_path / "r", 4096)  # it may hold records no reader took
    w.close()
    (tmp_path / "x").write_bytes(b"\0" * (HEADER_BYTES + 4096))
    with pytest.raises(RingDamaged, match="not a version-1 ring"):
        RingReader(tmp_path / "x")
    (tmp_path / "short").write_bytes(b"CRNG")
    with pytest.raises(RingDamaged, match="shorter"):
        RingReader(tmp_path / "short")
    for cap in (2048, 4097, 6144, 1 << 35):
        with pytest.raises(ValueError, match="power of two"):
            RingWriter(tmp_path / f"c{cap}", cap)
        assert not (tmp_path / f"c{cap}").exists()


def test_a_record_whose_far_end_is_not_visible_waits_then_is_damage_once_the_writer_is_gone(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    w.put(b"first")
    w.put(b"second")
    # What a reordering of stores could show: the count already covers the second record, its
    # trailer does not yet (written as another lap's).
    at = HEADER_BYTES + 24 + 8 + 8  # "second" is at 24: its header, 6 bytes padded to 8, its trailer
    w.map[at : at + 8] = struct.pack("<II", 999, 6)
    assert _bodies(r) == [b"first"] and r.cursor == 24  # stops before it, to read it on a later pass
    assert _bodies(r) == []
    with pytest.raises(RingDamaged, match="the record at 24 is damaged: its two ends disagree"):
        list(r.records(final=True))
    w.map[at : at + 8] = struct.pack("<II", 3, 6)  # the store lands
    assert _bodies(r) == [b"second"]
    w.map[HEADER_BYTES + 48 : HEADER_BYTES + 56] = struct.pack("<II", 3000, 6)  # a length past what was written
    w._written[0] = 64
    with pytest.raises(RingDamaged, match="runs past"):
        list(r.records(final=True))
    w.close()  # closed: the same record is damage without being told
    with pytest.raises(RingDamaged, match="runs past"):
        list(r.records())
    r.close()


def test_a_skip_mark_sends_the_reader_to_the_start_of_the_data_area(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    assert w.put(b"a" * 1000) and w.put(b"b" * 1000) and w.put(b"c" * 1000)  # 3048 bytes
    assert _bodies(r) == [b"a" * 1000, b"b" * 1000, b"c" * 1000]
    r.release(r.cursor)
    assert w.put(b"d" * 1000)  # to 4064
    assert w.put(b"e" * 100)  # 120 bytes from 4064 would cross 4096: a skip mark, then at 0
    assert struct.unpack_from("<I", w.map, HEADER_BYTES + 4064)[0] == SKIP
    got = [(p, bytes(v)) for p, v in r.records()]
    assert got == [(3048, b"d" * 1000), (4096, b"e" * 100)] and r.cursor == 4096 + 120
    w.close()
    assert not r.drained
    r.release(r.cursor)
    assert r.drained
    r.close()


_WRITER = """
import struct, sys
from pathlib import Path
from coordinator.transport.ring import RingWriter
w = RingWriter(Path(sys.argv[1]), 1 << 16)
row = struct.Struct("<q3d")
i = 0
while True:
    if w.pack(row, i, i * 0.5, -i, i + 0.25):
        i += 1
        if i == 1000:  # under the ring's 1365 records: it fills until the reader takes them
            print("ready", flush=True)
"""


def test_a_writer_killed_mid_run_leaves_every_record_it_published_whole(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    with writer_process(_WRITER, path) as p:
        r = RingReader(path)
        rows: list[tuple[int, ...]] = []
        deadline = time.monotonic() + 30
        while len(rows) < 20_000 and time.monotonic() < deadline:  # many laps of the 64 KiB ring
            rows += [struct.unpack("<q3d", v) for _, v in r.records()]
            r.release(r.cursor)
        sigkill(p)
        rows += [struct.unpack("<q3d", v) for _, v in r.records(final=True)]
        assert len(rows) >= 20_000 and r.cursor == r.written
        assert rows == [(i, i * 0.5, -i, i + 0.25) for i in range(len(rows))]
        assert not r.writer_closed and r.writer_pid == p.pid
        r.close()


def test_runs_hand_over_the_same_records_as_one_by_one_checked_together(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    one, runs = RingReader(tmp_path / "r"), RingReader(tmp_path / "r")
    rng = random.Random(7)
    a: list[bytes] = []
    b: list[bytes] = []
    counts: list[int] = []
    for i in range(30_000):
        body = bytes([i % 251]) * rng.choice((8, 8, 8, 8, 24, 3))  # mostly runs of one length, some breaks
        while not w.put(body):
            a += _bodies(one)
            for n, count, view in runs.runs():
                size = 16 + ((n + 7) & ~7)
                b += [bytes(view[j * size + 8 : j * size + 8 + n]) for j in range(count)]
                counts.append(count)
                view.release()
            one.release(min(one.cursor, runs.cursor))
    a += _bodies(one)
    for n, count, view in runs.runs():
        size = 16 + ((n + 7) & ~7)
        b += [bytes(view[j * size + 8 : j * size + 8 + n]) for j in range(count)]
        view.release()
    assert a == b and len(a) == 30_000 and max(counts) > 20 and min(counts) == 1
    w.close()
    one.close()
    runs.close()


def test_a_run_stops_before_a_record_whose_far_end_is_not_visible(tmp_path: Path) -> None:
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    for i in range(10):
        w.put(bytes([i]) * 8)  # 24 bytes each
    w.map[HEADER_BYTES + 6 * 24 + 16 : HEADER_BYTES + 6 * 24 + 24] = struct.pack("<II", 0, 8)  # the 7th's tail
    got = [(n, count) for n, count, view in r.runs() if not view.release()]
    assert got == [(8, 6)] and r.cursor == 6 * 24
    with pytest.raises(RingDamaged, match="the record at 144 is damaged: its two ends disagree"):
        list(r.runs(final=True))
    w.map[HEADER_BYTES + 6 * 24 + 16 : HEADER_BYTES + 6 * 24 + 24] = struct.pack("<II", 18, 8)
    got = [(n, count) for n, count, view in r.runs() if not view.release()]
    assert got == [(8, 4)] and r.cursor == w.written
    w.close()
    r.close()


_NO_ROOM = """
import resource, signal, sys
from pathlib import Path
from coordinator.transport.ring import RingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, as ENOSPC on a full /dev/shm
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    RingWriter(Path(sys.argv[1]), 1 << 20)
except OSError as e:
    print("refused:", e.strerror, Path(sys.argv[1]).exists())
"""


def test_a_ring_with_no_room_for_its_pages_is_refused_at_creation_and_leaves_no_file(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_ROOM, str(tmp_path / "r")], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "refused: File too large False\n"


def _can_mount_tmpfs() -> bool:
    """Whether this machine lets a test mount a small tmpfs in a namespace of its own (``unshare -rm``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user and mount namespaces here to mount a small tmpfs")
def test_a_ring_larger_than_a_full_shared_memory_is_refused_not_a_sigbus_later(tmp_path: Path) -> None:
    # /dev/shm as a container gives it, but 64 KiB: a ring of 1 MiB cannot have its pages. Made
    # sparse, it would be made, and the store into its 17th page would kill the rank (SIGBUS).
    script = (
        "from pathlib import Path\n"
        "from coordinator.transport.ring import RingWriter\n"
        "try:\n"
        "    w = RingWriter(Path('/mnt/r'), 1 << 20)\n"
        "    for i in range(300):\n"
        "        w.put(bytes(1000))\n"
        "    print('written')\n"
        "except OSError as e:\n"
        "    print('refused:', e.strerror, Path('/mnt/r').exists())\n"
    )
    out = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=64k tmpfs /mnt && exec "{sys.executable}" -c "$0"',
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert (out.returncode, out.stdout) == (0, "refused: No space left on device False\n"), out.stderr


def _resident_kib(path: Path) -> list[int]:
    """KiB of each of ``path``'s mappings in this process that its page tables map now (``Rss`` in
    ``/proc/self/smaps``)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    found = []
    for at in [i for i, line in enumerate(lines) if line.endswith(" " + str(path))]:
        [rss] = [line for line in lines[at + 1 : at + 8] if line.startswith("Rss:")]
        found.append(int(rss.split()[1]))
    return found


def test_both_ends_map_every_page_of_the_ring_up_front_so_no_write_or_read_faults(tmp_path: Path) -> None:
    """The first write into each page of a fresh mapping would fault (a paced training step's calls took the
    faults at their p99); mapped with its pages present, the whole ring is resident before the first record."""
    size = 1 << 20
    w = RingWriter(tmp_path / "r", size)
    r = RingReader(tmp_path / "r")
    try:
        pages = -(-(HEADER_BYTES + size) // mmap.PAGESIZE)
        assert _resident_kib(tmp_path / "r") == [pages * mmap.PAGESIZE // 1024] * 2  # the writer's and the reader's
    finally:
        w.close()
        r.close()
