"""Backpressure: which policy lets a batch be cut when it cannot be sent, and where it then waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.settings import Backpressure
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.outbox import Outbox
from coordinator.transport.spool import SegmentedSpool
from coordinator.transport.writeahead import WriteAhead


def _wal(d: Path, max_bytes: int = 1 << 30) -> WriteAhead:
    return WriteAhead(SegmentedSpool(d, segment_bytes=1 << 20, max_bytes=max_bytes), rank=0, buf=Buffer(10))


@pytest.mark.parametrize(
    ("policy", "with_spool", "expected"),
    [
        ("block", True, False),
        ("spool", False, False),
        ("spool", True, True),
        ("drop_oldest", False, True),
    ],
)
def test_which_policy_may_cut_a_batch_that_cannot_be_sent(
    tmp_path: Path, policy: Backpressure, with_spool: bool, expected: bool
) -> None:
    wal = _wal(tmp_path / "s") if with_spool else None
    box = Outbox(policy=policy, wal=wal, max_points=10, rank=0, buf=Buffer(10))
    assert box.may_cut(0.0) is expected


def test_a_full_spool_stops_cutting(tmp_path: Path) -> None:
    wal = _wal(tmp_path / "s", max_bytes=1)
    box = Outbox(policy="spool", wal=wal, max_points=10, rank=0, buf=Buffer(10))
    wal.write(OutBatch(1, 0, 1, b"e", b"p"), 0.0)
    assert not box.may_cut(0.0)


def test_while_the_spool_is_paused_batches_wait_in_memory_up_to_the_bound(tmp_path: Path) -> None:
    d = tmp_path / "s"
    wal = _wal(d)
    (d / f"{1:016d}.seg").mkdir()
    wal.write(OutBatch(1, 0, 1, b"e", b"p"), 0.0)  # fails: pauses the spool
    box = Outbox(policy="spool", wal=wal, max_points=5, rank=0, buf=Buffer(10))
    assert box.may_cut(0.1)
    box.hold(OutBatch(1, 0, 5, b"e", b"p"))
    assert not box.may_cut(0.1)


def test_a_batch_on_disk_waits_without_its_payload_and_comes_out_oldest_first(tmp_path: Path) -> None:
    box = Outbox(policy="spool", wal=_wal(tmp_path / "s"), max_points=10, rank=0, buf=Buffer(10))
    on_disk = OutBatch(1, 0, 2, b"e", b"p", loc=(tmp_path / "seg", 0))
    in_memory = OutBatch(2, 0, 3, b"e", b"p")
    box.hold(on_disk)
    box.hold(in_memory)
    assert on_disk.payload is None and in_memory.payload == b"p"
    assert (box.spooled, box.points, len(box)) == (1, 5, 2)
    assert box.head() is on_disk and box.pop() is on_disk and box.points == 3


def test_drop_oldest_drops_past_the_bound_and_counts_the_points() -> None:
    buf = Buffer(100)
    box = Outbox(policy="drop_oldest", wal=None, max_points=5, rank=0, buf=buf)
    for seq in (1, 2, 3):
        box.hold(OutBatch(seq, 0, 3, b"e", b"p"))
    buf.in_flight = 9
    box.drop_oldest()
    assert [b.seq for b in (box.pop(),)] == [3] and len(box) == 0
    assert buf.dropped_points == 6 and buf.in_flight == 3


def test_while_batches_wait_on_disk_only_full_batches_are_cut(tmp_path: Path) -> None:
    """The waiting list holds a few bytes per batch: cutting full batches keeps it bounded by the spool."""
    buf = Buffer(100)
    box = Outbox(policy="spool", wal=_wal(tmp_path / "s"), max_points=100, rank=0, buf=buf, min_cut_points=10)
    assert box.may_cut(0.0), "nothing waits yet"
    box.hold(OutBatch(1, 0, 3, b"e", b"p", loc=(tmp_path / "seg", 0)))
    buf.pending = 9
    assert not box.may_cut(0.0)
    buf.flush_requested = True
    assert box.may_cut(0.0), "wait() or close() asked for a flush"
    buf.flush_requested = False
    buf.pending = 10
    assert box.may_cut(0.0)
