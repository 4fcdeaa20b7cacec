"""The rank-RSS benchmark's bound (with and without a ring), its counter check, and one real short trial with rings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.rank_rss import SETTINGS, bound_bytes, counter_problems, main, variant

_SOCKET_BOUND = 2 * 32 * 8192 * 16 + 2 * 200_000 * 16 + 16 * 1024**2
"""What ``SETTINGS`` allow over the socket: window and buffer at 16 bytes a point, twice, plus 16 MiB."""


def test_the_bound_is_the_socket_paths_plus_the_rings_bytes() -> None:
    assert bound_bytes(SETTINGS) == bound_bytes(SETTINGS, rings=False) == _SOCKET_BOUND
    assert bound_bytes(SETTINGS, rings=True) == _SOCKET_BOUND + 16 * 1024**2  # the library's ring size
    small = {**SETTINGS, "ring_bytes": 1 << 20}
    assert bound_bytes(small, rings=True) == _SOCKET_BOUND + (1 << 20)
    assert bound_bytes(small, rings=False) == _SOCKET_BOUND  # no ring, whatever its size would be


def test_the_variants_are_named_as_the_suite_names_them() -> None:
    assert variant("spool", rings=True) == "spool"
    assert variant("drop_oldest", rings=False) == "drop_oldest, socket"


def _rings_stats(**change: int) -> dict[str, Any]:
    """``run.stats()`` of a rings trial that adds up: 1,000 points logged, 600 of them (12 rows) in the ring."""
    st: dict[str, Any] = {"accepted": 1000, "pending": 0, "dropped": 0, "acked": 1000, "lost": 0}
    st.update(ring_points=600, ring_full=1, ring_held=7, generation=9, acked_generation=8)
    st.update(change)
    return st


def test_counters_that_add_up_pass_in_both_variants() -> None:
    assert counter_problems("spool", True, 1000, _rings_stats()) == []
    assert counter_problems("drop_oldest", True, 1000, _rings_stats(acked=700, dropped=300)) == []
    socket = {k: v for k, v in _rings_stats().items() if not k.startswith("ring_")}
    assert counter_problems("block", False, 1000, socket) == []


@pytest.mark.parametrize(
    ("policy", "change", "says"),
    [
        ("spool", {"acked": 999}, "do not add up"),  # a point neither acked nor dropped
        ("spool", {"accepted": 1050, "acked": 1050}, "do not add up"),  # more accepted than logged
        ("spool", {"pending": 50}, "do not add up"),
        ("spool", {"lost": 50}, "do not add up"),
        ("block", {"acked": 950, "dropped": 50}, "dropped under block"),
        ("drop_oldest", {"acked": 500, "dropped": 500}, "more than the 400 that went over the socket"),
        ("spool", {"ring_points": 610}, "not whole rows"),
        ("spool", {"ring_points": 0}, "not whole rows"),  # a rings trial whose ring took nothing
    ],
)
def test_counters_that_do_not_add_up_are_named(policy: str, change: dict[str, int], says: str) -> None:
    problems = counter_problems(policy, True, 1000, _rings_stats(**change))
    assert len(problems) == 1 and says in problems[0], problems


def test_a_trial_on_the_wrong_path_is_named() -> None:
    st = _rings_stats()
    assert "lack ring counters" in counter_problems("spool", True, 1000, {"accepted": 1000, "acked": 1000})[0]
    assert "have ring counters" in counter_problems("spool", False, 1000, st)[0]


def test_a_short_trial_with_rings_is_ok_and_names_its_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One real rank with its ring, its aggregator frozen 2 s: the ring fills, the rest goes over the socket."""
    out = tmp_path / "r.json"
    assert main(["--freeze", "2", "--policy", "spool", "--rings", "--json", str(out)]) == 0
    [r] = json.loads(out.read_text())
    assert r["ok"] and r["problems"] == [] and r["variant"] == "spool" and r["rings"] is True
    st = r["stats"]
    assert 0 < st["ring_points"] < r["logged"] == st["accepted"] == st["acked"]  # the full ring's rest: the socket
    assert st["ring_full"] >= 1 and r["growth"] <= r["bound"] == bound_bytes(SETTINGS, rings=True)
    assert st["ring_points"] // 50 + st["ring_full"] + st["ring_held"] == r["logged"] // 50  # each row counted once
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("spool: ") and "ring_points" in line and line.endswith("; ok")
