"""The server's replies that acknowledge: the marks of a WELCOME, an ACK and a gap report are durable when sent.

A sender takes every batch below either mark as acknowledged (its own ACK may have been lost), so
the server fills them in after the commit that made them durable, and holds them back while
commits fail. The sender's side is tested in ``tests/transport/test_sender_replies.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.server import Server
from coordinator.errors import SinkError
from coordinator.transport import wire
from tests.aggregator.helpers import RUN, make_cfg, payload

_ID = b"rank-0"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    server = Server(Aggregator(make_cfg(tmp_path, world=1)), f"ipc://{tmp_path}/agg.sock")
    try:
        yield server
    finally:
        server.close()
        server.agg.store.close()


def _send(srv: Server, kind: int, seq: int, body: bytes) -> None:
    srv.handle([_ID, wire.encode_envelope(kind, RUN, 0, 1, seq), body], 1.0)


def _hello(srv: Server, seq: int = 1) -> None:
    _send(srv, wire.HELLO, seq, wire.encode_map({"pid": 100, "host": "h"}))


def _batch(srv: Server, seq: int) -> None:
    _send(srv, wire.BATCH, seq, payload({"m": {seq: float(seq)}}))


def _replies(srv: Server) -> list[tuple[int, dict[str, object]]]:
    return [(kind, body) for _, kind, _, body in srv.replies]


def test_a_welcome_carries_the_mark_of_the_commit_it_follows(srv: Server) -> None:
    """A batch read after the HELLO, in the same commit, is under the WELCOME's mark."""
    _hello(srv)
    _batch(srv, 1)
    srv.agg.commit()
    srv._fill_reads()
    [(kind, welcome), (ack, _)] = _replies(srv)
    assert (kind, ack) == (wire.WELCOME, wire.ACK)
    assert welcome["last_seq"] == 1


def test_an_ack_carries_the_senders_mark_after_the_commit(srv: Server) -> None:
    """Batches 1 and 2 in one commit: one ACK, batch 2's, whose mark says 1 is durable too."""
    _hello(srv)
    _batch(srv, 1)
    _batch(srv, 2)
    srv.agg.commit()
    srv._fill_reads()
    assert [(kind, env.seq, body.get("m")) for _, kind, env, body in srv.replies] == [
        (wire.WELCOME, 1, None),
        (wire.ACK, 2, 2),
    ]


def test_the_acks_of_two_commits_are_not_merged(srv: Server) -> None:
    """Only the ACKs of one commit are coalesced: batch 1's ACK went with the first."""
    _hello(srv)
    _batch(srv, 1)
    srv.agg.commit()
    srv._fill_reads()
    srv._flush_replies()
    _batch(srv, 2)
    srv.agg.commit()
    srv._fill_reads()
    assert [(kind, env.seq, body["m"]) for _, kind, env, body in srv.replies] == [(wire.ACK, 2, 2)]


def test_a_pong_carries_the_senders_mark_after_the_commit(srv: Server) -> None:
    """An idle rank's heartbeat is answered with its mark, as an ACK is."""
    _hello(srv)
    _batch(srv, 1)
    _send(srv, wire.PING, 0, wire.encode_map({}))
    srv.agg.commit()
    srv._fill_reads()
    [_, _, (pong, body)] = _replies(srv)
    assert pong == wire.PONG and body["m"] == 1


def test_with_trackers_every_reply_that_acknowledges_names_the_journal_position(srv: Server, tmp_path: Path) -> None:
    """Batch 1, a PING, batch 2, a PING in one commit (a waiting rank hurries behind each batch):
    batch 1's ACK is dropped for batch 2's, so the first PONG is the first reply whose mark covers
    both. ``wait()`` reads the journal position as soon as its batches are acknowledged, so that
    PONG, like every acknowledging reply, names the position after the commit."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    srv.agg.forwarders.start(srv.agg.cfg.store_path, {"tensorboard": {"logdir": str(tmp_path / "tb")}})
    try:
        _hello(srv)
        for seq in (1, 2):
            _batch(srv, seq)
            _send(srv, wire.PING, 0, wire.encode_map({}))
        srv.agg.commit()
        srv._fill_reads()
        position = srv.agg.store.max_chunk_id()
        assert position > 0
        got = [(kind, body.get("m", body.get("last_seq")), body.get("j")) for kind, body in _replies(srv)]
        assert got == [
            (wire.WELCOME, 2, position),
            (wire.PONG, 2, position),
            (wire.ACK, 2, position),
            (wire.PONG, 2, position),
        ]
    finally:
        srv.agg.forwarders.abort()


def test_a_failed_commit_holds_the_welcome_back_until_one_succeeds(srv: Server) -> None:
    """Commit failed: the ACK becomes a sink error and the WELCOME waits; sent after the next commit, with its mark."""
    _hello(srv)
    _batch(srv, 1)
    held = srv._refuse_acks(SinkError("disk full"))
    assert [(kind, body.get("code")) for kind, body in _replies(srv)] == [(wire.ERROR, "sink")]
    assert [kind for _, kind, _, _ in held] == [wire.WELCOME]
    srv.replies = held
    srv.agg.commit()  # the kept transaction, retried
    srv._fill_reads()
    [(kind, welcome)] = _replies(srv)
    assert kind == wire.WELCOME and welcome["last_seq"] == 1


def test_a_failed_commit_refuses_the_reads_with_its_error(srv: Server) -> None:
    """A STATE and a QUERY in a round whose commit failed get the sink error, not their unfilled request back."""
    _hello(srv)
    _batch(srv, 1)
    _send(srv, wire.STATE, 7, wire.encode_map({}))
    _send(srv, wire.QUERY, 8, wire.encode_map({"op": "values", "key": "m"}))
    held = srv._refuse_acks(SinkError("disk full"))
    assert [kind for _, kind, _, _ in held] == [wire.WELCOME]
    refused = [(env.seq, kind, body) for _, kind, env, body in srv.replies]
    assert refused == [
        (1, wire.ERROR, {"code": "sink", "message": "disk full", "re": wire.BATCH}),
        (7, wire.ERROR, {"code": "sink", "message": "disk full", "re": wire.STATE}),
        (8, wire.ERROR, {"code": "sink", "message": "disk full", "re": wire.QUERY}),
    ]


def test_a_gap_report_expects_the_batch_after_the_committed_mark(srv: Server) -> None:
    """Batch 3 before 2 (a resend race): the gap report, sent after the commit that stored 2, expects 3."""
    _hello(srv)
    _batch(srv, 1)
    _batch(srv, 3)
    _batch(srv, 2)
    held = srv._refuse_acks(SinkError("disk full"))
    assert [(kind, body.get("code")) for _, kind, _, body in held] == [(wire.WELCOME, None), (wire.ERROR, "gap")]
    srv.replies = held
    srv.agg.commit()
    srv._fill_reads()
    [(_, welcome), (_, gap)] = _replies(srv)
    assert welcome["last_seq"] == 2
    assert gap["expected"] == 3
