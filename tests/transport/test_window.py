"""The in-flight window: numbering, bounds, acks, resends and the acknowledged generation."""

from __future__ import annotations

from coordinator.transport.batches import OutBatch
from coordinator.transport.window import Window


def _window(max_batches: int = 3, max_points: int = 10) -> Window:
    return Window(max_batches=max_batches, max_points=max_points, envelope=lambda seq: b"env%d" % seq)


def _sent(w: Window, gen: int, points: int, now: float = 0.0) -> OutBatch:
    b = OutBatch(0, gen, points, b"", b"payload")
    w.number(b)
    w.add(b, now)
    return b


def test_batches_are_numbered_from_one_with_their_envelope() -> None:
    w = _window()
    a, b = OutBatch(0, 0, 1, b"", b""), OutBatch(0, 0, 1, b"", b"")
    w.number(a)
    w.number(b)
    assert (a.seq, a.envelope, b.seq, b.envelope, w.last_seq) == (1, b"env1", 2, b"env2", 2)


def test_room_is_bounded_in_batches_and_in_points_but_one_batch_always_fits() -> None:
    w = _window(max_batches=2, max_points=10)
    assert w.room(50), "an empty window takes a batch of any size"
    _sent(w, 0, 8)
    assert w.room(2) and not w.room(3)
    _sent(w, 0, 1)
    assert not w.room(0), "two batches in flight fill a two-batch window"


def test_pop_removes_once_and_frees_its_points() -> None:
    w = _window()
    _sent(w, 0, 4)
    b = w.pop(1)
    assert b is not None and b.points == 4 and w.points == 0 and len(w) == 0
    assert w.pop(1) is None


def test_acked_generation_is_just_before_the_oldest_outstanding_batch() -> None:
    w = _window()
    queued = OutBatch(9, 5, 1, b"", None)
    assert w.acked_gen(None, 7) == 7
    assert w.acked_gen(queued, 7) == 4
    _sent(w, 3, 1)
    assert w.acked_gen(queued, 7) == 2
    assert w.first_unacked(queued) == 1
    w.pop(1)
    assert w.first_unacked(queued) == 9 and w.first_unacked(None) == 2


def test_to_resend_selects_from_a_sequence_number_on_and_sent_before_a_time() -> None:
    w = _window()
    for gen in range(3):
        _sent(w, gen, 1, now=1.0 + gen)
    assert [b.seq for b in w.to_resend(2, 5.0)] == [2, 3]
    assert [b.seq for b in w.to_resend(1, 2.0)] == [1, 2]  # sent after the HELLO: still on its way
    oldest = w.oldest()
    assert oldest is not None and oldest.seq == 1
    assert w.seqs_below(3) == [1, 2]


def test_unnumber_takes_back_the_last_number() -> None:
    w = _window()
    b = OutBatch(0, 0, 1, b"", b"payload")
    w.number(b)
    w.unnumber(b)
    assert b.seq == 0 and w.last_seq == 0
    w.number(b)
    assert b.seq == 1
