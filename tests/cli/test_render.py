"""What show prints for a person: sparklines, short incarnation labels, one readable line per event."""

from __future__ import annotations

import json
import math

from coordinator.cli.render import BLOCKS, event_text, incarnation_labels, number, sparkline


def test_sparkline_scales_from_lowest_to_highest_block() -> None:
    assert sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == BLOCKS
    assert sparkline([3.0, 3.0, 3.0]) == BLOCKS[3] * 3  # flat: the middle block
    assert sparkline([1.0, None, math.nan, 2.0]) == BLOCKS[0] + "  " + BLOCKS[-1]  # gaps stay gaps
    assert sparkline([1.0, math.inf, -math.inf, 2.0]) == BLOCKS[0] + BLOCKS[-1] + BLOCKS[0] + BLOCKS[-1]
    assert sparkline([]) == ""
    assert sparkline([None, None]) == "  "


def test_number_is_short() -> None:
    assert number(None) == "-"
    assert number(0.021314159) == "0.02131"
    assert number(1234567.0) == "1.235e+06"


def _senders() -> list[dict[str, object]]:
    return [
        {"rank": 1, "incarnation": 88123456789012, "first_seen": 5.0},
        {"rank": 1, "incarnation": 912345678901234, "first_seen": 1.0},
        {"rank": 0, "incarnation": 7777777777777, "first_seen": 1.0},
    ]


def test_incarnations_are_numbered_per_rank_in_the_order_first_seen() -> None:
    assert incarnation_labels(_senders()) == {
        912345678901234: "r1#1",
        88123456789012: "r1#2",
        7777777777777: "r0#1",
    }


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
    }
    for (kind, rank, detail), want in cases.items():
        got = event_text(kind, rank, detail, labels)
        assert got == want, (kind, got)
        assert "{" not in got and not any(len(w) > 12 and w.isdigit() for w in got.split())
