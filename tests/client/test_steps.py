"""Automatic step numbering, and its continuation when a rank resumes a run (issue 11, item 6)."""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import coordinator
from coordinator.client.steps import StepNumbering
from tests.client.helpers import open_store
from tests.core.test_numbering import sequential


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


def test_long_columns_are_numbered_as_the_rule_says_point_by_point() -> None:
    """Columns of 256 points or more are numbered with numpy; the result is the sequential rule's."""
    rng = random.Random(7)
    for trial in range(300):
        n = StepNumbering()
        before = rng.choice([-1, 3, 1000])  # where a resumed rank's key was (-1: never logged)
        n.welcome({"k": before})
        for _ in range(3):  # consecutive cuts of the key continue from each other
            size = rng.choice([1, 5, 255, 256, 257, 1000, 4096])
            p_auto = rng.choice([0.0, 0.3, 0.9, 1.0])
            steps = [-1 if rng.random() < p_auto else rng.randrange(0, 10_000) for _ in range(size)]
            col = array("q", steps)
            n("k", col)
            assert list(col) == sequential(steps, before), (trial, size, p_auto)
            before = col[-1]
            col.append(0)  # no view of the column is left behind: it can still grow


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


def test_a_frame_is_numbered_once_for_its_keys_only_where_they_share_a_last_step() -> None:
    """Its rows are each key's points, numbered as each key alone would be; keys that ended apart: refused untouched."""
    rng = random.Random(3)
    for trial in range(200):
        n = StepNumbering()
        n("a", array("q", [rng.choice([-1, 4])]))
        n("b", array("q", [rng.choice([-1, 4])]))
        before = {k: n.last(k) for k in "ab"}
        size = rng.choice([1, 3, 256, 1000])
        steps = [rng.choice([-1, -1, rng.randrange(10_000)]) for _ in range(size)]
        rows = array("q", steps)
        ok = n.frame(("a", "b"), rows)
        if before["a"] != before["b"] and -1 in steps:
            assert not ok and list(rows) == steps and {k: n.last(k) for k in "ab"} == before, trial
        else:
            assert ok and list(rows) == sequential(steps, before["a"]), trial
            assert n.last("a") == n.last("b") == rows[-1]
