"""A run's events as a person reads them: short incarnation labels, one sentence per event kind."""

from __future__ import annotations

import json

from coordinator.core.events import SEE_FAILURES, event_rows, event_text, incarnation_labels, label_of


def _senders() -> list[dict[str, object]]:
    return [
        {"rank": 1, "incarnation": 88123456789012, "first_seen": 5.0},
        {"rank": 1, "incarnation": 912345678901234, "first_seen": 1.0},
        {"rank": 0, "incarnation": 7777777777777, "first_seen": 1.0},
    ]


def _readable(text: str) -> bool:
    """No JSON object and no number as long as an incarnation."""
    return "{" not in text and not any(len(w) > 12 and w.isdigit() for w in text.replace(",", " ").split())


def test_incarnations_are_numbered_per_rank_in_the_order_first_seen() -> None:
    assert incarnation_labels(_senders()) == {
        912345678901234: "r1#1",
        88123456789012: "r1#2",
        7777777777777: "r0#1",
    }
    labels = incarnation_labels(_senders())
    assert label_of("88123456789012", 1, labels) == "r1#2"
    assert label_of(5, 3, labels) == "r3#?" and label_of(5, None, labels) == "r?#?"  # no sender row


def test_events_read_as_sentences_without_raw_json_or_huge_numbers() -> None:
    labels = incarnation_labels(_senders())
    counters = json.dumps({"undelivered": 0, "accepted": 300, "dropped_points": 0, "redacted": 2})
    cases = {
        ("rank_joined", 1, "incarnation 912345678901234 pid 4242"): "r1#1 joined (pid 4242)",
        ("rank_restarted", 1, "incarnation 912345678901234 -> 88123456789012"): "restarted: r1#1 -> r1#2",
        (
            "rank_closed",
            1,
            f"incarnation 88123456789012, 300 points, ending failed (ValueError: x); rank counters {counters}",
        ): "r1#2 closed failed (ValueError: x): 300 points; accepted 300, redacted 2",
        (
            "rank_closed",
            0,
            f"incarnation 7777777777777, 10 points, ending clean; rank counters {counters}, 4 points undelivered",
        ): "r0#1 closed clean: 10 points; accepted 300, redacted 2, 4 points undelivered",
        (
            "rank_resumed",
            1,
            "incarnation 88123456789012 re-logs 'loss' from step 100",
        ): "r1#2 re-logs 'loss' from step 100",
        ("rank_failed", 1, json.dumps({"type": "ValueError", "traceback": "tb"})): "failed (see failures above)",
        ("straggler", 2, "rank 2 is a straggler: 1.500 s behind"): "rank 2 is a straggler: 1.500 s behind",
        ("rank_lost", 3, "rank 3 (incarnation 123456789) lost"): "rank 3 (r3#?) lost",
        ("spool_recovered", 1, "incarnation 912345678901234: 40 points from /s"): "r1#1: 40 points from /s",
    }
    for (kind, rank, detail), want in cases.items():
        got = event_text(kind, rank, detail, labels)
        assert got == want, (kind, got)
        assert _readable(got), got


def test_a_failure_reads_as_its_exception_where_no_failures_section_is_shown() -> None:
    detail = json.dumps({"type": "ValueError", "message": "bad input\nsecond line", "reason": "r", "traceback": "tb"})
    assert event_text("rank_failed", 1, detail, {}, failure_hint=None) == "failed: ValueError: bad input"
    plain = json.dumps({"type": None, "message": "gave up", "reason": "gave up", "traceback": None})
    assert event_text("rank_failed", 1, plain, {}, failure_hint=None) == "failed: gave up"
    assert event_text("rank_failed", 1, "not json", {}, failure_hint=None) == "failed: not json"
    assert event_text("rank_failed", 1, None, {}, failure_hint=None) == "failed"
    assert event_text("rank_failed", 1, detail, {}) == f"failed ({SEE_FAILURES})"


def test_a_closing_with_unreadable_counters_keeps_them_as_they_are() -> None:
    got = event_text("rank_closed", 0, "incarnation 7, 1 points, ending clean; rank counters {oops}", {7: "r0#1"})
    assert got == "r0#1 closed clean: 1 points; {oops}"


def test_event_rows_keep_the_raw_detail_beside_the_readable_line() -> None:
    labels = incarnation_labels(_senders())
    rows = event_rows([(1.5, "rank_joined", 0, "incarnation 7777777777777 pid 1"), (2.0, "note", None, None)], labels)
    assert rows == [
        {
            "ts": 1.5,
            "kind": "rank_joined",
            "rank": 0,
            "detail": "incarnation 7777777777777 pid 1",
            "text": "r0#1 joined (pid 1)",
        },
        {"ts": 2.0, "kind": "note", "rank": None, "detail": None, "text": ""},
    ]
