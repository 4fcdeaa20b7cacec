"""Offline mode: the whole conversation goes to the spool; requests needing an aggregator are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import CoordinatorError, DeliveryError
from coordinator.transport import wire
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.offline import OfflineSpooler
from coordinator.transport.requests import Request
from coordinator.transport.spool import SegmentedSpool, spool_records
from coordinator.transport.writeahead import WriteAhead


def _env(kind: int, seq: int) -> bytes:
    return wire.encode_envelope(kind, "run", 0, 0, seq)


def _spooler(d: Path, buf: Buffer) -> tuple[OfflineSpooler, SegmentedSpool]:
    spool = SegmentedSpool(d, segment_bytes=1 << 20, max_bytes=1 << 30)
    return OfflineSpooler(WriteAhead(spool, rank=0, buf=buf), rank=0, buf=buf, envelope=_env), spool


def test_hello_batches_and_bye_are_spooled_in_order_and_a_spooled_batch_counts_as_delivered(tmp_path: Path) -> None:
    buf = Buffer(100)
    buf.in_flight = 4
    off, spool = _spooler(tmp_path / "s", buf)
    off.hello({"world_size": 1})
    off.store(OutBatch(1, 0, 4, _env(wire.BATCH, 1), b"data"), 0.0)
    bye = Request(wire.BYE, {"accepted": 4})
    off.serve(bye, {"lost_points": 0})
    assert bye.result(0, None) == {}
    spool.close(remove_if_empty=False)
    recs = list(spool_records(tmp_path / "s"))
    assert [r.kind for r in recs] == [wire.HELLO, wire.BATCH, wire.BYE]
    assert wire.decode_map(recs[2].payload) == {"accepted": 4, "lost_points": 0}
    assert (buf.acked, buf.acked_gen, buf.in_flight) == (4, 0, 0)


def test_a_batch_that_cannot_be_spooled_is_lost_and_reported(tmp_path: Path) -> None:
    buf = Buffer(100)
    buf.in_flight = 4
    off, _ = _spooler(tmp_path / "s", buf)
    (tmp_path / "s" / f"{1:016d}.seg").mkdir()
    off.store(OutBatch(1, 0, 4, b"e", b"data"), 0.0)
    assert off.lost_points == 4 and buf.lost == 4
    assert any(isinstance(e, DeliveryError) and "offline rank 0" in str(e) for e in buf.errors)


def test_requests_for_an_aggregator_are_refused_offline(tmp_path: Path) -> None:
    off, _ = _spooler(tmp_path / "s", Buffer(10))
    req = Request(wire.STATE, {})
    off.serve(req, {})
    with pytest.raises(CoordinatorError, match="coordinator sync"):
        req.result(0, None)
