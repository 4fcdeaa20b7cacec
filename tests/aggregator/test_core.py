"""The in-process Aggregator core: handshake, exactly-once batches, fields, fencing, restart, report."""

from __future__ import annotations

import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregator.core import Aggregator, AggregatorConfig
from coordinator.core.values import FieldValue
from coordinator.errors import ProtocolError, SinkError
from coordinator.journal.store import MAIN_RANK, LocalStore
from coordinator.transport import wire

RUN = "run-1"


def make_cfg(tmp_path: Path, world: int = 2, **kw: Any) -> AggregatorConfig:
    """A config storing in tmp_path/run.db."""
    return AggregatorConfig(run_id=RUN, store_path=str(tmp_path / "run.db"), world_size=world, **kw)


def env(kind: int, rank: int, inc: int, seq: int, run: str = RUN) -> wire.Envelope:
    """An envelope exactly as the server decodes it from the wire."""
    return wire.decode_envelope(wire.encode_envelope(kind, run, rank, inc, seq))


def payload(
    metrics: dict[str, dict[int, float]] | None = None, fields: dict[str, FieldValue] | None = None, ts: float = 1.0
) -> bytes:
    """A batch payload: {key: {step: value}} metrics and {path: (tag, value)} fields."""
    cols = [(k, array("q", list(p)), array("d", list(p.values()))) for k, p in (metrics or {}).items()]
    return wire.encode_batch(cols, list((fields or {}).items()), ts)


def hello(agg: Aggregator, rank: int, inc: int = 1, now: float = 1.0) -> dict[str, Any]:
    """Say HELLO for (rank, inc)."""
    return agg.hello(env(wire.HELLO, rank, inc, 0), {"pid": 100 + rank, "host": "h"}, now)


def batch(agg: Aggregator, rank: int, seq: int, inc: int = 1, now: float = 1.0, **kw: Any) -> str:
    """Send batch ``seq`` of (rank, inc)."""
    return agg.batch(env(wire.BATCH, rank, inc, seq), payload(**kw), now)


def bye(agg: Aggregator, rank: int, inc: int = 1, now: float = 1.0, undelivered: int = 0) -> None:
    """Say BYE for (rank, inc)."""
    agg.bye(env(wire.BYE, rank, inc, 0), {"undelivered": undelivered}, now)


def reopen(tmp_path: Path) -> LocalStore:
    """A read-only view of the run's store."""
    return LocalStore(tmp_path / "run.db", readonly=True)


@pytest.fixture
def agg(tmp_path: Path) -> Aggregator:
    """A fresh aggregator for a 2-rank world."""
    return Aggregator(make_cfg(tmp_path))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw", [{"world_size": 0}, {"run_id": ""}, {"policies": {"x": "median"}}, {"default_policy": "avg"}]
)
def test_config_rejects_bad_values(tmp_path: Path, kw: dict[str, Any]) -> None:
    """A non-positive world, an empty run id or an unknown policy is a ValueError."""
    base: dict[str, Any] = {"run_id": RUN, "store_path": str(tmp_path / "run.db"), "world_size": 2}
    with pytest.raises(ValueError):
        AggregatorConfig(**{**base, **kw})


def test_new_aggregator_creates_run_and_sys_fields(tmp_path: Path) -> None:
    """Starting creates the run row and the sys/* fields in the first commit."""
    a = Aggregator(make_cfg(tmp_path, world=3, project="proj", name="nice"))
    a.commit()
    s = reopen(tmp_path)
    try:
        info = s.run_info()
        assert (info.id, info.project, info.name, info.world_size, info.state) == (RUN, "proj", "nice", 3, "running")
        f = s.fields()
        assert f["sys/id"] == ("str", RUN) and f["sys/world_size"] == ("int", 3)
        assert f["sys/state"] == ("str", "running") and f["sys/creation_time"][0] == "datetime"
    finally:
        s.close()


# ----------------------------------------------------------------------------- handshake and batches


def test_hello_returns_high_water_mark_and_protocol(agg: Aggregator) -> None:
    """WELCOME carries last_seq 0 for a new sender, the run id and the protocol."""
    assert hello(agg, 0) == {"last_seq": 0, "run_id": RUN, "protocol": wire.PROTOCOL}


@pytest.mark.parametrize(("run", "rank", "code"), [("other-run", 0, "wrong_run"), (RUN, 2, "bad_rank")])
def test_hello_refuses_wrong_run_or_rank_outside_world(agg: Aggregator, run: str, rank: int, code: str) -> None:
    """A HELLO for another run or a rank >= world size is refused with its code."""
    with pytest.raises(ProtocolError) as ei:
        agg.hello(env(wire.HELLO, rank, 1, 0, run=run), {}, 1.0)
    assert ei.value.code == code
    assert agg.senders == {}


def test_batches_are_ingested_once_and_duplicates_dropped(agg: Aggregator, tmp_path: Path) -> None:
    """seq 1, 2 are new; a resent seq 1 is a duplicate that stores nothing."""
    hello(agg, 0)
    assert batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}}) == "new"
    assert batch(agg, 0, 2, metrics={"loss": {2: 3.0}}) == "new"
    assert batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}}) == "duplicate"
    agg.commit()
    assert batch(agg, 0, 2, metrics={"loss": {2: 3.0}}) == "duplicate"
    agg.commit()
    assert agg.counters["duplicate_batches"] == 2
    assert (agg.counters["batches"], agg.counters["points"]) == (2, 3)
    s = reopen(tmp_path)
    try:
        assert s.values("loss", 0) == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert s.high_water_marks() == {(0, 1): 2}
        assert s.key_policies() == {"loss": "mean"}
    finally:
        s.close()


def test_sequence_gap_is_refused_and_nothing_ingested(agg: Aggregator) -> None:
    """seq 5 after 2 raises code 'gap'; the sender stays at 2 and seq 3 is still accepted."""
    hello(agg, 0)
    batch(agg, 0, 1, metrics={"k": {0: 1.0}})
    batch(agg, 0, 2, metrics={"k": {1: 1.0}})
    with pytest.raises(ProtocolError) as ei:
        batch(agg, 0, 5, metrics={"k": {9: 9.0}})
    assert ei.value.code == "gap" and "expected 3" in str(ei.value)
    assert agg.counters["gaps"] == 1 and agg.counters["points"] == 2
    assert agg.senders[(0, 1)].last_seq == 2
    assert batch(agg, 0, 3, metrics={"k": {2: 1.0}}) == "new"


@pytest.mark.parametrize(("run", "code"), [(RUN, "hello"), ("other-run", "wrong_run")])
def test_batch_before_hello_is_refused(agg: Aggregator, run: str, code: str) -> None:
    """A batch from a sender that never said HELLO gets code 'hello'; one for another run 'wrong_run'."""
    if run != RUN:
        hello(agg, 0)
    with pytest.raises(ProtocolError) as ei:
        agg.batch(env(wire.BATCH, 0, 1, 1, run=run), payload(metrics={"k": {0: 1.0}}), 1.0)
    assert ei.value.code == code
    assert agg.counters["points"] == 0 and agg.txn.chunks == []


def test_bad_payload_is_refused_and_the_seq_can_be_resent(agg: Aggregator) -> None:
    """A malformed payload raises ProtocolError, is counted, and does not advance the sender."""
    hello(agg, 0)
    with pytest.raises(ProtocolError):
        agg.batch(env(wire.BATCH, 0, 1, 1), b"\xc1garbage", 1.0)
    assert agg.counters["bad_frames"] == 1 and agg.senders[(0, 1)].last_seq == 0
    assert batch(agg, 0, 1, metrics={"k": {0: 1.0}}) == "new"


def test_main_series_is_reduced_and_committed(agg: Aggregator, tmp_path: Path) -> None:
    """Points of both ranks are reduced into the main series with contributor counts."""
    hello(agg, 0)
    hello(agg, 1)
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})
    agg.emit(1.0)
    assert agg.counters["main_points"] == 0
    batch(agg, 1, 1, metrics={"loss": {0: 3.0, 1: 6.0}})
    agg.emit(1.0)
    agg.commit()
    assert agg.counters["main_points"] == 2
    assert agg.last["loss"] == (1, 4.0)
    assert agg.state()["last"] == {"loss": [1, 4.0]}
    assert agg.query({"op": "values", "key": "loss"}) == {"steps": [0, 1], "values": [2.0, 4.0]}
    assert agg.query({"op": "values", "key": "loss", "rank": 1}) == {"steps": [0, 1], "values": [3.0, 6.0]}
    s = reopen(tmp_path)
    try:
        assert s.values("loss", MAIN_RANK) == [(0, 2.0), (1, 4.0)]
        assert s.contributors("loss") == [(0, 2), (1, 2)]
    finally:
        s.close()


@pytest.mark.parametrize("q", [{"op": "drop"}, {}, {"op": "values"}, {"op": "values", "key": "k", "rank": "0"}])
def test_bad_query_is_refused(agg: Aggregator, q: dict[str, Any]) -> None:
    """Unknown ops and ill-typed arguments are code 'bad_query'."""
    with pytest.raises(ProtocolError) as ei:
        agg.query(q)
    assert ei.value.code == "bad_query"


def test_policies_are_recorded_per_key(tmp_path: Path) -> None:
    """Each new key is stored with the policy its glob selects."""
    a = Aggregator(make_cfg(tmp_path, world=1, policies={"acc/*": "max"}, default_policy="sum"))
    hello(a, 0)
    batch(a, 0, 1, metrics={"acc/top1": {0: 0.5}, "n": {0: 2.0}})
    a.emit(1.0)
    a.commit()
    assert a.store.key_policies() == {"acc/top1": "max", "n": "sum"}


# ----------------------------------------------------------------------------- fields


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


# ----------------------------------------------------------------------------- incarnations


def test_new_incarnation_fences_the_old_one(agg: Aggregator, tmp_path: Path) -> None:
    """After a new incarnation's HELLO, the old one's batches, HELLO and BYE are code 'fenced'."""
    hello(agg, 0, inc=1)
    batch(agg, 0, 1, inc=1, metrics={"k": {0: 1.0}})
    assert hello(agg, 0, inc=2)["last_seq"] == 0
    for call in (
        lambda: batch(agg, 0, 2, inc=1, metrics={"k": {1: 1.0}}),
        lambda: hello(agg, 0, inc=1),
        lambda: bye(agg, 0, inc=1),
    ):
        with pytest.raises(ProtocolError) as ei:
            call()
        assert ei.value.code == "fenced"
    assert agg.counters["fenced_batches"] == 2  # the batch and the bye
    assert batch(agg, 0, 1, inc=2, metrics={"k": {1: 2.0}}) == "new"
    agg.commit()
    states = {(s["rank"], s["incarnation"]): s["state"] for s in agg.store.senders()}
    assert states == {(0, 1): "fenced", (0, 2): "live"}
    assert agg.store.values("k", 0) == [(0, 1.0), (1, 2.0)]
    assert [e[1] for e in agg.store.events()].count("rank_restarted") == 1


def test_new_incarnation_fences_an_old_one_that_was_lost(tmp_path: Path) -> None:
    """A lost incarnation that comes back after its replacement said HELLO is fenced too."""
    a = Aggregator(make_cfg(tmp_path, world=1, liveness_timeout_s=5.0))
    hello(a, 0, inc=1, now=0.0)
    batch(a, 0, 1, inc=1, now=0.0, metrics={"k": {0: 1.0}})
    a.check_liveness(10.0)
    assert a.rank_state[0] == "lost"
    hello(a, 0, inc=2, now=11.0)
    with pytest.raises(ProtocolError) as ei:
        batch(a, 0, 2, inc=1, now=12.0, metrics={"k": {1: 99.0}})
    assert ei.value.code == "fenced"
    a.touch(env(wire.PING, 0, 1, 0), 12.0)
    assert a.rank_state[0] == "live" and a.current[0] == 2


def test_liveness_marks_silent_ranks_lost_and_heartbeats_revive(agg: Aggregator) -> None:
    """A rank silent past liveness_timeout_s is lost (reducer stops waiting); a ping revives it."""
    hello(agg, 0, now=0.0)
    hello(agg, 1, now=0.0)
    batch(agg, 0, 1, now=0.0, metrics={"k": {0: 1.0}})
    batch(agg, 1, 1, now=0.0, metrics={"k": {0: 3.0}})
    batch(agg, 0, 2, now=20.0, metrics={"k": {1: 5.0}})
    agg.check_liveness(25.0)
    assert agg.rank_state == {0: "live", 1: "live"}
    agg.check_liveness(31.0)
    assert agg.rank_state == {0: "live", 1: "lost"}
    agg.emit(31.0)
    assert agg.last["k"] == (1, 5.0)
    agg.touch(env(wire.PING, 1, 1, 0), 32.0)
    assert agg.rank_state[1] == "live"
    agg.commit()
    assert ("rank_lost", 1) in [(e[1], e[2]) for e in agg.store.events()]


# ----------------------------------------------------------------------------- restart


def _crash(a: Aggregator) -> None:
    """Simulate an aggregator crash after its last commit: drop it without finalize."""
    a.store.close()


def test_restart_restores_high_water_marks(tmp_path: Path) -> None:
    """A second Aggregator on the same store treats resent batches as duplicates."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    batch(a, 0, 2, metrics={"k": {1: 2.0}})
    a.commit()
    batch(a, 0, 3, metrics={"k": {2: 3.0}})  # never committed: lost in the crash
    _crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    assert batch(b, 0, 1, metrics={"k": {0: 1.0}}) == "duplicate"  # known sender, even before HELLO
    assert hello(b, 0)["last_seq"] == 2
    assert batch(b, 0, 2, metrics={"k": {1: 2.0}}) == "duplicate"
    assert batch(b, 0, 3, metrics={"k": {2: 3.0}}) == "new"
    b.commit()
    assert b.store.values("k", 0) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert b.store.run_info().state == "running"


def test_restart_keeps_the_run_creation_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sys/creation_time stays the run's creation time (the run row's) across a restart."""
    a = Aggregator(make_cfg(tmp_path))
    a.commit()
    created = a.store.run_info().created
    assert a.store.fields()["sys/creation_time"] == ("datetime", created)
    _crash(a)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60.0)  # the restart happens a minute later
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    b.commit()
    assert b.store.run_info().created == created
    assert b.store.fields()["sys/creation_time"] == ("datetime", created)


def test_restart_keeps_fenced_incarnations_fenced(tmp_path: Path) -> None:
    """An incarnation fenced before a restart is still refused after it."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0, inc=1)
    hello(a, 0, inc=2)
    a.commit()
    _crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    with pytest.raises(ProtocolError) as ei:
        hello(b, 0, inc=1)
    assert ei.value.code == "fenced"


def test_restart_keeps_which_rank_wrote_each_field(tmp_path: Path) -> None:
    """After a restart a rank may still update its own field and a lower rank still wins over it."""
    a = Aggregator(make_cfg(tmp_path, world=3))
    hello(a, 2)
    batch(a, 2, 1, fields={"p": ("int", 1), "q": ("int", 1)})
    a.commit()
    _crash(a)
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


def test_restart_keeps_ranks_that_already_closed(tmp_path: Path) -> None:
    """A rank that said BYE before a restart is not reported as never connected afterwards."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 1)
    batch(a, 1, 1, metrics={"k": {0: 1.0}})
    bye(a, 1)
    a.commit()
    _crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    hello(b, 0)
    batch(b, 0, 1, metrics={"k": {0: 3.0}})
    bye(b, 0)
    assert b.finished(2.0)
    rep = b.finalize()
    assert rep["state"] == "finished", rep["reasons"]
    assert rep["ranks_never_seen"] == []
    assert rep["per_rank"]["1"]["state"] == "closed"


def test_restart_does_not_lose_points_waiting_for_other_ranks(tmp_path: Path) -> None:
    """A rank's committed point whose group was still open at the crash still counts in the main series."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    a.emit(1.0)
    a.commit()
    _crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    hello(b, 1)
    batch(b, 1, 1, metrics={"k": {0: 3.0}})
    b.finalize()
    s = reopen(tmp_path)
    try:
        assert s.values("k", 0) == [(0, 1.0)] and s.values("k", 1) == [(0, 3.0)]
        assert s.values("k") == [(0, 2.0)]
        assert s.contributors("k") == [(0, 2)]
    finally:
        s.close()


def test_restart_report_counts_the_whole_run(tmp_path: Path) -> None:
    """The final report of a restarted aggregator counts points and batches from before the restart."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0, 1: 1.0}})
    a.commit()
    _crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path, world=1))
    hello(b, 0)
    batch(b, 0, 2, metrics={"k": {2: 1.0}})
    bye(b, 0)
    rep = b.finalize()
    assert rep["per_rank"]["0"]["points"] == 3 and rep["per_rank"]["0"]["batches"] == 2
    assert (rep["points"], rep["batches"]) == (3, 2)


# ----------------------------------------------------------------------------- finalize and report


def test_commit_failure_keeps_the_transaction_for_a_retry(agg: Aggregator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SinkError from the store leaves the open transaction intact; the retry stores it once."""
    hello(agg, 0)
    batch(agg, 0, 1, metrics={"k": {0: 1.0}})
    real = agg.store.commit
    calls = []

    def failing(data: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SinkError("disk full")
        real(data)

    monkeypatch.setattr(agg.store, "commit", failing)
    pending = agg.txn
    with pytest.raises(SinkError):
        agg.commit()
    assert agg.txn is pending and not pending.empty()
    assert batch(agg, 0, 1, metrics={"k": {0: 1.0}}) == "duplicate"
    agg.commit()
    assert agg.txn.empty()
    assert real.__self__.values("k", 0) == [(0, 1.0)]


def test_finalize_reports_finished_when_every_rank_said_bye(agg: Aggregator, tmp_path: Path) -> None:
    """All ranks closed: state 'finished', counts per rank, report and sys/state stored."""
    hello(agg, 0)
    hello(agg, 1)
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})
    batch(agg, 0, 2, metrics={"loss": {2: 3.0}})
    batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}})  # duplicate
    batch(agg, 1, 1, metrics={"loss": {0: 3.0, 1: 4.0, 2: 5.0}, "acc": {0: 0.5}})
    bye(agg, 0, now=2.0)
    assert not agg.finished(2.0)
    bye(agg, 1, now=2.0)
    assert agg.finished(2.0)
    rep = agg.finalize()
    assert rep["state"] == "finished" and rep["reasons"] == []
    assert (rep["points"], rep["batches"], rep["duplicate_batches"]) == (7, 3, 1)
    assert rep["main_points"] == 4
    assert rep["ranks_seen"] == [0, 1] and rep["ranks_never_seen"] == [] and rep["world_size"] == 2
    assert rep["per_rank"] == {
        "0": {"points": 3, "batches": 2, "undelivered": 0, "incarnations": 1, "state": "closed"},
        "1": {"points": 4, "batches": 1, "undelivered": 0, "incarnations": 1, "state": "closed"},
    }
    s = reopen(tmp_path)
    try:
        info = s.run_info()
        assert info.state == "finished" and info.ended is not None
        assert info.report == rep
        assert s.fields()["sys/state"] == ("str", "finished")
        assert s.values("loss") == [(0, 2.0), (1, 3.0), (2, 4.0)]
        assert s.values("acc") == [(0, 0.5)]
        assert [e[1] for e in s.events()].count("rank_closed") == 2
    finally:
        s.close()


def test_finalize_reports_failed_with_reasons(tmp_path: Path) -> None:
    """Ranks never seen, not closed, or closed with undelivered points make the run 'failed'."""
    a = Aggregator(make_cfg(tmp_path, world=4))
    hello(a, 0)
    hello(a, 1)
    hello(a, 2)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    bye(a, 0, undelivered=7)
    bye(a, 2)
    rep = a.finalize("stopped by a signal")
    assert rep["state"] == "failed"
    assert rep["reasons"] == [
        "rank 0 closed with 7 points undelivered",
        "stopped by a signal",
        "rank 1 did not close (last state: live)",
        "rank 3 never connected",
    ]
    assert rep["ranks_never_seen"] == [3]
    assert rep["per_rank"]["0"]["undelivered"] == 7
    assert rep["per_rank"]["1"]["state"] == "live"
    s = reopen(tmp_path)
    try:
        assert s.run_info().state == "failed" and s.run_info().report == rep
        assert s.fields()["sys/state"] == ("str", "failed")
    finally:
        s.close()


def test_finished_waits_for_rank0_and_for_late_joiners(tmp_path: Path) -> None:
    """finished() needs rank 0's bye; ranks that never came are waited for stop_grace_s."""
    a = Aggregator(make_cfg(tmp_path, world=3, stop_grace_s=5.0))
    hello(a, 0)
    hello(a, 1)
    bye(a, 1, now=1.0)
    assert not a.finished(100.0)  # rank 0 has not closed
    bye(a, 0, now=10.0)
    assert not a.finished(14.0)  # rank 2 may still join
    assert a.finished(15.0)
    a.finalize()


def test_parent_lost_closes_rank0_and_fails_the_run(agg: Aggregator) -> None:
    """Rank 0's process dying counts as rank 0 gone and is a failure reason."""
    hello(agg, 0)
    hello(agg, 1)
    bye(agg, 1)
    agg.parent_lost(5.0)
    assert agg.rank_state[0] == "lost" and agg.finished(5.0)
    rep = agg.finalize()
    assert rep["state"] == "failed"
    assert "rank 0's process died before closing the run" in rep["reasons"]
