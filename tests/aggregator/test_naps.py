"""The aggregator loop's naps through a commit window, ended by a rank's ring (``aggregator/naps.py``).

The first tests drive :class:`LoopWait` on real sockets. The last ones run the server loop on a
thread with a long ack window (3 s instead of 50 ms), so a request answered within the window's
end differs from one that waited for it by seconds, not milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from coordinator.aggregator import Aggregator
from coordinator.aggregator import server as server_mod
from coordinator.aggregator.naps import NAP_BYTES, LoopWait
from coordinator.aggregator.server import Server
from coordinator.transport import wire
from coordinator.transport.bell import Ringer
from tests.aggregator.helpers import RUN, make_cfg, payload

_LONG_WINDOW_S = 3.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield c
    finally:
        c.term()


def _pair(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]:
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    answers = ctx.socket(zmq.PAIR)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    return router, answers, dealer


def _close(*socks: zmq.Socket[bytes]) -> None:
    for s in socks:
        s.close(linger=0)


def test_a_nap_leaves_a_message_unread_until_it_ends(ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/agg.sock"
    router, answers, dealer = _pair(ctx, endpoint)
    waits = LoopWait(router, answers, endpoint)
    try:
        assert waits.may_nap()
        dealer.send(b"batch")
        t0 = time.monotonic()
        read, got_answers = waits.wait(400, nap=True)
        assert time.monotonic() - t0 >= 0.35  # the message did not end the nap
        assert (read, got_answers) == (True, False)  # read at its end
        assert router.recv_multipart(zmq.NOBLOCK)[1] == b"batch"
        dealer.send(b"next")
        read, _ = waits.wait(5000, nap=False)  # not napping: a message ends the wait
        assert read
    finally:
        waits.close()
        _close(router, answers, dealer)


def test_a_ring_ends_the_nap_and_the_naps_until_the_next_commit(
    ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/agg.sock"
    router, answers, dealer = _pair(ctx, endpoint)
    waits = LoopWait(router, answers, endpoint)
    ringer = Ringer(endpoint)
    try:
        timer = threading.Timer(0.1, ringer.ring)
        timer.start()
        t0 = time.monotonic()
        read, _ = waits.wait(10_000, nap=True)
        timer.join(5)
        assert time.monotonic() - t0 < 5.0
        assert read
        assert not waits.may_nap()
        waits.committed()
        assert waits.may_nap()
    finally:
        ringer.close()
        waits.close()
        _close(router, answers, dealer)


def test_a_window_that_took_much_is_not_napped_through(ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/agg.sock"
    router, answers, dealer = _pair(ctx, endpoint)
    waits = LoopWait(router, answers, endpoint)
    try:
        waits.took(NAP_BYTES - 1)
        assert waits.may_nap()
        waits.took(1)
        assert not waits.may_nap()
        waits.committed()
        assert waits.may_nap()
    finally:
        waits.close()
        _close(router, answers, dealer)
    assert not (tmp_path / "agg.bell").exists()


def test_over_tcp_there_is_no_bell_and_no_nap(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, answers, dealer = _pair(ctx, "tcp://127.0.0.1:*")
    waits = LoopWait(router, answers, "tcp://127.0.0.1:1")
    try:
        assert waits.bell is None
        assert not waits.may_nap()
    finally:
        waits.close()
        _close(router, answers, dealer)


# ------------------------------------------------------------------ the server loop


class _Rank:
    """Rank 0 of a 1-rank run, speaking the wire protocol on its own DEALER socket."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.ringer = Ringer(endpoint)

    def send(self, kind: int, seq: int, body: bytes, *, ring: bool) -> None:
        self.sock.send_multipart([wire.encode_envelope(kind, RUN, 0, 1, seq), body])
        if ring:
            self.ringer.ring()

    def replies(self, kinds: set[int], timeout_s: float = 20.0) -> dict[int, float]:
        """When each reply of ``kinds`` came (monotonic), reading until all of them did (others skipped)."""
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout_s
        while not kinds <= seen.keys():
            left_ms = int((deadline - time.monotonic()) * 1000)
            assert left_ms > 0 and self.sock.poll(left_ms), f"no reply of each of {kinds} within {timeout_s} s: {seen}"
            head, _ = self.sock.recv_multipart()
            seen.setdefault(wire.decode_envelope(head).kind, time.monotonic())
        return seen

    def close(self) -> None:
        self.ringer.close()
        self.sock.close(linger=0)


@pytest.fixture
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx: zmq.Context[zmq.Socket[bytes]], request: pytest.FixtureRequest
) -> Iterator[tuple[Server, _Rank]]:
    """A server loop on a thread (long ack window) and its rank, welcomed; the endpoint is ipc unless marked tcp."""
    monkeypatch.setattr(server_mod, "_ACK_COMMIT_INTERVAL_S", _LONG_WINDOW_S)
    endpoint = "tcp://127.0.0.1:*" if getattr(request, "param", "ipc") == "tcp" else f"ipc://{tmp_path}/agg.sock"
    srv = Server(Aggregator(make_cfg(tmp_path, world=1)), endpoint)
    loop = threading.Thread(target=srv.serve, name="test-server-loop")
    loop.start()
    rank = _Rank(ctx, srv.endpoint)
    try:
        rank.send(wire.HELLO, 1, wire.encode_map({"pid": 1, "host": "h"}), ring=True)
        rank.replies({wire.WELCOME})
        yield srv, rank
    finally:
        srv.stopping = True
        loop.join(30)
        rank.close()
        srv.close()
        srv.agg.store.close()
    assert not loop.is_alive(), "the server loop did not stop"


def _batch_then_state(rank: _Rank, *, ring: bool) -> tuple[float, float, float]:
    """Send a batch, then a STATE; returns (sent, STATE answered, batch acked), monotonic."""
    rank.send(wire.BATCH, 1, payload({"loss": {0: 1.0}}), ring=False)
    time.sleep(0.2)  # the loop has read the batch and naps until the window's end
    sent = time.monotonic()
    rank.send(wire.STATE, 1, wire.encode_map({"forward": 1}), ring=ring)
    seen = rank.replies({wire.STATE_REPLY, wire.ACK})
    return sent, seen[wire.STATE_REPLY], seen[wire.ACK]


def test_a_request_that_rings_is_answered_before_the_napped_window_ends(served: tuple[Server, _Rank]) -> None:
    srv, rank = served
    sent, answered, acked = _batch_then_state(rank, ring=True)
    assert answered - sent < _LONG_WINDOW_S / 2
    assert acked - sent < _LONG_WINDOW_S / 2  # the ring's short window commits the batch too
    assert srv.waits.naps >= 1


def test_a_request_that_does_not_ring_waits_for_the_napped_window(served: tuple[Server, _Rank]) -> None:
    """The nap is real: without the ring the STATE is read with the batches, at the window's end."""
    srv, rank = served
    sent, answered, acked = _batch_then_state(rank, ring=False)
    assert answered - sent >= _LONG_WINDOW_S / 2
    assert abs(answered - acked) < _LONG_WINDOW_S / 2  # one commit answered both
    assert srv.waits.naps >= 1


@pytest.mark.parametrize("served", ["tcp"], indirect=True)
def test_over_tcp_a_request_is_read_as_it_arrives(served: tuple[Server, _Rank]) -> None:
    srv, rank = served
    sent, answered, _ = _batch_then_state(rank, ring=False)
    assert answered - sent < _LONG_WINDOW_S / 2
    assert srv.waits.naps == 0
