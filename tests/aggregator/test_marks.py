"""Which replies carry the sender's mark, in which field, which wait for a commit that succeeds, which go."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.aggregator import marks
from coordinator.transport import wire


@pytest.mark.parametrize(
    ("kind", "payload", "field", "value"),
    [
        (wire.WELCOME, {"run_id": "r"}, "last_seq", 7),
        (wire.ACK, {}, "m", 7),
        (wire.PONG, {}, "m", 7),
        (wire.ERROR, {"code": "gap"}, "expected", 8),  # the batch after the mark
    ],
)
def test_an_acknowledging_reply_gets_the_mark_in_its_field(
    kind: int, payload: dict[str, Any], field: str, value: int
) -> None:
    assert marks.acknowledges(kind, payload)
    marks.fill(kind, payload, 7)
    assert payload[field] == value


@pytest.mark.parametrize(
    ("kind", "payload"),
    [(wire.ERROR, {"code": "sink"}), (wire.ERROR, {"code": "fenced"}), (wire.BYE_ACK, {}), (wire.STATE_REPLY, {})],
)
def test_other_replies_carry_no_mark(kind: int, payload: dict[str, Any]) -> None:
    assert not marks.acknowledges(kind, payload)
    assert not marks.held_back(kind, payload)


def test_only_welcomes_and_gap_reports_wait_for_a_commit_that_succeeds() -> None:
    """An ACK becomes a sink error instead, a PONG goes without a mark."""
    assert marks.held_back(wire.WELCOME, {})
    assert marks.held_back(wire.ERROR, {"code": "gap"})
    assert not marks.held_back(wire.ACK, {})
    assert not marks.held_back(wire.PONG, {})


def _env(kind: int, seq: int, rank: int = 0, incarnation: int = 1) -> wire.Envelope:
    return wire.Envelope(wire.PROTOCOL, kind, "r", rank, incarnation, seq)


def _ack(seq: int, mark: int | None, *, rank: int = 0, ident: bytes = b"a", **extra: Any) -> marks.Reply:
    payload: dict[str, Any] = dict(extra)
    if mark is not None:
        payload["m"] = mark
    return (ident, wire.ACK, _env(wire.ACK, seq, rank), payload)


def _seqs(replies: list[marks.Reply]) -> list[tuple[bytes, int, int]]:
    return [(ident, kind, env.seq) for ident, kind, env, _ in replies]


def test_a_senders_acks_of_one_commit_become_its_last() -> None:
    """Three batches of rank 0 and one of rank 1 in a commit: one ACK each, in their places."""
    pong = (b"a", wire.PONG, _env(wire.PONG, 0), {"m": 3})
    replies = [_ack(1, 3), _ack(1, 5, rank=1, ident=b"b"), _ack(2, 3), pong, _ack(3, 3)]
    assert _seqs(marks.coalesce(replies)) == [(b"b", wire.ACK, 1), (b"a", wire.PONG, 0), (b"a", wire.ACK, 3)]


def test_the_dropped_acks_warnings_move_to_the_kept_one_in_order() -> None:
    kept = marks.coalesce([_ack(1, 2, w=["first"]), _ack(2, 2, w=["second"])])
    assert [body for _, _, _, body in kept] == [{"m": 2, "w": ["first", "second"]}]
    kept = marks.coalesce([_ack(1, 2, w=["only"]), _ack(2, 2)])
    assert [body for _, _, _, body in kept] == [{"m": 2, "w": ["only"]}]


def test_an_ack_stays_unless_a_later_mark_covers_it() -> None:
    """No mark on the last ACK (its sender unknown after the commit), or a mark below the batch: both stay."""
    assert _seqs(marks.coalesce([_ack(1, 1), _ack(2, None)])) == [(b"a", wire.ACK, 1), (b"a", wire.ACK, 2)]
    assert _seqs(marks.coalesce([_ack(4, 4), _ack(2, 3)])) == [(b"a", wire.ACK, 4), (b"a", wire.ACK, 2)]


def test_acks_on_other_connections_are_kept() -> None:
    """The same rank under another identity (reconnected) or another incarnation is another sender."""
    other_inc = (b"a", wire.ACK, _env(wire.ACK, 1, 0, incarnation=2), {"m": 1})
    replies = [_ack(1, 2), _ack(2, 2, ident=b"c"), other_inc]
    assert marks.coalesce(replies) == replies
