"""Fields: equal writes stored once, conflicts keep the lowest rank and are recorded, sys/* protected."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from tests.aggregator.helpers import batch, crash, hello, make_cfg, reopen


def test_equal_field_writes_from_two_ranks_are_stored_once(agg: Aggregator, tmp_path: Path) -> None:
    """The same value from rank 0 and rank 1 is one field write and no conflict."""
    hello(agg, 0)
    hello(agg, 1)
    n_before = len(agg.txn.fields)
    batch(agg, 1, 1, fields={"cfg/lr": ("float", 0.1), "cfg/tags": ("list", ["a", 1])})
    batch(agg, 0, 1, fields={"cfg/lr": ("float", 0.1), "cfg/tags": ("list", ["a", 1])})
    assert [p for p, *_ in agg.txn.fields[n_before:]] == ["cfg/lr", "cfg/tags"]
    agg.commit()
    assert agg.counters["conflicts"] == 0
    s = reopen(tmp_path)
    try:
        assert s.fields()["cfg/lr"] == ("float", 0.1)
        assert s.fields()["cfg/tags"] == ("list", ["a", 1])
        assert s.conflicts() == []
    finally:
        s.close()


def test_conflicting_field_writes_keep_the_lowest_rank(tmp_path: Path) -> None:
    """Different values: the lowest rank's value is kept and every losing write is recorded."""
    a = Aggregator(make_cfg(tmp_path, world=3))
    for r in range(3):
        hello(a, r)
    batch(a, 1, 1, fields={"p": ("int", 1)})
    batch(a, 0, 1, fields={"p": ("int", 0)})  # lower rank overrides
    batch(a, 2, 1, fields={"p": ("int", 2)})  # higher rank is rejected
    batch(a, 1, 2, fields={"p": ("int", 11)})  # rank 1 again: still loses to rank 0
    a.commit()
    assert a.state()["fields"]["p"] == ["int", 0]
    assert a.counters["conflicts"] == 3
    assert [(c["path"], c["rank"], c["value"], c["kept_rank"]) for c in a.store.conflicts()] == [
        ("p", 1, 1, 0),
        ("p", 2, 2, 0),
        ("p", 1, 11, 0),
    ]
    assert a.store.fields()["p"] == ("int", 0)
    assert len(a.take_warnings(2, 1)) == 1
    assert len(a.take_warnings(1, 1)) == 2
    assert a.take_warnings(1, 1) == []
    assert a.take_warnings(0, 1) == []


def test_same_rank_may_overwrite_its_own_field(agg: Aggregator) -> None:
    """A rank changing its own field is an update, not a conflict."""
    hello(agg, 1)
    batch(agg, 1, 1, fields={"p": ("str", "a")})
    batch(agg, 1, 2, fields={"p": ("str", "b")})
    agg.commit()
    assert agg.store.fields()["p"] == ("str", "b") and agg.counters["conflicts"] == 0


def test_ranks_cannot_overwrite_sys_fields(agg: Aggregator) -> None:
    """sys/* fields belong to the aggregator; a rank's write is a recorded conflict."""
    hello(agg, 0)
    batch(agg, 0, 1, fields={"sys/state": ("str", "hacked")})
    agg.commit()
    assert agg.store.fields()["sys/state"] == ("str", "running")
    assert [(c["rank"], c["kept_rank"]) for c in agg.store.conflicts()] == [(0, -1)]


def test_restart_keeps_which_rank_wrote_each_field(tmp_path: Path) -> None:
    """After a restart a rank may still update its own field and a lower rank still wins over it."""
    a = Aggregator(make_cfg(tmp_path, world=3))
    hello(a, 2)
    batch(a, 2, 1, fields={"p": ("int", 1), "q": ("int", 1)})
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path, world=3))
    hello(b, 2)
    hello(b, 1)
    batch(b, 2, 2, fields={"p": ("int", 2)})  # rank 2 updates its own field
    batch(b, 1, 1, fields={"q": ("int", 5)})  # rank 1 outranks rank 2
    b.commit()
    assert b.store.fields()["p"] == ("int", 2)
    assert b.store.fields()["q"] == ("int", 5)
    assert [(c["path"], c["rank"], c["kept_rank"]) for c in b.store.conflicts()] == [("q", 2, 1)]
