"""QUERY answered off the ingest loop: checked requests, paged little-endian replies, a reader thread of its own."""

from __future__ import annotations

import threading
from array import array
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from coordinator.aggregator.queries import QueryReader, answer
from coordinator.errors import ProtocolError
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from coordinator.transport import wire


def _store(path: Path, n: int = 10) -> LocalStore:
    s = LocalStore(path)
    s.create_run("r", "p", "n", 1, 1.0)
    steps = array("q", range(n))
    s.commit(
        TxnData(
            chunks=[
                ChunkRow("loss", 0, 1, 1, 1.0, steps, array("d", [x / 2 for x in steps])),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1.0, steps, array("d", [x * 2.0 for x in steps])),
            ],
            key_policies={"loss": "mean"},
        )
    )
    return s


def _cols(rep: dict[str, Any]) -> tuple[list[int], list[float]]:
    st, va = array("q"), array("d")
    st.frombytes(rep["steps"])
    va.frombytes(rep["values"])
    return list(st), list(va)


@pytest.mark.parametrize(
    "q",
    [
        {"op": "drop"},
        {},
        {"op": "values"},
        {"op": "values", "key": "k", "rank": "0"},
        {"op": "values", "key": "k", "after": 1.5},
        {"op": "values", "key": "k", "limit": 0},
    ],
)
def test_bad_query_is_refused(tmp_path: Path, q: dict[str, Any]) -> None:
    s = _store(tmp_path / "run.db")
    try:
        with pytest.raises(ProtocolError) as ei:
            answer(s, q)
        assert ei.value.code == "bad_query"
    finally:
        s.close()


def test_values_come_in_pages_of_little_endian_columns(tmp_path: Path) -> None:
    s = _store(tmp_path / "run.db")
    try:
        rep = answer(s, {"op": "values", "key": "loss", "rank": 0, "after": -1, "limit": 4})
        assert _cols(rep) == ([0, 1, 2, 3], [0.0, 0.5, 1.0, 1.5]) and rep["next"] == 3
        rep = answer(s, {"op": "values", "key": "loss", "after": 7, "limit": 4})
        assert _cols(rep) == ([8, 9], [16.0, 18.0]) and rep["next"] is None
        rep = answer(s, {"op": "values", "key": "loss", "limit": 10**9})  # capped, not refused
        assert len(_cols(rep)[0]) == 10 and rep["next"] is None
        assert _cols(answer(s, {"op": "values", "key": "nothing", "limit": 5})) == ([], [])
    finally:
        s.close()


def test_the_reader_thread_answers_while_the_writer_holds_a_transaction(tmp_path: Path) -> None:
    """Its own read-only connection: an open write transaction (the loop mid-commit) does not hold it up."""
    writer = _store(tmp_path / "run.db")
    ctx = zmq.Context()
    reader = QueryReader(ctx, tmp_path / "run.db", "r")
    try:
        writer._db.execute("BEGIN IMMEDIATE")  # the ingest loop's connection, busy
        env = wire.decode_envelope(wire.encode_envelope(wire.QUERY, "r", 0, 1, 7))
        assert reader.submit(b"id", env, {"op": "values", "key": "loss", "rank": 0, "after": 4, "limit": 2})
        assert reader.submit(b"id", env, {"op": "nope"})
        assert reader.replies.poll(10_000), "no answer within 10 s"
        ident, head, payload = reader.replies.recv_multipart()
        got = wire.decode_envelope(head)
        assert (ident, got.kind, got.seq) == (b"id", wire.QUERY_REPLY, 7)
        rep = msgpack.unpackb(payload)
        assert _cols(rep) == ([5, 6], [2.5, 3.0]) and rep["next"] == 6
        assert reader.replies.poll(10_000)
        _, head, payload = reader.replies.recv_multipart()
        assert wire.decode_envelope(head).kind == wire.ERROR and msgpack.unpackb(payload)["code"] == "bad_query"
        assert "coordinator-queries" in {t.name for t in threading.enumerate()}
        writer._db.execute("ROLLBACK")
    finally:
        reader.stop()
        reader.replies.close(linger=0)
        ctx.term()
        writer.close()
    assert reader.answered == 1 and reader.failures == 0
    assert "coordinator-queries" not in {t.name for t in threading.enumerate()}
