"""The write-ahead spool: batches on disk before they are sent, and a pause after a failed write."""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import SinkError
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.spool import SegmentedSpool, spool_records
from coordinator.transport.writeahead import WriteAhead


def _spool(d: Path) -> SegmentedSpool:
    return SegmentedSpool(d, segment_bytes=1 << 20, max_bytes=1 << 30)


def test_a_written_batch_can_be_read_back_from_its_location(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s")
    wal = WriteAhead(spool, rank=0, buf=Buffer(10))
    b = OutBatch(1, 0, 3, b"env", b"data")
    wal.write(b, 0.0)
    assert b.loc is not None and spool.read_payload(b.loc, b.seq) == b"data"


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


def test_write_through_writes_in_order_up_to_a_number_once_and_remembers_how_far(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s")
    wal = WriteAhead(spool, rank=0, buf=Buffer(10))
    bs = [OutBatch(s, 0, 1, b"env", b"p%d" % s) for s in (1, 2, 4, 5)]
    assert wal.write_through(bs, 4, 0.0)
    assert wal.through == 4 and [b.loc is not None for b in bs] == [True, True, True, False]
    assert wal.write_through(bs, 5, 0.0) and wal.writes == 4, "each batch once"
    spool.close(remove_if_empty=False)
    assert [r.seq for r in spool_records(spool.dir)] == [1, 2, 4, 5]


def test_write_through_stops_at_a_failed_write_and_goes_on_from_it_after_the_pause(tmp_path: Path) -> None:
    d = tmp_path / "s"
    spool = _spool(d)
    (d / f"{1:016d}.seg").mkdir()  # the first segment file cannot be created
    wal = WriteAhead(spool, rank=0, buf=Buffer(10))
    bs = [OutBatch(s, 0, 1, b"env", b"p") for s in (1, 2)]
    assert not wal.write_through(bs, 2, 10.0)
    assert wal.through == 0 and bs[1].loc is None, "nothing after the failed one"
    (d / f"{1:016d}.seg").rmdir()
    assert not wal.write_through(bs, 2, 10.5), "paused"
    assert wal.write_through(bs, 2, 11.0) and wal.through == 2
