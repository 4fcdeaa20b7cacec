"""When a sender needs its acks soon: it listens for each reply, and hurries once per batch (one PING unanswered)."""

from __future__ import annotations

from coordinator.transport.buffer import Buffer
from coordinator.transport.urgency import LISTEN_IN_FLIGHT, Hurry, listening, waited_for


class _Pipe:
    """The facts of a pipeline that urgency reads."""

    def __init__(self, in_flight: int = 0, held: bool = False, welcomed: bool = True, last_seq: int = 0) -> None:
        self.in_flight = in_flight
        self.last_seq = last_seq
        self.held = held
        self.welcomed = welcomed


def test_someone_waits_for_acks_on_wait_a_full_buffer_or_held_batches() -> None:
    buf = Buffer(100)
    assert not waited_for(buf, _Pipe(in_flight=3))
    buf.awaiting = 1
    assert waited_for(buf, _Pipe())
    buf.awaiting = 0
    buf.pending = 100
    assert waited_for(buf, _Pipe())
    buf.pending = 0
    assert waited_for(buf, _Pipe(held=True))


def test_a_paced_rank_with_a_few_batches_in_flight_is_quiet() -> None:
    buf = Buffer(100)
    assert not listening(buf, _Pipe(in_flight=LISTEN_IN_FLIGHT - 1), False)
    assert listening(buf, _Pipe(in_flight=LISTEN_IN_FLIGHT), False)
    assert listening(buf, _Pipe(welcomed=False), False)
    assert listening(buf, _Pipe(), True), "a request's answer is due"
    buf.awaiting = 1
    assert listening(buf, _Pipe(), False)


def test_a_hurry_is_due_once_per_newest_batch_while_batches_are_in_flight_and_waited_for() -> None:
    buf = Buffer(100)
    h = Hurry()
    buf.awaiting = 1
    assert not h.due(buf, _Pipe(in_flight=0, last_seq=0), 1.0, 0.0), "nothing in flight: nothing to hurry"
    assert h.due(buf, _Pipe(in_flight=1, last_seq=1), 1.0, 0.0)
    assert not h.due(buf, _Pipe(in_flight=1, last_seq=1), 1.1, 1.05), "no batch sent since the last PING"
    buf.cut({})  # an empty cut while it waits (the flush interval passed): nothing new went out
    assert not h.due(buf, _Pipe(in_flight=1, last_seq=1), 1.2, 1.05)
    assert h.due(buf, _Pipe(in_flight=2, last_seq=2), 1.3, 1.05), "a new batch while still waited for"
    buf.awaiting = 0
    assert not h.due(buf, _Pipe(in_flight=3, last_seq=3), 1.4, 1.35), "nobody waits"


def test_an_unanswered_hurry_is_not_repeated_until_a_reply_comes() -> None:
    """An aggregator that is behind gets one PING, not one per flush in its queue."""
    buf = Buffer(100)
    buf.awaiting = 1
    h = Hurry()
    assert h.due(buf, _Pipe(in_flight=1, last_seq=1), 5.0, 4.0)
    assert not h.due(buf, _Pipe(in_flight=2, last_seq=2), 5.05, 4.0), "the PING at 5.0 is unanswered"
    assert not h.due(buf, _Pipe(in_flight=3, last_seq=3), 5.10, 4.0)
    assert h.due(buf, _Pipe(in_flight=3, last_seq=3), 5.15, 5.12), "a reply came: the newest batch may hurry"
