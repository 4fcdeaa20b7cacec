"""The write-ahead spool: batches on disk before they are sent, and a pause after a failed write."""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import SinkError
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.spool import SegmentedSpool
from coordinator.transport.writeahead import WriteAhead


def _spool(d: Path) -> SegmentedSpool:
    return SegmentedSpool(d, segment_bytes=1 << 20, max_bytes=1 << 30)


def test_a_written_batch_can_be_read_back_from_its_location(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s")
    wal = WriteAhead(spool, rank=0, buf=Buffer(10))
    b = OutBatch(1, 0, 3, b"env", b"data")
    wal.write(b, 0.0)
    assert b.loc is not None and spool.read(b.loc).payload == b"data"


def test_a_failed_write_is_reported_and_pauses_writes_for_a_second(tmp_path: Path) -> None:
    d = tmp_path / "s"
    spool = _spool(d)
    (d / f"{1:016d}.seg").mkdir()  # the segment file cannot be created
    buf = Buffer(10)
    wal = WriteAhead(spool, rank=3, buf=buf)
    b = OutBatch(1, 0, 3, b"env", b"data")
    wal.write(b, 100.0)
    assert b.loc is None and wal.paused(100.5) and not wal.paused(101.0)
    [err] = buf.errors
    assert isinstance(err, SinkError) and "rank 3" in str(err) and "stay in memory" in str(err)
    wal.write(OutBatch(1, 0, 3, b"env", b"data"), 100.5)
    assert len(buf.errors) == 1, "no write (and no second report) while paused"
