"""Automatic step numbering, and its continuation when a rank resumes a run (issue 11, item 6)."""

from __future__ import annotations

from array import array
from pathlib import Path

import coordinator
from coordinator.client.steps import StepNumbering
from tests.client.helpers import open_store


def test_numbering_continues_after_the_welcome_last_steps_but_never_moves_a_key_already_logged() -> None:
    n = StepNumbering()
    own = array("q", [-1, -1])
    n("own", own)
    n.welcome({"a": 41, "own": 1000})
    a = array("q", [-1, -1, 7, -1])
    n("a", a)
    assert list(a) == [42, 43, 7, 8]  # an explicit step rewinds, the next automatic one follows it
    again = array("q", [-1])
    n("own", again)
    assert list(own) == [0, 1] and list(again) == [2]
    n.welcome({"a": 5000})  # a later WELCOME (a reconnect) does not move a key already numbered
    b = array("q", [-1])
    n("a", b)
    assert list(b) == [9] and n.welcomed.is_set()


def test_malformed_last_steps_are_ignored() -> None:
    n = StepNumbering()
    n.welcome({"a": "x", 3: 4, "b": -5, "c": 2})
    s = array("q", [-1])
    n("a", s)
    c = array("q", [-1])
    n("c", c)
    assert list(s) == [0] and list(c) == [3]


def test_a_resumed_run_continues_each_key_after_the_last_stored_step(store_dir: Path) -> None:
    """``init_run(with_id=...)`` again: append() without a step goes on after the stored history, which stays."""
    with coordinator.init_run(with_id="resume-me") as run:
        for i in range(5):
            run["a"].append(float(i))
        run.log({"b": 1.0}, step=10)
    with coordinator.init_run(with_id="resume-me") as run:
        for i in range(3):
            run["a"].append(float(100 + i))
        run.log({"b": 2.0})
        run.log({"c": 3.0})  # a new key starts at 0
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(i, float(i)) for i in range(5)] + [(5 + i, 100.0 + i) for i in range(3)]
        assert s.values("b", 0) == [(10, 1.0), (11, 2.0)]
        assert s.values("c", 0) == [(0, 3.0)]
        assert [st for st, _ in s.values("a")] == list(range(8))
    finally:
        s.close()
