"""The staging log of rank points (schema 4): one row per commit, materialized by a writer's open, migrated from v3."""

from __future__ import annotations

import sqlite3
from array import array
from pathlib import Path

import msgpack
import numpy as np
import pytest

from coordinator.errors import SinkError
from coordinator.journal import staging
from coordinator.journal.records import StagedBlock
from coordinator.journal.schema import SCHEMA_VERSION, schema_of
from coordinator.journal.store import ChunkRow, LocalStore, TxnData


def _row(key: str, rank: int, seq: int, steps: list[int], inc: int = 1, ts: float = 5.0) -> ChunkRow:
    return ChunkRow(key, rank, inc, seq, ts, array("q", steps), array("d", [float(rank * 100 + s) for s in steps]))


def _new(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "run.db")
    s.create_run("r1", "proj", "run", 2, 1000.0)
    return s


def _chunk_rows(s: LocalStore) -> list[tuple[str, int, int, int, float, int]]:
    """(key, rank, seq, n, ts, step_last) of every chunk in journal order."""
    return list(
        s._db.execute(
            "SELECT k.key, c.rank, c.seq, c.n, c.ts, c.step_last "
            "FROM chunks c JOIN keys k ON k.id=c.key_id ORDER BY c.id"
        )
    )


def test_a_body_round_trips_and_merges_per_key_rank_and_incarnation() -> None:
    pieces = [
        _row("a", 0, 1, [0, 1]),
        _row("b", 1, 1, [0]),
        _row("a", 0, 2, [2, 3], ts=9.0),
        _row("a", 0, 1, [7], inc=2),
    ]
    n, body = staging.encode(pieces, {"a": 1, "b": 2}.__getitem__)
    assert n == 6
    got = staging.decode(body)
    assert [(p[0], p[1], p[2], p[3], list(p[5])) for p in got] == [
        (1, 0, 1, 1, [0, 1]),
        (2, 1, 1, 1, [0]),
        (1, 0, 1, 2, [2, 3]),
        (1, 0, 2, 1, [7]),
    ]
    merged = staging.merge(got)
    assert [(p[0], p[1], p[2], p[3], p[4], list(p[5]), list(p[6])) for p in merged] == [
        (1, 0, 1, 2, 5.0, [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]),  # the first piece's time, the last seq
        (2, 1, 1, 1, 5.0, [0], [100.0]),
        (1, 0, 2, 1, 5.0, [7], [7.0]),
    ]


@pytest.mark.parametrize(
    "body",
    [b"\xc1", msgpack.packb([2, []]), msgpack.packb([1, [[1, 0, 1, 1, 5.0, b"\0" * 8, b""]]]), msgpack.packb([1, 7])],
)
def test_a_corrupt_or_foreign_body_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(SinkError, match="staged"):
        staging.decode(body)


def test_a_staged_commit_is_one_row_the_readers_count_and_the_next_writer_materializes(tmp_path: Path) -> None:
    """Two staged commits: no chunk rows, two staged rows; a writer's open writes one chunk per series."""
    s = _new(tmp_path)
    s.commit(TxnData(key_policies={"a": "mean", "b": "mean"}, staged=[_row("a", 0, 1, [0, 1]), _row("b", 1, 1, [0])]))
    s.commit(TxnData(staged=[_row("a", 0, 2, [2]), _row("a", 1, 1, [0, 1])]))
    assert _chunk_rows(s) == [] and s._db.execute("SELECT COUNT(*) FROM staged").fetchone() == (2,)
    ro = LocalStore(tmp_path / "run.db", readonly=True)
    assert ro.staged_points() == 6 and ro.values("a", 0) == [], "a reader counts staged points; its series lack them"
    s.close()  # as a crash leaves it
    s = LocalStore(tmp_path / "run.db")
    assert s.unstaged_points == 6
    assert _chunk_rows(s) == [("a", 0, 2, 3, 5.0, 2), ("b", 1, 1, 1, 5.0, 0), ("a", 1, 1, 2, 5.0, 1)]
    assert ro.staged_points() == 0 and ro.values("a", 0) == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert ro.values("a", 1) == [(0, 100.0), (1, 101.0)] and ro.values("b", 1) == [(0, 100.0)]
    ro.close()
    s.close()
    s = LocalStore(tmp_path / "run.db")
    assert s.unstaged_points == 0 and len(_chunk_rows(s)) == 3, "materialized once"
    s.close()


def test_a_commit_that_materializes_writes_the_chunks_and_empties_the_log_atomically(tmp_path: Path) -> None:
    s = _new(tmp_path)
    s.commit(TxnData(key_policies={"a": "mean"}, staged=[_row("a", 0, 1, [0])]))
    s.commit(TxnData(chunks=[_row("a", 0, 2, [0, 1])], unstage=True))
    assert s.staged_points() == 0 and _chunk_rows(s) == [("a", 0, 2, 2, 5.0, 1)]
    s.commit(TxnData(staged=[_row("a", 0, 3, [2])]))
    s._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(SinkError, match="disk full"):  # a failing transaction keeps the log as it was
        s.commit(TxnData(chunks=[_row("a", 0, 4, [3])], unstage=True))
    assert s.staged_points() == 1 and len(_chunk_rows(s)) == 1
    s.close()


def test_a_corrupt_staged_row_refuses_the_writer_open_and_keeps_it(tmp_path: Path) -> None:
    s = _new(tmp_path)
    s.close()
    db = sqlite3.connect(tmp_path / "run.db")
    db.execute("INSERT INTO staged (n, body) VALUES (1, x'c1')")
    db.commit()
    db.close()
    with pytest.raises(SinkError, match="materializing staged"):
        LocalStore(tmp_path / "run.db")
    ro = LocalStore(tmp_path / "run.db", readonly=True)
    assert ro.staged_points() == 1
    ro.close()


def _as_v3(path: Path) -> None:
    """Turn a current store into what version 3 wrote: no staged table, schema 3."""
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE staged; UPDATE meta SET v='3' WHERE k='schema';")
    db.close()


def test_a_v3_store_is_read_as_it_is_and_migrated_by_a_writer(tmp_path: Path) -> None:
    s = _new(tmp_path)
    s.commit(TxnData(key_policies={"a": "mean"}, chunks=[_row("a", 0, 1, [0, 1])]))
    s.close()
    _as_v3(tmp_path / "run.db")
    ro = LocalStore(tmp_path / "run.db", readonly=True)
    assert schema_of(ro._db) == 3 and not ro.has_staged and ro.staged_points() == 0
    assert ro.values("a", 0) == [(0, 0.0), (1, 1.0)]
    ro.close()
    s = LocalStore(tmp_path / "run.db")
    assert schema_of(s._db) == SCHEMA_VERSION and s.has_staged and s.unstaged_points == 0
    s.commit(TxnData(staged=[_row("a", 0, 2, [2])]))
    assert s.staged_points() == 1 and s.values("a", 0) == [(0, 0.0), (1, 1.0)]
    s.close()


def test_a_round_with_blocks_is_format_2_and_reads_back_one_piece_per_key() -> None:
    """A block (keys logged together) is one body item; decode splits it per key, next to the chunks."""
    blk = StagedBlock(("a", "b"), 0, 1, 3, 5.0, array("q", [4, 5]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    n, body = staging.encode([_row("c", 1, 1, [0]), blk], {"a": 1, "b": 2, "c": 3}.__getitem__)
    assert n == 5 and msgpack.unpackb(body)[0] == 2
    got = [(p[0], p[1], p[2], p[3], p[4], list(p[5]), list(p[6])) for p in staging.decode(body)]
    assert got == [
        (3, 1, 1, 1, 5.0, [0], [100.0]),
        (1, 0, 1, 3, 5.0, [4, 5], [1.0, 2.0]),
        (2, 0, 1, 3, 5.0, [4, 5], [3.0, 4.0]),
    ]
    _, old = staging.encode([_row("c", 1, 1, [0])], {"c": 3}.__getitem__)
    assert msgpack.unpackb(old)[0] == 1, "a round without blocks keeps the format older readers read"
    bad = msgpack.packb([2, [], [[[1, 2], 0, 1, 3, 5.0, b"\0" * 8, b"\0" * 8]]])
    with pytest.raises(SinkError, match="keys x steps"):
        staging.decode(bad)


def test_encode_remembers_a_block_key_tuples_ids() -> None:
    b = StagedBlock(("a", "b"), 0, 1, 3, 5.0, array("q", [4]), np.array([[1.0], [2.0]]))
    ids = {"a": 7, "b": 9}
    cache: dict[tuple[str, ...], list[int]] = {}
    first = staging.encode([b], ids.__getitem__, cache)
    assert cache == {("a", "b"): [7, 9]}

    def unmapped(key: str) -> int:
        raise AssertionError(f"{key} mapped again")

    assert staging.encode([b], unmapped, cache) == first
    assert staging.decode(first[1])[0][0] == 7


def test_the_store_remembers_block_ids_only_once_its_keys_are_committed(tmp_path: Path) -> None:
    s = _new(tmp_path)
    b = StagedBlock(("a", "b"), 0, 1, 1, 5.0, array("q", [0]), np.array([[1.0], [2.0]]))
    s.commit(TxnData(key_policies={"a": "mean", "b": "mean"}, staged=[b]))
    assert s._block_ids == {}, "ids assigned in the transaction are not remembered (a rollback takes them back)"
    s.commit(TxnData(staged=[b]))
    assert s._block_ids == {("a", "b"): [s._key_ids["a"], s._key_ids["b"]]}
    s.close()
    r = LocalStore(tmp_path / "run.db")  # the writer's open materializes both staged rows
    try:
        assert r.values("b", 0) == [(0, 2.0)]
    finally:
        r.close()
