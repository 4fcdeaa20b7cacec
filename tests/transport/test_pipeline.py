"""The pipeline's write-ahead: only what is not acknowledged in time, or cannot be sent, reaches the spool."""

from __future__ import annotations

import itertools
from array import array
from pathlib import Path
from typing import Any

import pytest

from coordinator.errors import SinkError
from coordinator.transport import wire
from coordinator.transport.batches import Cutter
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from coordinator.transport.copyread import read_copies
from coordinator.transport.outbox import Outbox
from coordinator.transport.pipeline import ACK_DEADLINE_MIN_S, Pipeline, ack_deadline
from coordinator.transport.spool import SegmentedSpool, spool_records
from coordinator.transport.window import Window
from coordinator.transport.writeahead import WriteAhead

DEFER_S = 0.1


class _Rank:
    """A pipeline over real stages and a real spool; the socket is a list of the frames sent."""

    def __init__(self, spool_dir: Path, *, max_window: int = 64, copies: bool = False) -> None:
        self.buf = Buffer(1_000_000)
        self.spool = SegmentedSpool(spool_dir, segment_bytes=1 << 20, max_bytes=1 << 30)
        self.wal = WriteAhead(self.spool, rank=0, buf=self.buf)
        self.sent: list[int] = []
        self.events: list[int | str] = []
        """Batch numbers as sent, and "pause" where the pipeline paused (the sender yields the GIL there)."""
        self.queue_full = False
        self.pipe = Pipeline(
            buf=self.buf,
            cutter=Cutter(lambda key, steps: None, 1000),
            window=Window(max_batches=max_window, max_points=1_000_000, envelope=self._envelope),
            outbox=Outbox(policy="spool", wal=self.wal, max_points=1_000_000, rank=0, buf=self.buf),
            wal=self.wal,
            offline=None,
            copies=Copies(spool_dir, self.buf, rank=0, window_s=0.05, clock=itertools.count(100.0).__next__)
            if copies
            else None,
            policy="spool",
            rank=0,
            send=self._send,
            pause=lambda: self.events.append("pause"),
            defer_s=DEFER_S,
        )
        self.pipe.welcomed = True
        self.step = 0

    @staticmethod
    def _envelope(seq: int) -> bytes:
        return wire.encode_envelope(wire.BATCH, "run", 0, 0, seq)

    def _send(self, frames: list[bytes], now: float) -> bool:
        if self.queue_full:
            return False
        seq = wire.decode_envelope(frames[0]).seq
        self.sent.append(seq)
        self.events.append(seq)
        return True

    def log_and_flush(self, now: float, points: int = 10) -> None:
        """Log ``points`` of one key at new steps, then flush at ``now``."""
        steps = array("q", range(self.step, self.step + points))
        self.step += points
        with self.buf.lock:
            self.buf.cols["m"] = (steps, array("d", [float(s) for s in steps]))
            self.buf.pending += points
        self.pipe.flush(now)

    def on_disk(self) -> list[int]:
        """The sequence numbers the spool holds, in file order."""
        return [r.seq for r in spool_records(self.spool.dir)]


def test_the_deadline_is_a_flush_interval_but_never_under_the_time_acks_take() -> None:
    assert ack_deadline(0.05) == ACK_DEADLINE_MIN_S == 0.2
    assert ack_deadline(0.005) == ACK_DEADLINE_MIN_S
    assert ack_deadline(1.0) == 1.0


def test_batches_acked_in_time_never_touch_the_spool(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    now = 0.0
    for _ in range(200):
        r.log_and_flush(now)
        r.pipe.pump(now + DEFER_S / 2)
        r.pipe.ack(r.sent[-1])  # the ack arrives within the deadline
        r.pipe.pump(now + DEFER_S)
        now += 0.05
    assert len(r.sent) == 200 and r.pipe.in_flight == 0
    assert r.wal.writes == 0 and r.spool.size_bytes == 0
    assert not list(r.spool.dir.glob("*.seg")), "no segment file was ever created"
    assert r.buf.stats()["acked"] == 2000


def test_a_batch_unacked_past_the_deadline_is_written_then_dropped_from_disk_by_its_ack(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    r.log_and_flush(0.0)
    r.log_and_flush(0.05)
    r.pipe.pump(0.05 + DEFER_S - 0.001)
    assert r.on_disk() == [1], "only the batch past its deadline (with nothing before it)"
    r.pipe.pump(0.05 + DEFER_S)
    assert r.on_disk() == [1, 2]
    assert r.wal.writes == 2
    r.pipe.pump(1.0)
    assert r.wal.writes == 2, "a batch is written once"
    r.pipe.ack(1)
    r.pipe.ack(2)
    assert r.spool.size_bytes == 0 and r.on_disk() == []


def test_a_late_batch_is_written_with_every_unacked_batch_before_it_in_order(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    for i in range(4):
        r.log_and_flush(i * 0.01)
    r.pipe.ack(2)  # acks are per batch: one acknowledged in time is never written
    r.pipe.pump(0.03 + DEFER_S)
    assert r.on_disk() == [1, 3, 4]


def test_batches_held_back_are_on_disk_and_so_is_what_is_in_flight_before_them(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s", max_window=2)
    r.log_and_flush(0.0)
    r.log_and_flush(0.01)
    assert r.wal.writes == 0
    r.log_and_flush(0.02)  # the window is full: held
    assert r.sent == [1, 2] and r.pipe.held
    assert r.on_disk() == [1, 2, 3]
    r.queue_full = True
    r.pipe.ack(1)
    r.pipe.ack(2)
    r.log_and_flush(0.03)  # the send queue refuses it: held too
    assert r.on_disk() == [1, 2, 3, 4] and r.pipe.held  # a segment goes once all of it is acked
    r.queue_full = False
    r.pipe.pump(0.04)  # read back from disk and sent
    assert r.sent == [1, 2, 3, 4] and not r.pipe.held
    r.pipe.ack(3)
    r.pipe.ack(4)
    assert r.on_disk() == [] and r.spool.size_bytes == 0


def test_batches_cut_before_the_welcome_wait_on_disk(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    r.pipe.welcomed = False
    r.log_and_flush(0.0)
    assert r.sent == [] and r.on_disk() == [1]


def test_a_new_hello_writes_what_is_in_flight_at_once(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    r.log_and_flush(0.0)
    r.log_and_flush(0.01)
    assert r.wal.writes == 0
    r.pipe.welcomed = False  # a reconnect or a restarted aggregator: it may have lost them
    assert r.on_disk() == [1, 2]


def test_a_resend_writes_the_batches_first(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    r.log_and_flush(0.0)
    r.log_and_flush(0.01)
    r.pipe.resend_from(2, 0.02)
    assert r.sent == [1, 2, 2] and r.on_disk() == [1, 2]


def test_what_is_unacked_at_close_is_left_on_disk(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s")
    r.log_and_flush(0.0)
    r.log_and_flush(0.01)
    r.pipe.ack(1)
    r.pipe.write_unacked()
    r.spool.close()
    assert [(x.seq, x.kind) for x in spool_records(r.spool.dir)] == [(2, wire.BATCH)]


def test_the_pauses_come_before_each_batch_and_not_after_the_last(tmp_path: Path) -> None:
    r = _Rank(tmp_path / "s", max_window=2)
    r.log_and_flush(0.0, points=2500)  # three batches: two go out, the window holds the third back
    assert r.events == ["pause", 1, "pause", 2, "pause"]
    r.pipe.ack(1)
    r.pipe.ack(2)
    r.pipe.pump(0.01)
    assert r.events[5:] == ["pause", 3], "a held batch is sent after a pause"
    r.log_and_flush(0.02)
    r.pipe.pump(0.02)
    assert r.events[7:] == ["pause", 4], "the sender's wait follows the last batch: no pause after it"


class _Copying(_Rank):
    """A rank with copies that records what the spool held when each batch was sent."""

    def __init__(self, spool_dir: Path) -> None:
        self.on_disk_at_send: list[list[int]] = []
        super().__init__(spool_dir, copies=True)

    def _send(self, frames: list[bytes], now: float) -> bool:
        self.on_disk_at_send.append(self.on_disk())
        return super()._send(frames, now)


def test_with_copies_every_cut_is_written_ahead_before_it_is_sent_and_its_copy_then_goes(tmp_path: Path) -> None:
    """The kill-window copies: a kill after the cut finds its batches on disk, or its copy and their numbers."""
    r = _Copying(tmp_path / "s")
    with r.buf.lock:
        r.buf.cols["m"] = (array("q", [0, 1]), array("d", [0.0, 1.0]))
        r.buf.pending += 2
    assert r.pipe.copies is not None
    with r.buf.lock:
        r.pipe.copies.check()  # the training thread's copy (its clock: each call a copy due)
    assert [g.points for g in read_copies(r.spool.dir)] == [2]
    r.log_and_flush(0.0)  # the cut (its column replaced by the helper's: 10 points)
    assert r.sent == [1] and r.on_disk_at_send == [[1]]
    [g] = read_copies(r.spool.dir)
    assert g.seqs == (1, 1)  # recovery skips it once batch 1 is stored
    r.pipe.ack(1)
    assert r.on_disk() == []
    for i in range(5):
        r.log_and_flush(0.05 * (i + 1))
    assert r.wal.writes == 6 and r.sent == [1, 2, 3, 4, 5, 6]
    assert [d[-1] for d in r.on_disk_at_send] == [1, 2, 3, 4, 5, 6]


def test_with_copies_the_next_generation_is_not_copied_while_the_cut_is_written_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training thread logs and reaches its copy mark while the sender writes the cut ahead (the spool's
    write releases the GIL): that copy waits, so a kill then leaves no later point on disk without the cut's."""
    r = _Copying(tmp_path / "s")
    c = r.pipe.copies
    assert c is not None
    seen: list[tuple[int, int]] = []
    append = r.spool.append

    def training_thread_meanwhile(*args: Any) -> Any:
        with r.buf.lock:
            r.buf.cols["n"] = (array("q", [100]), array("d", [1.0]))  # the next generation's first point
            r.buf.pending += 1
            c.check()  # its clock: a copy is due
        seen.append((c.copies, len(read_copies(r.spool.dir))))
        return append(*args)

    monkeypatch.setattr(r.spool, "append", training_thread_meanwhile)
    r.log_and_flush(0.0)
    assert seen == [(0, 0)], "nothing copied of the next generation during the write-ahead"
    monkeypatch.setattr(r.spool, "append", append)
    with r.buf.lock:
        assert r.buf.mark <= r.buf.pending  # the sender's cut_done: the next call copies
        c.check()
    [g] = read_copies(r.spool.dir)
    assert (g.gen, list(g.columns["n"][0])) == (1, [100])


def _held_after_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Rank:
    """A rank with batch 1 in flight and batch 2 held (the window is full) in memory: its write failed."""
    r = _Rank(tmp_path / "s", max_window=1)
    r.log_and_flush(0.0)
    append = r.spool.append

    def full(*args: Any) -> Any:
        raise SinkError("no space left on device")

    monkeypatch.setattr(r.spool, "append", full)
    r.log_and_flush(0.01)
    monkeypatch.setattr(r.spool, "append", append)  # the disk has room again
    return r


def test_a_held_batch_whose_write_failed_is_written_before_a_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool's records stay in number order with every unacknowledged batch: one held in memory (its write
    failed) goes to disk before the next batch does, not skipped past."""
    r = _held_after_a_failed_write(tmp_path, monkeypatch)
    assert r.on_disk() == [] and r.pipe.held and len(r.buf.errors) == 1
    r.log_and_flush(2.0)  # held too, after the pause: written with every unacked batch before it
    assert r.on_disk() == [1, 2, 3]


def test_at_close_a_held_batch_whose_write_failed_is_written_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is unacknowledged at close stays on disk: the batches in flight and those held in memory alike."""
    r = _held_after_a_failed_write(tmp_path, monkeypatch)
    r.pipe.write_unacked()  # the run closes (its clock is past the pause)
    assert r.on_disk() == [1, 2]
