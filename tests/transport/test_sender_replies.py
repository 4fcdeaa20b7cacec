"""The sender thread against a ROUTER the test scripts: replies a real aggregator sends only by chance.

The aggregator's side of these exchanges (its WELCOME mark is durable) is tested in
``tests/aggregator/test_server_replies.py``; here the test plays it, to lose an ACK on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from coordinator.client.steps import StepNumbering
from coordinator.errors import SinkError
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.requests import Request
from coordinator.transport.sender import SenderConfig, SenderThread

_Message = tuple[bytes, wire.Envelope, dict[str, Any]]


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bound ROUTER (the aggregator's socket type) and its endpoint."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/agg.sock"
    sock.bind(endpoint)
    try:
        yield sock, endpoint
    finally:
        sock.close(linger=0)
        ctx.term()


def _recv(sock: zmq.Socket[bytes], timeout_s: float = 5.0, *, skip_pings: bool = True) -> _Message:
    """The next message from the sender (PINGs skipped); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000)), f"nothing from the sender in {timeout_s} s"
        ident, head, body = sock.recv_multipart()
        env = wire.decode_envelope(head)
        if not (skip_pings and env.kind == wire.PING):
            return ident, env, wire.decode_map(body)


def _reply(sock: zmq.Socket[bytes], ident: bytes, kind: int, env: wire.Envelope, body: dict[str, Any]) -> None:
    head = wire.encode_envelope(kind, env.run_id, env.rank, env.incarnation, env.seq)
    sock.send_multipart([ident, head, wire.encode_map(body)])


@contextmanager
def _welcomed_sender(
    sock: zmq.Socket[bytes], endpoint: str, heartbeat_s: float = 60.0
) -> Iterator[tuple[Buffer, SenderThread]]:
    """A running sender (ack timeout 1 s) that the test welcomed as a new rank; stopped and joined after."""
    buf = Buffer(10_000)
    cfg = SenderConfig(
        run_id="run-1",
        rank=0,
        incarnation=1,
        endpoint=endpoint,
        flush_interval_s=0.01,
        ack_timeout_s=1.0,  # long enough that no probe comes between two batches of a test on a loaded machine
        heartbeat_interval_s=heartbeat_s,
    )
    snd = SenderThread(cfg, buf, StepNumbering())
    snd.start()
    try:
        ident, env, _ = _recv(sock)
        assert env.kind == wire.HELLO
        _reply(sock, ident, wire.WELCOME, env, {"last_seq": 0})
        yield buf, snd
    finally:
        snd.stop()
        snd.join(10)
    assert not snd.is_alive()


def _batch_of(sock: zmq.Socket[bytes], buf: Buffer, snd: SenderThread, seq: int) -> _Message:
    """Write a field, wake the sender, and receive its batch, numbered ``seq``."""
    with buf.lock:
        buf.add_fields([("cfg/lr", ("float", seq / 10))])
    snd.wake()
    ident, env, body = _recv(sock)
    assert (env.kind, env.seq) == (wire.BATCH, seq)
    return ident, env, body


def _window_empties(snd: SenderThread, timeout_s: float = 5.0) -> bool:
    """Whether every batch in flight is acknowledged within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while snd._pipe.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return snd._pipe.in_flight == 0


def test_a_probe_welcome_acknowledges_the_batch_whose_ack_was_lost(router: tuple[zmq.Socket[bytes], str]) -> None:
    """BATCH 1's ACK never comes (lost in a reconnect, or the aggregator died between its commit and
    its acks and the probe reached its successor); the probe's WELCOME says it has batch 1: that is
    its acknowledgement, and batch 1 is not sent again. Before, the probe's WELCOME acknowledged
    nothing, so the batch stayed in flight and ``wait()`` waited for ever.
    """
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        _batch_of(sock, buf, snd, 1)  # its ACK is lost
        ident, probe, _ = _recv(sock)
        assert probe.kind == wire.HELLO and probe.seq == 2, "no probe after ack_timeout_s"
        assert snd._pipe.in_flight == 1
        _reply(sock, ident, wire.WELCOME, probe, {"last_seq": 1})
        assert _window_empties(snd), "the WELCOME's mark did not acknowledge batch 1"
        assert not sock.poll(300), "a batch the aggregator has was sent again"


def test_a_probe_welcome_resends_the_batches_above_its_mark(router: tuple[zmq.Socket[bytes], str]) -> None:
    """The probe's WELCOME has batch 1 only: batch 2, lost on the way, is sent again; 1 is not."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        for seq in (1, 2):
            _batch_of(sock, buf, snd, seq)  # neither is acknowledged
        ident, probe, _ = _recv(sock)
        assert probe.kind == wire.HELLO
        _reply(sock, ident, wire.WELCOME, probe, {"last_seq": 1})
        ident, env, _ = _recv(sock)
        assert (env.kind, env.seq) == (wire.BATCH, 2)
        _reply(sock, ident, wire.ACK, env, {})
        assert _window_empties(snd), "batch 2's ACK did not empty the window"


def test_an_ack_whose_mark_covers_an_earlier_batch_acknowledges_it_too(router: tuple[zmq.Socket[bytes], str]) -> None:
    """BATCH 1's ACK is lost; BATCH 2's ACK carries the mark 2: both are acknowledged at once, no probe needed."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        _batch_of(sock, buf, snd, 1)
        ident, env, _ = _batch_of(sock, buf, snd, 2)
        _reply(sock, ident, wire.ACK, env, {"m": 2})
        assert _window_empties(snd), "batch 1 is still in flight after an ACK whose mark covers it"
        assert not sock.poll(1500), "the sender probed (or resent) although every batch was acknowledged"


def test_a_pong_settles_the_last_batch_whose_ack_was_lost(router: tuple[zmq.Socket[bytes], str]) -> None:
    """BATCH 1's ACK is lost and nothing follows: the next heartbeat's PONG, mark 1, settles it before any probe."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint, heartbeat_s=0.2) as (buf, snd):
        _batch_of(sock, buf, snd, 1)
        ident, ping, _ = _recv(sock, skip_pings=False)
        assert ping.kind == wire.PING
        _reply(sock, ident, wire.PONG, ping, {"m": 1})
        assert _window_empties(snd), "the PONG's mark did not acknowledge batch 1"
        time.sleep(1.2)  # past ack_timeout_s: a batch still in flight would be probed for
        while sock.poll(0):
            _, env, _ = _recv(sock, skip_pings=False)
            assert env.kind == wire.PING, f"{wire.kind_name(env.kind)} {env.seq} after every batch was acknowledged"


def test_a_rank_that_waits_for_its_ack_sends_a_ping_behind_its_batch(router: tuple[zmq.Socket[bytes], str]) -> None:
    """``wait()`` hurries: a PING right behind the batch has the aggregator commit within its 10 ms
    window instead of its light 100 ms one; the PONG's mark acknowledges the batch. Once per batch."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        with buf.lock:  # what wait() does before it waits
            buf.add_fields([("cfg/lr", ("float", 0.1))])
            buf.flush_requested = True
            buf.awaiting += 1
        snd.wake()
        ident, env, _ = _recv(sock)
        assert (env.kind, env.seq) == (wire.BATCH, 1)
        _, ping, _ = _recv(sock, 2.0, skip_pings=False)
        assert (ping.kind, ping.seq) == (wire.PING, 0), "no PING behind the batch of a rank that waits"
        _reply(sock, ident, wire.PONG, ping, {"m": 1})
        assert _window_empties(snd), "the PONG's mark did not acknowledge batch 1"
        while sock.poll(300):  # the flushes while it waits cut nothing: no PING follows
            _, env, _ = _recv(sock, skip_pings=False)
            assert env.kind != wire.PING, "a second PING without a new batch"
        with buf.lock:
            buf.awaiting -= 1


def test_a_pong_that_acknowledges_gives_its_journal_position_first(router: tuple[zmq.Socket[bytes], str]) -> None:
    """With trackers, ``wait()`` reads the journal position once its batches are acknowledged: a
    PONG that acknowledges (its ACK comes later, or was lost) has its position noted before that."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint, heartbeat_s=0.2) as (buf, snd):
        _batch_of(sock, buf, snd, 1)
        ident, ping, _ = _recv(sock, skip_pings=False)
        _reply(sock, ident, wire.PONG, ping, {"m": 1, "j": 7, "jt": 3})
        assert _window_empties(snd)
        assert (buf.journal, buf.journal_texts) == (7, 3), "batch 1 acknowledged before its journal position was kept"


def test_a_rank_nobody_waits_for_sends_its_batch_without_a_ping(router: tuple[zmq.Socket[bytes], str]) -> None:
    """A paced rank's batches wait for the light commit window: no PING asks for a shorter one."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        ident, env, _ = _batch_of(sock, buf, snd, 1)
        assert not sock.poll(500), "a message behind the batch of a rank nobody waits for"
        _reply(sock, ident, wire.ACK, env, {})
        assert _window_empties(snd)


def test_a_read_refused_with_a_sink_error_raises_it_and_leaves_the_batches_alone(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    """The aggregator could not answer a QUERY (its commit failed): the query raises SinkError with the
    store's message at once; the rank's buffer records no failure, so ``wait()`` does not raise for it."""
    sock, endpoint = router
    with _welcomed_sender(sock, endpoint) as (buf, snd):
        req = snd.submit(Request(wire.QUERY, {"op": "values", "key": "m"}))
        ident, env, body = _recv(sock)
        assert env.kind == wire.QUERY and body == {"op": "values", "key": "m"}
        _reply(sock, ident, wire.ERROR, env, {"code": "sink", "message": "disk I/O error", "re": wire.QUERY})
        with pytest.raises(SinkError, match="could not answer from the store: disk I/O error"):
            req.result(5.0, endpoint)
        assert buf.errors == []
