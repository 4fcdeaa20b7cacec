"""The SQLite run store: atomic commits, reads in step order, run info, read-only access."""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.errors import SinkError
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from tests.untyped import bad


def q(*v: int) -> array[int]:
    """An int64 array."""
    return array("q", v)


def d(*v: float) -> array[float]:
    """A float64 array."""
    return array("d", v)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    """A fresh writable store with its run row."""
    s = LocalStore(tmp_path / "runs" / "r1" / "run.db")
    s.create_run("r1", "proj", "first run", 2, 1000.0)
    yield s
    s.close()


def full_txn() -> TxnData:
    """A transaction touching every table."""
    return TxnData(
        chunks=[
            ChunkRow("loss", 0, 11, 1, 5.0, q(0, 1, 2), d(1.0, 0.9, 0.8)),
            ChunkRow("loss", 1, 22, 1, 5.0, q(0, 1), d(2.0, 1.9)),
            ChunkRow("loss", MAIN_RANK, 0, 0, 5.0, q(0, 1), d(1.5, 1.4), array("i", [2, 2])),
            ChunkRow("acc", 1, 22, 1, 5.0, q(3), d(0.5)),
        ],
        fields=[
            ("cfg/lr", ("float", 0.1), 0, 5.0),
            ("cfg/name", ("str", "adam"), 0, 5.0),
            ("cfg/flag", ("bool", True), 1, 5.0),
            ("cfg/n", ("int", -(2**63)), 1, 5.0),
            ("cfg/when", ("datetime", 1.7e9), 0, 5.0),
            ("cfg/l", ("list", [1, 2.5, "x", False]), 0, 5.0),
        ],
        conflicts=[("cfg/lr", 1, ("float", 0.2), 0, 6.0)],
        senders={
            (0, 11): (1, 3, 1, 4.0, 5.0, "live", 123, "host-a"),
            (1, 22): (1, 3, 1, 4.5, 5.0, "live", None, None),
        },
        events=[(4.0, "rank_joined", 0, "incarnation 11"), (4.5, "rank_joined", 1, "incarnation 22")],
        key_policies={"loss": "mean", "acc": "max"},
    )


# ----------------------------------------------------------------------------- writing and reading


def test_commit_writes_every_table_and_reads_back(store: LocalStore) -> None:
    """One TxnData lands in chunks, fields, conflicts, senders, events and keys."""
    store.commit(full_txn())
    assert store.key_policies() == {"acc": "max", "loss": "mean"}
    assert store.values("loss", 0) == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert store.values("loss", 1) == [(0, 2.0), (1, 1.9)]
    assert store.values("loss") == [(0, 1.5), (1, 1.4)]
    assert store.values("acc", 1) == [(3, 0.5)]
    assert store.values("acc") == []
    assert store.values("acc", 0) == []
    assert store.values("nope") == []
    assert store.fields() == {
        "cfg/flag": ("bool", True),
        "cfg/l": ("list", [1, 2.5, "x", False]),
        "cfg/lr": ("float", 0.1),
        "cfg/n": ("int", -(2**63)),
        "cfg/name": ("str", "adam"),
        "cfg/when": ("datetime", 1.7e9),
    }
    assert store.conflicts() == [
        {"path": "cfg/lr", "rank": 1, "type": "float", "value": 0.2, "kept_rank": 0, "ts": 6.0}
    ]
    assert store.senders() == [
        {
            "rank": 0,
            "incarnation": 11,
            "last_seq": 1,
            "points": 3,
            "batches": 1,
            "first_seen": 4.0,
            "last_seen": 5.0,
            "state": "live",
            "pid": 123,
            "host": "host-a",
        },
        {
            "rank": 1,
            "incarnation": 22,
            "last_seq": 1,
            "points": 3,
            "batches": 1,
            "first_seen": 4.5,
            "last_seen": 5.0,
            "state": "live",
            "pid": None,
            "host": None,
        },
    ]
    assert store.events() == [(4.0, "rank_joined", 0, "incarnation 11"), (4.5, "rank_joined", 1, "incarnation 22")]
    assert store.high_water_marks() == {(0, 11): 1, (1, 22): 1}


def test_empty_txn_is_a_no_op(store: LocalStore) -> None:
    """Committing an empty TxnData writes nothing and does not fail."""
    assert TxnData().empty()
    store.commit(TxnData())
    assert store.key_policies() == {} and store.events() == [] and store.senders() == []


def test_values_are_in_step_order_across_chunks(store: LocalStore) -> None:
    """Chunks committed out of step order read back sorted by step, main and per rank."""
    store.commit(
        TxnData(
            chunks=[
                ChunkRow("k", 0, 1, 1, 1.0, q(10, 11), d(10.0, 11.0)),
                ChunkRow("k", MAIN_RANK, 0, 0, 1.0, q(7, 9), d(7.5, 9.5), array("i", [1, 2])),
            ],
            key_policies={"k": "mean"},
        )
    )
    store.commit(
        TxnData(
            chunks=[
                ChunkRow("k", 0, 1, 2, 2.0, q(0, 5), d(0.0, 5.0)),
                ChunkRow("k", MAIN_RANK, 0, 0, 2.0, q(1, 8), d(1.5, 8.5), array("i", [2, 1])),
            ]
        )
    )
    assert store.values("k", 0) == [(0, 0.0), (5, 5.0), (10, 10.0), (11, 11.0)]
    assert store.values("k", MAIN_RANK) == [(1, 1.5), (7, 7.5), (8, 8.5), (9, 9.5)]
    assert store.contributors("k") == [(1, 2), (7, 1), (8, 1), (9, 2)]


def test_a_step_logged_twice_by_one_incarnation_keeps_its_latest_value(store: LocalStore) -> None:
    """Item 14: within one incarnation a repeated step is replaced by its later value (as in the main series)."""
    store.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 1, 1.0, q(3, 1), d(30.0, 10.0))], key_policies={"k": "mean"}))
    store.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 2, 1.0, q(1, 3, 3), d(11.0, 31.0, 32.0))]))
    assert store.values("k", 0) == [(1, 11.0), (3, 32.0)]
    assert store.series_stats("k", 0).points == 2
    assert {x["key"]: x["per_rank"] for x in store.series_summary()} == {"k": {0: 2}}


def test_contributors_default_to_one_without_counts(store: LocalStore) -> None:
    """A main-series chunk stored without counts reports one contributor per point."""
    store.commit(TxnData(chunks=[ChunkRow("k", MAIN_RANK, 0, 0, 1.0, q(2, 1), d(2.0, 1.0))], key_policies={"k": "sum"}))
    assert store.contributors("k") == [(1, 1), (2, 1)]


def test_series_summary_counts_points_per_rank_and_last_main_value(store: LocalStore) -> None:
    """series_summary reports policy, main points, last main (step, value) and per-rank counts."""
    store.commit(full_txn())
    none = {"first": None, "last": None, "min": None, "max": None}
    assert store.series_summary() == [
        {"key": "acc", "policy": "max", "points": 0, **none, "per_rank": {1: 1}},
        {
            "key": "loss",
            "policy": "mean",
            "points": 2,
            "first": (0, 1.5),
            "last": (1, 1.4),
            "min": 1.4,
            "max": 1.5,
            "per_rank": {0: 3, 1: 2},
        },
    ]


def test_key_ids_persist_across_commits_and_reopen(store: LocalStore) -> None:
    """A key created in one commit is reused by later commits and by a reopened store."""
    store.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 1, 1.0, q(0), d(0.0))], key_policies={"k": "min"}))
    store.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 2, 1.0, q(1), d(1.0))], key_policies={"k": "min"}))
    path = store.path
    store.close()
    s2 = LocalStore(path)
    try:
        s2.commit(TxnData(chunks=[ChunkRow("k", 0, 1, 3, 1.0, q(2), d(2.0))]))
        assert s2.key_policies() == {"k": "min"}
        assert s2.values("k", 0) == [(0, 0.0), (1, 1.0), (2, 2.0)]
    finally:
        s2.close()


def test_fields_upsert_keeps_the_latest_write(store: LocalStore) -> None:
    """A later write of the same path replaces the value, type and rank."""
    store.commit(TxnData(fields=[("p", ("int", 1), 0, 1.0)]))
    store.commit(TxnData(fields=[("p", ("str", "two"), 1, 2.0)]))
    assert store.fields() == {"p": ("str", "two")}


def test_senders_upsert_moves_the_high_water_mark(store: LocalStore) -> None:
    """Re-committing a sender replaces its row, so the high-water mark only reflects the latest."""
    store.commit(TxnData(senders={(3, 7): (1, 10, 1, 1.0, 1.0, "live", None, None)}))
    store.commit(
        TxnData(
            senders={(3, 7): (4, 40, 4, 1.0, 2.0, "closed", None, None), (3, 8): (2, 5, 2, 3.0, 3.0, "live", 9, "h")}
        )
    )
    assert store.high_water_marks() == {(3, 7): 4, (3, 8): 2}
    assert [s["state"] for s in store.senders()] == ["closed", "live"]


def test_sql_metacharacters_in_names_are_stored_verbatim(store: LocalStore) -> None:
    """Keys and paths with quotes and SQL are parameters, not SQL."""
    key = "x'); DROP TABLE chunks;--"
    store.commit(
        TxnData(
            chunks=[ChunkRow(key, 0, 1, 1, 1.0, q(1), d(1.0))],
            key_policies={key: "mean"},
            fields=[('a"b', ("str", "'; DELETE FROM fields;--"), 0, 1.0)],
        )
    )
    assert store.values(key, 0) == [(1, 1.0)]
    assert store.fields() == {'a"b': ("str", "'; DELETE FROM fields;--")}


# ----------------------------------------------------------------------------- run row


def test_run_info_and_finish_run_round_trip(store: LocalStore) -> None:
    """run_info reflects create_run; finish_run records state, end time and the JSON report."""
    info = store.run_info()
    assert (info.id, info.project, info.name, info.created, info.ended, info.state, info.world_size, info.report) == (
        "r1",
        "proj",
        "first run",
        1000.0,
        None,
        "running",
        2,
        None,
    )
    assert info.path == store.path.parent
    report = {"points": 5, "per_rank": {"0": {"points": 5}}, "reasons": ["x"], "nested": [1, 2.5, None]}
    store.finish_run("failed", report, ended=1234.5)
    info = store.run_info()
    assert (info.state, info.ended, info.report) == ("failed", 1234.5, report)


def test_create_run_again_keeps_creation_and_reopens(store: LocalStore) -> None:
    """A restarted aggregator's create_run keeps the original row but marks it running again."""
    store.finish_run("finished", {"a": 1}, ended=2000.0)
    store.create_run("r1", "other", "other name", 8, 3000.0)
    info = store.run_info()
    assert (info.project, info.name, info.created, info.world_size) == ("proj", "first run", 1000.0, 2)
    assert (info.state, info.ended) == ("running", None)


def test_run_info_without_run_row_raises_sink_error(tmp_path: Path) -> None:
    """A store without a run row raises SinkError on run_info."""
    s = LocalStore(tmp_path / "run.db")
    try:
        with pytest.raises(SinkError):
            s.run_info()
    finally:
        s.close()


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "bad",
    [
        TxnData(chunks=[ChunkRow("bad", 0, 1, 1, bad(None), q(1), d(1.0))], key_policies={"bad": "mean"}),
        TxnData(fields=[("bad", bad((None, 1)), 0, 1.0)]),
        TxnData(events=[(1.0, bad(None), 0, "x")]),
        TxnData(senders={(0, 1): (1, 1, 1, 1.0, 1.0, bad(None), None, None)}),
        TxnData(conflicts=[("bad", 0, ("int", 1), bad(None), 1.0)]),
    ],
    ids=["chunk-ts", "field-type", "event-kind", "sender-state", "conflict-kept-rank"],
)
def test_failed_commit_raises_sink_error_and_stores_nothing(store: LocalStore, bad: TxnData) -> None:
    """A NOT NULL violation anywhere rolls back the whole transaction, new keys included."""
    good = full_txn()
    txn = TxnData(
        chunks=good.chunks + bad.chunks,
        fields=good.fields + bad.fields,
        conflicts=good.conflicts + bad.conflicts,
        senders={**good.senders, **bad.senders},
        events=good.events + bad.events,
        key_policies={**good.key_policies, **bad.key_policies},
    )
    with pytest.raises(SinkError, match="commit failed"):
        store.commit(txn)
    assert store.key_policies() == {}
    assert store.values("loss", 0) == [] and store.values("loss") == []
    assert store.fields() == {} and store.conflicts() == []
    assert store.senders() == [] and store.events() == []
    assert store.high_water_marks() == {}
    # The store is still usable and the rolled-back keys are created afresh by a retry.
    store.commit(full_txn())
    assert store.key_policies() == {"acc": "max", "loss": "mean"}
    assert store.values("loss", 0) == [(0, 1.0), (1, 0.9), (2, 0.8)]


def test_commit_on_closed_store_raises_sink_error(store: LocalStore) -> None:
    """Writing to a closed connection is a SinkError, not a raw sqlite3 error."""
    store.close()
    with pytest.raises(SinkError):
        store.commit(full_txn())


def test_readonly_store_reads_but_refuses_writes(store: LocalStore) -> None:
    """A read-only store sees committed data; commits raise SinkError and raw writes sqlite3 errors."""
    store.commit(full_txn())
    ro = LocalStore(store.path, readonly=True)
    try:
        assert ro.values("loss", 0) == [(0, 1.0), (1, 0.9), (2, 0.8)]
        assert ro.run_info().id == "r1"
        with pytest.raises(SinkError):
            ro.commit(TxnData(events=[(1.0, "x", None, "y")]))
    finally:
        ro.close()
    ro = LocalStore(store.path, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro._db.execute("INSERT INTO events (ts, kind) VALUES (1.0, 'x')")
    finally:
        ro.close()
    assert len(store.events()) == 2


def test_readonly_open_of_missing_store_raises_sink_error(tmp_path: Path) -> None:
    """Opening a store read-only that does not exist is a SinkError and creates nothing."""
    with pytest.raises(SinkError, match="no store"):
        LocalStore(tmp_path / "nope" / "run.db", readonly=True)
    assert not (tmp_path / "nope").exists()
