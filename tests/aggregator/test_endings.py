"""How a run ends, a repeated step, resume steps in WELCOME, a restart from what is pending, stragglers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.health import MAX_STRAGGLER_EVENTS, Health, HealthFields
from coordinator.journal.store import MAIN_RANK
from coordinator.transport import wire
from tests.aggregator.helpers import batch, env, hello, make_cfg, reopen


def _bye(a: Aggregator, rank: int, inc: int = 1, **info: Any) -> None:
    a.bye(env(wire.BYE, rank, inc, 0), {"undelivered": 0, **info}, 1.0)


@pytest.mark.parametrize(
    ("endings", "state"),
    [
        ({0: {}, 1: {"ending": "clean"}}, "finished"),
        ({0: {"ending": "clean"}, 1: {"ending": "interrupted", "reason": "KeyboardInterrupt"}}, "interrupted"),
        (
            {0: {"ending": "interrupted", "reason": "SIGTERM"}, 1: {"ending": "failed", "reason": "ValueError: x"}},
            "failed",
        ),
        ({0: {"ending": "clean"}, 1: {"ending": "bogus"}}, "failed"),
    ],
)
def test_the_run_state_follows_the_ranks_endings_and_a_failure_wins(
    tmp_path: Path, endings: dict[int, dict[str, str]], state: str
) -> None:
    a = Aggregator(make_cfg(tmp_path))
    for r, info in endings.items():
        hello(a, r)
        _bye(a, r, **info)
    rep = a.finalize()
    assert rep["state"] == state
    s = reopen(tmp_path)
    try:
        assert s.run_info().state == state and s.fields()["sys/state"] == ("str", state)
    finally:
        s.close()
    if state == "failed":
        assert "1" in rep["failed_ranks"] and rep["reasons"]
    if endings[1].get("ending") == "failed":
        assert rep["failed_ranks"] == {"1": "ValueError: x"}
        assert rep["interrupted_ranks"] == {"0": "SIGTERM"}


def test_a_reason_is_redacted_and_bounded(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    _bye(a, 0, ending="failed", reason="cannot reach https://user:hunter2@host/x " + "y" * 10_000)
    rep = a.finalize()
    why = rep["failed_ranks"]["0"]
    assert "hunter2" not in why and len(why) <= 4096


def test_a_lost_rank_fails_the_run_and_is_named(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path, liveness_timeout_s=5.0))
    hello(a, 0)
    hello(a, 1)
    a.senders[(1, 1)].heard -= 10.0
    a.check_liveness(10.0)
    _bye(a, 0)
    rep = a.finalize()
    assert rep["state"] == "failed"
    assert rep["failed_ranks"]["1"].startswith("silent for")


def test_an_elastic_restart_that_recovered_is_finished_and_keeps_its_history(tmp_path: Path) -> None:
    """Incarnation 1 of rank 1 failed (and was lost); incarnation 2 closed cleanly: the run finished."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    hello(a, 1, inc=1)
    _bye(a, 1, inc=1, ending="failed", reason="RuntimeError: NCCL timeout")
    hello(a, 1, inc=2)
    _bye(a, 1, inc=2, ending="clean")
    _bye(a, 0, ending="clean")
    rep = a.finalize()
    assert rep["state"] == "finished" and rep["failed_ranks"] == {} and rep["reasons"] == []
    s = reopen(tmp_path)
    try:
        assert any("NCCL timeout" in e[3] for e in s.events() if e[1] == "rank_closed")
    finally:
        s.close()


def test_a_repeated_step_replaces_in_the_main_series_counts_once_and_warns_once_per_key(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    hello(a, 1)
    batch(a, 0, 1, metrics={"k": {0: 1.0}, "j": {0: 1.0}})
    batch(a, 0, 2, metrics={"k": {0: 3.0}})  # pending: replaces
    w = a.take_warnings(0, 1)
    assert len(w) == 1 and "'k'" in w[0]
    batch(a, 1, 1, metrics={"k": {0: 5.0, 1: 1.0}, "j": {0: 3.0}})
    batch(a, 0, 3, metrics={"k": {1: 1.0}})
    a.emit(1.0)
    assert a.last["k"] == (1, 1.0)
    batch(a, 0, 4, metrics={"k": {0: 7.0}})  # already emitted: re-emitted with the later value
    assert a.take_warnings(0, 1) == []  # once per key
    batch(a, 0, 5, metrics={"j": {0: 5.0}})
    assert len(a.take_warnings(0, 1)) == 1
    a.emit(1.0)
    a.commit()
    assert a.reducer.replaced_points == 3 and a.reducer.late_points == 0
    s = reopen(tmp_path)
    try:
        assert s.values("k", MAIN_RANK) == [(0, 6.0), (1, 1.0)]
        assert s.values("j", MAIN_RANK) == [(0, 4.0)]
    finally:
        s.close()
    assert a.counters["main_points"] == 3
    a.finalize()


def test_welcome_tells_a_new_incarnation_its_last_steps_also_after_a_restart(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path, world=1))
    assert "last_steps" not in hello(a, 0, inc=1)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0, 2: 1.0}, "j": {7: 1.0}})
    a.emit(1.0)
    w = hello(a, 0, inc=2)
    assert w["last_steps"] == {"k": 2, "j": 7}
    assert hello(a, 0, inc=2)["last_steps"] == {"k": 2, "j": 7}  # a resent HELLO gets it again
    batch(a, 0, 1, inc=2, metrics={"k": {3: 2.0}})  # continues at higher steps: nothing rewound
    a.emit(1.0)
    a.commit()
    assert a.counters["rewinds"] == 0
    a.close()
    b = Aggregator(make_cfg(tmp_path, world=1))
    assert hello(b, 0, inc=3)["last_steps"] == {"k": 3, "j": 7}
    b.finalize()


def test_a_restart_rebuilds_only_the_pending_groups(tmp_path: Path) -> None:
    """Emitted steps are not read back; pending ones are, and the main series continues correctly."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    hello(a, 1)
    batch(a, 0, 1, metrics={"k": {s: 1.0 for s in range(1000)}})
    batch(a, 1, 1, metrics={"k": {s: 3.0 for s in range(990)}})
    a.emit(1.0)
    a.commit()  # rank 0's next batch gets a chunk of its own (within one commit it would extend this one)
    batch(a, 0, 2, metrics={"k": {1000: 1.0}})
    a.emit(1.0)
    a.commit()
    a.close()
    b = Aggregator(make_cfg(tmp_path))
    main, chunks = b.store.restore_view("k")
    assert main == (989, 2.0)
    assert [c[6] is None for c in chunks] == [False, True, False]  # rank 1 (steps 0..989) is not read back
    assert sorted(b.reducer.keys["k"].pending) == list(range(990, 1001))
    assert b.reducer.keys["k"].maxstep == {0: 1000, 1: 989}
    assert b.last["k"] == (989, 2.0)
    hello(b, 1)
    batch(b, 1, 2, metrics={"k": {s: 3.0 for s in range(990, 1001)}})
    b.emit(1.0)
    b.commit()
    assert b.store.values("k", MAIN_RANK)[-1] == (1000, 2.0) and len(b.store.values("k", MAIN_RANK)) == 1001
    b.finalize()


def test_stragglers_have_hysteresis_and_a_capped_number_of_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Aggregator(make_cfg(tmp_path, straggler_lag_s=1.0))
    hf: HealthFields = a.health_fields
    h: Health = a.health
    lag = {"v": 0.0}

    def snapshot(now: float, ranks: set[int]) -> dict[int, dict[str, Any]]:
        on, off = lag["v"] > 1.0, lag["v"] < 0.5
        base = {"last_step": 0, "steps_per_s": 0.0, "lag_steps": 0}
        return {
            0: {**base, "lag_s": 0.0, "straggler": False, "clear": True},
            1: {**base, "lag_s": lag["v"], "straggler": on, "clear": off},
        }

    monkeypatch.setattr(h, "snapshot", snapshot)
    for i in range(200):
        lag["v"] = 1.1 if i % 2 else 0.9  # hovers around the threshold: one straggler spell
        hf.update(float(i), {0: "live", 1: "live"})
    assert hf.stragglers == {1} and hf.snapshot[1]["straggler"] and "clear" not in hf.snapshot[1]
    for i in range(200):
        lag["v"] = 1.1 if i % 2 else 0.1  # really flaps: events capped
        hf.update(float(i), {0: "live", 1: "live"})
    kinds = [e for e in a.outbox.txn.events if e[1] == "straggler"]
    assert len(kinds) == MAX_STRAGGLER_EVENTS and "not recorded" in kinds[-1][3]
    a.finalize()


def test_many_ranks_falling_behind_at_once_log_one_line_and_an_event_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = 40
    a = Aggregator(make_cfg(tmp_path, world=world, straggler_lag_s=1.0))
    hf: HealthFields = a.health_fields
    base = {"last_step": 0, "steps_per_s": 0.0, "lag_steps": 0}
    behind = {"n": 2}

    def snapshot(now: float, ranks: set[int]) -> dict[int, dict[str, Any]]:
        out = {}
        for r in range(world):
            late = 0 < r <= behind["n"]
            out[r] = {**base, "lag_s": 2.0 if late else 0.0, "straggler": late, "clear": not late}
        return out

    monkeypatch.setattr(a.health, "snapshot", snapshot)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        hf.update(1.0, dict.fromkeys(range(world), "live"))  # 2 new stragglers: a line each
        behind["n"] = world - 1
        hf.update(2.0, dict.fromkeys(range(world), "live"))  # 37 more: one line
    lines = [r.getMessage() for r in caplog.records if "straggler" in r.getMessage()]
    assert lines[:2] == [
        "rank 1 is a straggler: 2.000 s behind the fastest rank",
        "rank 2 is a straggler: 2.000 s behind the fastest rank",
    ]
    assert len(lines) == 3 and lines[2].startswith(f"{world - 3} ranks became stragglers")
    assert len([e for e in a.outbox.txn.events if e[1] == "straggler"]) == world - 1
    assert hf.stragglers == set(range(1, world))
    a.finalize()
