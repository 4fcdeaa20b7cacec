"""The spool: append/read round trip, torn tails, checksum mismatches, repair, and acknowledged segments."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from coordinator.errors import SinkError
from coordinator.transport import wire
from coordinator.transport.spool import SegmentedSpool, SpoolRecord, SpoolWriter, read_spool, spool_records

_HEAD = 8  # u32 length + u32 crc32


def records(n: int) -> list[SpoolRecord]:
    """n distinct records with real envelopes and payloads of varying size."""
    return [
        SpoolRecord(
            wire.BATCH,
            i + 1,
            wire.encode_envelope(wire.BATCH, "run", 0, 5, i + 1),
            wire.encode_map({"i": i, "pad": "x" * (i * 37)}),
        )
        for i in range(n)
    ]


def write(path: Path, recs: list[SpoolRecord]) -> list[int]:
    """Append recs; return each record's end offset in the file."""
    w = SpoolWriter(path)
    ends = []
    try:
        for r in recs:
            w.append(r.kind, r.seq, r.envelope, r.payload)
            ends.append(path.stat().st_size)
        assert w.records == len(recs)
    finally:
        w.close()
    return ends


def spool_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages of the spool module's warnings."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "coordinator.transport.spool" and r.levelno == logging.WARNING
    ]


def test_append_then_read_round_trips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every appended record reads back identical and in order, without warnings."""
    path = tmp_path / "spool" / "rank-0.spool"
    recs = records(20)
    ends = write(path, recs)
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == recs
    assert spool_warnings(caplog) == []
    body0 = msgpack.packb([recs[0].kind, recs[0].seq, recs[0].envelope, recs[0].payload], use_bin_type=True)
    assert ends[0] == _HEAD + len(body0)
    assert path.read_bytes()[:_HEAD] == struct.pack("<II", len(body0), zlib.crc32(body0))


def test_spool_is_private(tmp_path: Path) -> None:
    """The spool file is 0600 in a created 0700 directory."""
    path = tmp_path / "new" / "rank-0.spool"
    write(path, records(1))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_reopened_writer_appends(tmp_path: Path) -> None:
    """A second writer on the same file appends after the existing records."""
    path = tmp_path / "s.spool"
    recs = records(6)
    write(path, recs[:3])
    write(path, recs[3:])
    assert list(read_spool(path)) == recs


def test_the_writer_knows_its_size_without_asking_the_file(tmp_path: Path) -> None:
    """The next record's offset is tracked (no seek per write), from an existing file's size on."""
    path = tmp_path / "s.spool"
    recs = records(4)
    write(path, recs[:2])
    w = SpoolWriter(path)
    assert w.size == path.stat().st_size > 0
    for r in recs[2:]:
        w.append(r.kind, r.seq, r.envelope, r.payload)
        assert w.size == path.stat().st_size
    assert w.truncate() > 0 and w.size == 0 == path.stat().st_size
    w.append(recs[0].kind, recs[0].seq, recs[0].envelope, recs[0].payload)
    w.close()
    assert list(read_spool(path)) == recs[:1]


def test_empty_spool_reads_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An empty file is a valid spool with no records and no warning."""
    path = tmp_path / "s.spool"
    SpoolWriter(path).close()
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == []
    assert spool_warnings(caplog) == []


def test_close_is_idempotent(tmp_path: Path) -> None:
    """Closing a writer twice does not fail."""
    w = SpoolWriter(tmp_path / "s.spool")
    w.close()
    w.close()


@pytest.mark.parametrize("cut_into", [1, 4, 7, 8, 9, "half", -1], ids=str)
def test_torn_tail_yields_intact_prefix_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut_into: int | str
) -> None:
    """A file cut inside the last record yields every earlier record and warns with the byte offset."""
    path = tmp_path / "s.spool"
    recs = records(5)
    ends = write(path, recs)
    start = ends[3]
    size = ends[4] - start
    if isinstance(cut_into, int):
        keep = size - 1 if cut_into == -1 else cut_into
    else:
        assert cut_into == "half"
        keep = size // 2
    with open(path, "r+b") as f:
        f.truncate(start + keep)
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == recs[:4]
    (msg,) = spool_warnings(caplog)
    assert f"at byte {start}" in msg and f"{keep} bytes after it ignored" in msg
    assert ("torn header" if keep < _HEAD else "torn record") in msg
    assert path.stat().st_size == start + keep  # not repaired


def test_repair_truncates_torn_tail_and_appends_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With repair=True the torn bytes are cut, so later appends are readable again."""
    path = tmp_path / "s.spool"
    recs = records(4)
    ends = write(path, recs)
    with open(path, "r+b") as f:
        f.truncate(ends[3] - 3)
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path, repair=True)) == recs[:3]
    assert "truncated" in spool_warnings(caplog)[0]
    assert path.stat().st_size == ends[2]
    extra = records(6)[5]
    write(path, [extra])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == [*recs[:3], extra]
    assert spool_warnings(caplog) == []


def test_append_after_unrepaired_torn_tail_is_hidden_behind_it(tmp_path: Path) -> None:
    """Without repair, records appended after a torn tail are not read (why repair exists)."""
    path = tmp_path / "s.spool"
    recs = records(3)
    ends = write(path, recs)
    with open(path, "r+b") as f:
        f.truncate(ends[2] - 1)
    write(path, records(4)[3:])
    assert list(read_spool(path)) == recs[:2]


@pytest.mark.parametrize("which", [0, 2, 4])
def test_flipped_byte_stops_reading_at_the_corrupt_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, which: int
) -> None:
    """A flipped payload byte fails the CRC: records before it are read, nothing from it on."""
    path = tmp_path / "s.spool"
    recs = records(5)
    ends = write(path, recs)
    start = ends[which - 1] if which else 0
    data = bytearray(path.read_bytes())
    data[start + _HEAD + 5] ^= 0x40
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == recs[:which]
    (msg,) = spool_warnings(caplog)
    assert "checksum mismatch" in msg and f"at byte {start}" in msg
    assert f"{len(data) - start} bytes after it ignored" in msg
    assert path.stat().st_size == len(data)


def test_flipped_crc_byte_is_a_checksum_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Corrupting the stored CRC itself is detected the same way."""
    path = tmp_path / "s.spool"
    recs = records(3)
    ends = write(path, recs)
    data = bytearray(path.read_bytes())
    data[ends[0] + 4] ^= 0x01
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == recs[:1]
    assert "checksum mismatch" in spool_warnings(caplog)[0]


def test_corrupt_length_field_is_a_torn_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A length field pointing past the end of the file (or over the cap) stops reading there."""
    path = tmp_path / "s.spool"
    recs = records(3)
    ends = write(path, recs)
    data = bytearray(path.read_bytes())
    data[ends[1] : ends[1] + 4] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path, repair=True)) == recs[:2]
    assert "torn record" in spool_warnings(caplog)[0]
    assert path.stat().st_size == ends[1]


def test_record_with_valid_crc_but_wrong_shape_is_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checksummed body that is not [kind, seq, env, payload] stops reading instead of raising."""
    path = tmp_path / "s.spool"
    recs = records(2)
    write(path, recs)
    for body in (msgpack.packb([1, 2, 3]), msgpack.packb(7), b"\xc1"):
        with open(path, "ab") as f:
            f.write(struct.pack("<II", len(body), zlib.crc32(body)) + body)
    with caplog.at_level(logging.WARNING):
        assert list(read_spool(path)) == recs
    assert "undecodable record" in spool_warnings(caplog)[0]


def test_writer_in_unwritable_place_raises_sink_error(tmp_path: Path) -> None:
    """A spool path whose parent is a file raises SinkError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError):
        SpoolWriter(tmp_path / "file" / "s.spool")


def test_acking_the_open_segment_empties_it_in_place_and_appends_continue(tmp_path: Path) -> None:
    """A fully acked open segment is truncated, not closed and unlinked; later records read back in order."""
    sp = SegmentedSpool(tmp_path / "sp", segment_bytes=1 << 20, max_bytes=1 << 30)
    recs = records(6)
    locs = [sp.append(r.kind, r.seq, r.envelope, r.payload) for r in recs[:3]]
    [seg] = list((tmp_path / "sp").glob("*.seg"))
    assert sp.size_bytes == seg.stat().st_size > 0
    sp.acked_through(3)
    assert list((tmp_path / "sp").glob("*.seg")) == [seg], "the open segment is kept"
    assert seg.stat().st_size == 0 and sp.size_bytes == 0
    assert list(spool_records(tmp_path / "sp")) == []
    locs = [sp.append(r.kind, r.seq, r.envelope, r.payload) for r in recs[3:]]
    assert locs[0] == (seg, 0), "the next record starts at the beginning of the emptied file"
    assert [sp.read_payload(loc, r.seq) for loc, r in zip(locs, recs[3:], strict=True)] == [r.payload for r in recs[3:]]
    assert list(spool_records(tmp_path / "sp")) == recs[3:]
    assert sp.size_bytes == seg.stat().st_size
    sp.acked_through(4)  # part of the open segment: nothing is dropped
    assert list(spool_records(tmp_path / "sp")) == recs[3:]
    sp.acked_through(6)
    sp.close()
    assert not (tmp_path / "sp").exists(), "an emptied spool is removed at close"


def test_sealed_segments_are_deleted_and_the_order_survives_truncation(tmp_path: Path) -> None:
    """Small segments: acked sealed files go, the truncated open one still sorts before the next."""
    sp = SegmentedSpool(tmp_path / "sp", segment_bytes=1, max_bytes=1 << 30)
    recs = records(5)
    for r in recs[:2]:
        sp.append(r.kind, r.seq, r.envelope, r.payload)  # one record per segment
    sp.acked_through(2)
    names = sorted(p.name for p in (tmp_path / "sp").glob("*.seg"))
    assert names == [f"{2:016d}.seg"], names
    for r in recs[2:]:
        sp.append(r.kind, r.seq, r.envelope, r.payload)
    assert list(spool_records(tmp_path / "sp")) == recs[2:]
    sp.close(remove_if_empty=False)
    assert list(spool_records(tmp_path / "sp")) == recs[2:], "what a crash would leave: unacked records only"


def test_a_payload_given_as_a_view_reads_back_as_its_bytes(tmp_path: Path) -> None:
    """A full batch's payload is a read-only view of the buffer it was packed into: the spool stores its bytes."""
    from array import array

    payload = wire.encode_chunks_view(
        [["k", array("q", range(20_000)).tobytes(), array("d", range(20_000)).tobytes()]], [], 1.0
    )
    assert isinstance(payload, memoryview)
    path = tmp_path / "spool" / "rank-0.spool"
    env = wire.encode_envelope(wire.BATCH, "run", 0, 5, 1)
    w = SpoolWriter(path)
    try:
        w.append(wire.BATCH, 1, env, payload)
    finally:
        w.close()
    assert list(read_spool(path)) == [SpoolRecord(wire.BATCH, 1, env, bytes(payload))]


@pytest.mark.parametrize("size", [0, 255, 256, 65_535, 65_536, 300_000])
@pytest.mark.parametrize("as_view", [False, True])
def test_a_record_written_as_head_and_payload_has_the_layout_of_one_packed_body(
    tmp_path: Path, size: int, as_view: bool
) -> None:
    """The writer sends a record's head and its payload (no packed copy of a megabyte): the file holds
    exactly ``u32 length | u32 crc32 | packb([kind, seq, envelope, payload])``, whatever the payload's
    bin header."""
    raw = os.urandom(size)
    env = wire.encode_envelope(wire.BATCH, "run", 0, 5, 9)
    path = tmp_path / "rank-0.spool"
    w = SpoolWriter(path)
    try:
        w.append(wire.BATCH, 9, env, memoryview(raw) if as_view else raw)
    finally:
        w.close()
    body = msgpack.packb([wire.BATCH, 9, env, raw], use_bin_type=True)
    assert path.read_bytes() == struct.pack("<II", len(body), zlib.crc32(body)) + body
    assert w.size == 8 + len(body)
    assert list(read_spool(path)) == [SpoolRecord(wire.BATCH, 9, env, raw)]


@pytest.mark.parametrize("size", [1_000, 131_000, 131_072, 131_100, 300_000])
def test_a_batch_read_back_for_sending_has_its_bytes_and_a_large_one_is_a_view_of_pooled_pages(
    tmp_path: Path, size: int
) -> None:
    """A held batch comes back from disk to be sent: past 128 KiB its payload is left where the read put it
    (pages of :mod:`~coordinator.transport.pages`), not copied out by the decoding; the bytes are the
    ones written, whatever the bin header."""
    sp = SegmentedSpool(tmp_path / "sp", segment_bytes=1 << 22, max_bytes=1 << 30)
    raw = [os.urandom(size + i) for i in range(3)]
    envs = [wire.encode_envelope(wire.BATCH, "run", 0, 5, s) for s in (1, 2, 3)]
    locs = [sp.append(wire.BATCH, s, envs[s - 1], raw[s - 1]) for s in (1, 2, 3)]
    try:
        for s, (loc, env, data) in enumerate(zip(locs, envs, raw, strict=True), 1):
            got = sp.read_payload(loc, s)
            assert got == data
            body = len(msgpack.packb([wire.BATCH, s, env, data], use_bin_type=True))
            assert isinstance(got, memoryview) == (body > 128 * 1024)
            if isinstance(got, memoryview):
                assert got.readonly and isinstance(got.obj, np.ndarray)
    finally:
        sp.close()


def test_a_batch_read_back_from_the_wrong_place_or_corrupt_raises(tmp_path: Path) -> None:
    sp = SegmentedSpool(tmp_path / "sp", segment_bytes=1 << 22, max_bytes=1 << 30)
    env = wire.encode_envelope(wire.BATCH, "run", 0, 5, 4)
    path, at = sp.append(wire.BATCH, 4, env, os.urandom(200_000))
    try:
        with pytest.raises(SinkError, match="holds batch 4, not 5"):
            sp.read_payload((path, at), 5)
        data = bytearray(path.read_bytes())
        data[100_000] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(SinkError, match="corrupt"):
            sp.read_payload((path, at), 4)
        with pytest.raises(SinkError, match="cannot read"):
            sp.read_payload((tmp_path / "gone.seg", 0), 4)
    finally:
        sp.close()


def test_a_large_record_with_another_layout_is_decoded_whole(tmp_path: Path) -> None:
    """A record whose head does not fit the peek (a long envelope) is still read correctly, by a full decode."""
    sp = SegmentedSpool(tmp_path / "sp", segment_bytes=1 << 22, max_bytes=1 << 30)
    long_env = b"x" * 10_000
    data = os.urandom(200_000)
    loc = sp.append(wire.BATCH, 7, long_env, data)
    try:
        assert sp.read_payload(loc, 7) == data
    finally:
        sp.close()
