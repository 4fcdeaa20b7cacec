"""The aggregator's ingest of text series: stored per rank, exactly once, a key numeric or text for the whole run."""

from __future__ import annotations

from array import array
from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.aggregator.queries import answer
from coordinator.errors import ProtocolError
from coordinator.transport import wire
from tests.aggregator.helpers import env, hello, make_cfg, reopen


def _texts(
    agg: Aggregator, rank: int, seq: int, texts: dict[str, dict[int, str]], *, metrics: dict[str, float] | None = None
) -> str:
    x = [(k, array("q", list(p)), list(p.values())) for k, p in texts.items()]
    m = [(k, array("q", [0]), array("d", [v])) for k, v in (metrics or {}).items()]
    return agg.batch(env(wire.BATCH, rank, 1, seq), wire.encode_batch(m, [], 1.0, x), 1.0)


def test_texts_of_two_ranks_are_stored_per_rank_exactly_once(agg: Aggregator, tmp_path: Path) -> None:
    hello(agg, 0)
    hello(agg, 1)
    assert _texts(agg, 0, 1, {"gen": {0: "a", 1: "b"}}) == "new"
    assert _texts(agg, 1, 1, {"gen": {0: "c"}}) == "new"
    agg.commit()
    assert _texts(agg, 0, 1, {"gen": {0: "a", 1: "b"}}) == "duplicate"  # a resend is not stored again
    agg.commit()
    assert agg.counters["texts"] == 3 and agg.counters["points"] == 3
    st = reopen(tmp_path)
    assert st.texts("gen", 0) == [(0, "a"), (1, "b")] and st.texts("gen", 1) == [(0, "c")]
    assert len(st.texts_after(0, 100)) == 3 and st.key_policies() == {}
    rep = answer(st, {"op": "values", "key": "gen", "rank": 1, "after": -1, "limit": 10})
    assert rep["texts"] == ["c"] and rep["next"] is None and len(rep["steps"]) == 8
    try:
        answer(st, {"op": "values", "key": "gen", "rank": -1, "after": -1, "limit": 10})
    except ProtocolError as e:
        assert e.code == "bad_query" and "per rank" in str(e)
    else:
        raise AssertionError("the main series of a text key must be refused")
    st.close()


def test_a_rank_mixing_kinds_is_refused_counted_and_told(agg: Aggregator, tmp_path: Path) -> None:
    hello(agg, 0)
    hello(agg, 1)
    _texts(agg, 0, 1, {"gen": {0: "text"}})
    _texts(agg, 1, 1, {}, metrics={"gen": 1.5})  # rank 1 sends numbers for a text key
    _texts(agg, 1, 2, {}, metrics={"gen": 2.5})
    agg.commit()
    assert agg.counters["kind_conflicts"] == 2
    warnings = agg.take_warnings(1, 1)
    assert len(warnings) == 1 and "text series" in warnings[0]
    st = reopen(tmp_path)
    assert [e[1] for e in st.events()].count("kind_conflict") == 1
    assert st.texts("gen", 0) == [(0, "text")] and st.values("gen", 1) == []
    st.close()


def test_a_restarted_aggregator_knows_text_keys_and_their_last_steps(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    _texts(a, 0, 1, {"gen": {4: "x"}})
    a.commit()
    a.close()
    b = Aggregator(make_cfg(tmp_path))
    assert "gen" in b.text_keys and b.registry.steps_of(0).snapshot()["gen"] == 4
    hello(b, 0, inc=1)
    _texts(b, 0, 2, {}, metrics={"gen": 1.0})
    assert b.counters["kind_conflicts"] == 1
    b.close()
