"""Control requests: queueing, ids, replies, refusals and timeouts."""

from __future__ import annotations

import pytest

from coordinator.errors import ClosedError, CoordinatorError, CoordinatorTimeoutError
from coordinator.transport import wire
from coordinator.transport.requests import Request, RequestTable


def test_a_reply_completes_the_request_with_its_id() -> None:
    t = RequestTable()
    a, b = Request(wire.STATE, {}), Request(wire.QUERY, {"op": "values"})
    t.put(a)
    t.put(b)
    assert list(t.take()) == [a, b] and list(t.take()) == []
    ida, idb = t.open(a), t.open(b)
    assert ida != idb
    t.answer(idb, {"x": 1})
    assert b.result(0, "ipc://x") == {"x": 1} and not a.done.is_set()
    t.answer(idb, {"x": 2})  # a late duplicate is dropped
    assert b.reply == {"x": 1}


def test_an_error_reply_is_raised_to_the_waiter_and_unknown_ids_are_reported() -> None:
    t = RequestTable()
    r = Request(wire.STATE, {})
    rid = t.open(r)
    assert t.refuse(rid, CoordinatorError("no")) is True
    assert t.refuse(rid, CoordinatorError("again")) is False
    with pytest.raises(CoordinatorError, match="no"):
        r.result(0, None)


def test_fail_all_completes_open_and_queued_requests() -> None:
    t = RequestTable()
    sent, queued = Request(wire.STATE, {}), Request(wire.BYE, {})
    t.open(sent)
    t.put(queued)
    t.fail_all(ClosedError("closed"))
    for r in (sent, queued):
        with pytest.raises(ClosedError):
            r.result(0, None)
    assert list(t.take()) == []


def test_no_reply_in_time_names_the_request_and_the_endpoint() -> None:
    with pytest.raises(CoordinatorTimeoutError, match=r"QUERY.*ipc://agg"):
        Request(wire.QUERY, {}).result(0.01, "ipc://agg")


def test_queued_says_whether_a_request_waits_to_be_taken() -> None:
    t = RequestTable()
    assert t.queued is False
    r = Request(wire.STATE, {})
    t.put(r)
    assert t.queued is True
    assert list(t.take()) == [r]
    assert t.queued is False
