"""The group commit window: 100 ms at a light load, 50 ms once it read 256 KiB, 10 ms while a non-ACK reply is due."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.aggregator.commitwindow import (
    BUSY_WINDOW_S,
    LIGHT_BYTES,
    LIGHT_EARLY_S,
    LIGHT_WINDOW_S,
    URGENT_WINDOW_S,
    CommitWindow,
)
from coordinator.aggregator.server import Server
from coordinator.transport import wire
from tests.aggregator.helpers import RUN, make_cfg, payload


def test_a_light_window_is_long_a_busy_one_shorter_and_an_urgent_one_shortest() -> None:
    w = CommitWindow()
    w.committed(100.0)
    assert w.length == LIGHT_WINDOW_S == 0.1
    assert w.open_at(100.099) and not w.open_at(100.101)
    w.bytes += LIGHT_BYTES - 1
    assert w.length == LIGHT_WINDOW_S
    w.bytes += 1
    assert w.length == BUSY_WINDOW_S == 0.05
    assert w.open_at(100.049) and not w.open_at(100.051)
    w.urgent = True
    assert w.length == URGENT_WINDOW_S == 0.01
    assert w.open_at(100.009) and not w.open_at(100.011)


def test_a_batch_read_late_in_a_light_window_closes_it_in_that_round() -> None:
    """The ranks' flush after next (about 100 ms after a commit, on their 50 ms grid) arrives a
    moment before the window's end: it commits in the round that read it, not a wake-up later."""
    w = CommitWindow()
    w.committed(100.0)
    assert LIGHT_EARLY_S == 0.075
    assert w.open_at(100.074, read=True), "the next flush (50 ms on) waits for the one after"
    assert not w.open_at(100.076, read=True), "the flush after next closes the window"
    assert w.open_at(100.076), "a round that read no batch (a timeout, a reply) keeps the full 100 ms"
    w.urgent = True
    assert not w.open_at(100.076, read=True), "an urgent window ended at 10 ms anyway"


def test_a_commit_opens_a_new_light_window() -> None:
    w = CommitWindow()
    w.bytes = 10 * LIGHT_BYTES
    w.committed(5.0)
    assert (w.opened, w.bytes, w.length) == (5.0, 0, LIGHT_WINDOW_S)
    assert w.open_at(5.05), "a window without its bytes is light again"


def test_the_poll_timeout_runs_to_the_windows_end_rounded_up_and_never_below_zero() -> None:
    w = CommitWindow()
    w.committed(10.0)
    assert w.timeout_ms(10.0) == 100
    assert w.timeout_ms(10.0991) == 1, "0.9 ms left: a 0 ms poll would spin"
    assert w.timeout_ms(10.2) == 0
    assert CommitWindow().timeout_ms(1e6) == 0, "no commit yet: the first batch is committed at once"


def _server(tmp_path: Path) -> Server:
    return Server(Aggregator(make_cfg(tmp_path, world=1)), f"ipc://{tmp_path}/agg.sock")


def _send(srv: Server, kind: int, seq: int, body: bytes) -> None:
    srv.handle([b"rank-0", wire.encode_envelope(kind, RUN, 0, 1, seq), body], 1.0)


def test_only_acks_due_keep_the_window_light_and_a_ping_makes_it_urgent_until_the_replies_leave(
    tmp_path: Path,
) -> None:
    """A rank waiting for its acks hurries with a PING behind its batch; the ACK and the PONG then leave
    after the 10 ms window's commit, and the next window is light again."""
    srv = _server(tmp_path)
    try:
        _send(srv, wire.HELLO, 1, wire.encode_map({"pid": 100, "host": "h"}))
        assert srv.window.urgent, "a WELCOME is due"
        srv.agg.commit()
        srv._fill_reads()
        srv._flush_replies()
        assert not srv.window.urgent
        _send(srv, wire.BATCH, 1, payload({"m": {1: 1.0}}))
        assert [r[1] for r in srv.replies] == [wire.ACK]
        assert srv.window.length == LIGHT_WINDOW_S, "only an ACK is due"
        _send(srv, wire.PING, 0, wire.encode_map({}))
        assert srv.window.urgent and srv.window.length == URGENT_WINDOW_S
        srv.agg.commit()
        srv._fill_reads()
        assert [(kind, body.get("m")) for _, kind, _, body in srv.replies] == [(wire.ACK, 1), (wire.PONG, 1)]
        srv._flush_replies()
        assert not srv.window.urgent and srv.window.length == LIGHT_WINDOW_S
    finally:
        srv.close()
        srv.agg.store.close()


def test_a_window_that_read_256_kib_commits_at_50_ms(tmp_path: Path) -> None:
    """The bytes a round reads count toward its window: a busy run's acks do not wait 100 ms."""
    import zmq

    srv = _server(tmp_path)
    client = srv.ctx.socket(zmq.DEALER)
    try:
        client.connect(srv.endpoint)
        big = payload({f"k{i}": {s: float(s) for s in range(100)} for i in range(200)})  # 320 KB of points
        assert len(big) > LIGHT_BYTES
        client.send_multipart([wire.encode_envelope(wire.HELLO, RUN, 0, 1, 1), wire.encode_map({"pid": 1})])
        client.send_multipart([wire.encode_envelope(wire.BATCH, RUN, 0, 1, 1), big])
        taken = 0
        while taken < len(big):
            assert srv.sock.poll(10_000), "the batch did not arrive"
            taken += srv._receive_round(1.0)
        assert srv.window.bytes == taken
        assert srv.window.length == URGENT_WINDOW_S, "the WELCOME is due"
        srv.window.urgent = False
        assert srv.window.length == BUSY_WINDOW_S
    finally:
        client.close(linger=0)
        srv.close()
        srv.agg.store.close()
