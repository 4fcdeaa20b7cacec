"""Which replies carry the sender's mark, in which field, and which wait for a commit that succeeds."""

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
