"""The report's counters: all named once, zero at the start, restored from what a previous aggregator saved."""

from __future__ import annotations

import json

from coordinator.aggregator.counters import COUNTER_NAMES, HEADLINE, PROBLEMS, Report, load_counters, new_counters


def test_new_counters_are_every_name_at_zero() -> None:
    """One key per counter name, each 0."""
    c = new_counters()
    assert list(c) == list(COUNTER_NAMES) and set(c.values()) == {0}
    assert {"points", "batches", "duplicate_batches", "bad_frames", "conflicts"} <= set(c)


def test_load_counters_keeps_known_ints_only() -> None:
    """Saved ints of known counters come back; unknown names and non-ints are ignored; None is all zero."""
    saved = json.dumps({"points": 7, "conflicts": 2, "bogus": 5, "gaps": "3"})
    c = load_counters(saved)
    assert (c["points"], c["conflicts"], c["gaps"]) == (7, 2, 0)
    assert "bogus" not in c
    assert load_counters(None) == new_counters()


def test_headline_and_problem_names_are_report_keys() -> None:
    """Every name ``show`` prints or a benchmark checks is a key of the report."""
    keys = set(Report.__annotations__) | set(COUNTER_NAMES)
    assert set(HEADLINE) <= keys and set(PROBLEMS) <= keys
