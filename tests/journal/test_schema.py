"""The journal's schema: stores of this version open, older ones upgrade, newer or foreign ones are refused.

``data/v1-run.db`` was written by the store module of an earlier release (see data/README.md);
every field and point it holds must read back unchanged through today's code.
"""

from __future__ import annotations

import shutil
import sqlite3
from array import array
from pathlib import Path

import pytest

from coordinator.errors import SinkError
from coordinator.journal.schema import SCHEMA_VERSION, connect, migrate
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData, list_runs

FIXTURE = Path(__file__).parent / "data" / "v1-run.db"


def test_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    """A store written by another schema version raises SinkError naming both versions."""
    path = tmp_path / "run.db"
    LocalStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET v='99' WHERE k='schema'")
    con.commit()
    con.close()
    with pytest.raises(SinkError, match="99"):
        LocalStore(path)


def test_garbage_file_is_refused_with_sink_error(tmp_path: Path) -> None:
    """A file that is not SQLite raises SinkError on open."""
    path = tmp_path / "run.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(SinkError):
        LocalStore(path)


def _store_at(tmp_path: Path, version: int) -> Path:
    path = tmp_path / "run.db"
    connect(path, readonly=False, durable=False).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET v=? WHERE k='schema'", (str(version),))
    con.commit()
    con.close()
    return path


def test_a_newer_store_is_refused_with_a_clear_error_even_when_writable(tmp_path: Path) -> None:
    path = _store_at(tmp_path, SCHEMA_VERSION + 1)
    for readonly in (False, True):
        with pytest.raises(SinkError, match="newer coordinator"):
            connect(path, readonly=readonly, durable=False)


def test_an_older_store_without_an_upgrade_path_is_refused(tmp_path: Path) -> None:
    path = _store_at(tmp_path, 0)
    with pytest.raises(SinkError, match="no upgrade from schema 0"):
        connect(path, readonly=False, durable=False)
    with pytest.raises(SinkError, match="read-only"):
        connect(path, readonly=True, durable=False)


def test_migrate_runs_each_step_in_order_then_records_the_version(tmp_path: Path) -> None:
    path = _store_at(tmp_path, 1)
    db = sqlite3.connect(path, isolation_level=None)
    ran: list[int] = []

    def create(c: sqlite3.Connection) -> None:
        ran.append(1)
        c.execute("CREATE TABLE extra (x INTEGER)")

    def insert(c: sqlite3.Connection) -> None:
        ran.append(2)
        c.execute("INSERT INTO extra VALUES (7)")

    migrate(db, path, target=3, steps={1: create, 2: insert})
    assert ran == [1, 2]
    assert db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() == ("3",)
    assert db.execute("SELECT x FROM extra").fetchall() == [(7,)]
    migrate(db, path, target=3, steps={})  # already there: nothing to do
    db.close()


def test_a_failed_upgrade_step_keeps_nothing_of_the_upgrade(tmp_path: Path) -> None:
    path = _store_at(tmp_path, 1)
    db = sqlite3.connect(path, isolation_level=None)

    def create(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE extra (x INTEGER)")

    def broken(c: sqlite3.Connection) -> None:
        c.execute("NOT SQL")

    with pytest.raises(SinkError, match="upgrading it failed"):
        migrate(db, path, target=3, steps={1: create, 2: broken})
    assert db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() == ("1",)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchone() is None
    db.close()


def test_a_read_only_store_is_never_upgraded(tmp_path: Path) -> None:
    path = _store_at(tmp_path, 1)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ran: list[int] = []
    migrate(db, path, readonly=True, target=2, steps={1: lambda c: ran.append(1)})  # read as it is
    assert ran == [] and db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() == ("1",)
    with pytest.raises(SinkError, match="read-only"):
        migrate(db, path, readonly=True, target=3, steps={1: lambda c: None}, oldest_readable=2)
    db.close()


# ----------------------------------------------------------------------------- a store of the earlier release


def _check_fixture(s: LocalStore) -> None:
    info = s.run_info()
    assert (info.id, info.project, info.name, info.created, info.ended) == ("v1run", "proj", "fixture", 1000.0, 1010.0)
    assert (info.state, info.world_size, info.report) == ("finished", 2, {"points": 19})
    assert (
        s.meta("schema") == ("1" if s.readonly else str(SCHEMA_VERSION))
        and s.meta("counters") == '{"batches": 3}'
        and s.meta("config") == '{"world_size": 2}'
    )
    assert s.key_policies() == {"acc": "max", "loss": "mean", "lr": "per_rank"}
    assert s.values("loss") == [(0, 1.5), (1, 1.4), (2, 1.8), (3, 1.7), (4, 1.6)]
    assert s.contributors("loss") == [(0, 2), (1, 2), (2, 2), (3, 2), (4, 1)]
    assert s.values("acc") == [(0, 0.5), (1, 0.6)]
    assert s.contributors("acc") == [(0, 1), (1, 1)]
    assert s.values("loss", 0) == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]
    assert s.values("loss", 1) == [(0, 2.0), (1, 1.9), (2, 2.8), (3, 2.7), (4, 2.6)]
    assert s.values("lr", 1) == [(0, 0.1), (1, 0.05)]
    assert s.rank_points("loss") == {
        0: ([0, 1, 2, 3], [1.0, 0.9, 0.8, 0.7]),
        1: ([0, 1, 2, 3, 4], [2.0, 1.9, 2.8, 2.7, 2.6]),
    }
    assert s.rank_incarnations("loss", 1) == [(1, 1001.0, 0), (2, 1005.0, 2)]
    assert s.multi_incarnation_ranks() == {1}
    assert s.fields() == {
        "parameters/layers": ("list", [1, 2, 3]),
        "parameters/lr": ("float", 0.1),
        "parameters/name": ("str", "résumé 'x'; DROP"),
        "parameters/on": ("bool", True),
        "sys/hostname": ("str", "node-1"),
    }
    assert s.field_writers()["parameters/on"] == 1
    assert s.conflicts() == [
        {"path": "parameters/lr", "rank": 1, "type": "float", "value": 0.2, "kept_rank": 0, "ts": 1000.8}
    ]
    assert [(x["rank"], x["incarnation"], x["state"], x["pid"], x["host"]) for x in s.senders()] == [
        (0, 1, "active", 111, "node-1"),
        (1, 1, "lost", 112, "node-2"),
        (1, 2, "closed", 113, "node-2"),
    ]
    assert s.high_water_marks() == {(0, 1): 1, (1, 1): 1, (1, 2): 1}
    assert [e[1] for e in s.events()] == ["rank_joined", "rank_lost", "rank_restarted"]
    chunks = s.chunks_after(0, 10**9)
    assert [c.id for c in chunks] == list(range(1, 9)) and s.max_chunk_id() == 8
    assert (chunks[-1].key, chunks[-1].rank, list(chunks[-1].steps)) == ("loss", MAIN_RANK, [2, 3, 4])
    assert s.points_after(0) == (8, 23)
    assert {x["key"]: x["per_rank"] for x in s.series_summary()} == {"acc": {0: 2}, "loss": {0: 4, 1: 5}, "lr": {1: 2}}


def test_a_store_written_by_the_earlier_release_reads_back_every_field_and_point() -> None:
    before = FIXTURE.read_bytes()
    s = LocalStore(FIXTURE, readonly=True)
    try:
        assert not s.summarized  # schema 1: summaries computed as it reads, nothing written
        _check_fixture(s)
        assert s.values_page("loss", 1, after=0, limit=2) == ((array("q", [1, 2]), array("d", [1.9, 2.8]), 2))
        assert s.series_stats("loss") == (5, (0, 1.5), (4, 1.6), 1.4, 1.8)
        assert s.last_steps(1) == {"loss": 4, "lr": 1} and s.last_point("loss") == (4, 1.6)
    finally:
        s.close()
    assert FIXTURE.read_bytes() == before


def test_the_writer_upgrades_a_schema_1_store_to_summaries_that_match_its_points(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    shutil.copy(FIXTURE, path)
    LocalStore(path).close()  # the writer migrates
    s = LocalStore(path, readonly=True)
    try:
        assert s.summarized and s.meta("schema") == str(SCHEMA_VERSION)
        old = LocalStore(FIXTURE, readonly=True)
        try:
            for key, rank in (("loss", -1), ("loss", 0), ("loss", 1), ("acc", -1), ("lr", 1)):
                assert s.series_stats(key, rank) == old.series_stats(key, rank)
                assert s.values(key, rank) == old.values(key, rank)
                assert s.rank_incarnations(key, rank) == old.rank_incarnations(key, rank)
        finally:
            old.close()
        rows = s._db.execute("SELECT steps, vals, step_min, step_max, v_min, v_max, ordered FROM chunks").fetchall()
        for sb, vb, lo, hi, vmin, vmax, ordered in rows:
            st, va = array("q"), array("d")
            st.frombytes(sb)
            va.frombytes(vb)
            assert (lo, hi, vmin, vmax) == (min(st), max(st), min(va), max(va))
            assert ordered == int(list(st) == sorted(set(st)))
    finally:
        s.close()


def test_a_store_written_by_the_earlier_release_opens_for_writing_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "v1run" / "run.db"
    path.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, path)
    s = LocalStore(path)
    try:
        _check_fixture(s)
        s.commit(TxnData(chunks=[ChunkRow("loss", 0, 1, 2, 1007.0, array("q", [4]), array("d", [0.6]))]))
        assert s.values("loss", 0)[-1] == (4, 0.6)
    finally:
        s.close()
    assert [r.id for r in list_runs(tmp_path)] == ["v1run"]
