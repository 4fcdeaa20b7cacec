"""The sender loop's wait, reply reads and sends, on real ZeroMQ sockets and a real wake-up pipe."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import zmq

from coordinator.transport.loopio import LoopIO
from coordinator.transport.wake import WakePipe


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe]]:
    """A DEALER (the sender's side) connected to a ROUTER (the aggregator's), and a wake-up pipe."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://loopio")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect("inproc://loopio")
    wake = WakePipe()
    yield dealer, router, wake
    wake.close()
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def _reply(dealer: zmq.Socket[bytes], router: zmq.Socket[bytes], *bodies: bytes) -> None:
    """Have the router send each of ``bodies`` back to the dealer as a two-frame reply."""
    dealer.send_multipart([b"hello", b"x"])
    ident, _, _ = router.recv_multipart()
    for body in bodies:
        router.send_multipart([ident, b"env", body])
    assert dealer.poll(1000, zmq.POLLIN)


def test_a_quiet_wait_ends_on_a_wake_up_only_and_reports_the_replies_queued_meanwhile(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe],
) -> None:
    dealer, router, wake = pair
    io = LoopIO(dealer, wake.fd)
    assert io.wait(0, listen=False) == (False, False)
    _reply(dealer, router, b"a")
    t0 = time.monotonic()
    assert io.wait(50, listen=False) == (False, True)  # the reply is reported...
    assert time.monotonic() - t0 >= 0.045  # ...at the end of the timeout: it did not end the wait
    wake.wake()
    t0 = time.monotonic()
    assert io.wait(5000, listen=False) == (True, True)
    assert time.monotonic() - t0 < 2.5  # the wake-up ended it
    wake.drain()
    assert list(io.replies()) == [[b"env", b"a"]]
    assert io.wait(0, listen=False) == (False, False)


def test_a_listening_wait_ends_on_a_reply_or_a_wake_up(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe],
) -> None:
    dealer, router, wake = pair
    io = LoopIO(dealer, wake.fd)
    assert io.wait(10, listen=True) == (False, False)
    _reply(dealer, router, b"a")
    assert io.wait(1000, listen=True) == (False, True)
    wake.wake()
    assert io.wait(1000, listen=True) == (True, True)


def test_replies_reads_every_queued_message_in_order_then_stops(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe],
) -> None:
    dealer, router, wake = pair
    io = LoopIO(dealer, wake.fd)
    assert list(io.replies()) == []
    _reply(dealer, router, b"a", b"b", b"c")
    assert list(io.replies()) == [[b"env", b"a"], [b"env", b"b"], [b"env", b"c"]]
    assert list(io.replies()) == []


def test_send_queues_a_whole_message_or_reports_a_full_queue(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe],
) -> None:
    dealer, router, wake = pair
    io = LoopIO(dealer, wake.fd)
    assert io.send([b"env", b"body"]) is True
    assert router.recv_multipart()[1:] == [b"env", b"body"]
    ctx = zmq.Context.instance()
    lonely = ctx.socket(zmq.DEALER)  # no peer: a non-blocking send finds no room
    try:
        assert LoopIO(lonely, wake.fd).send([b"env", b"body"]) is False
    finally:
        lonely.close(linger=0)


def test_every_wait_calls_woke_once_as_its_poll_returns(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes], WakePipe],
) -> None:
    """The sender's GIL slicer starts its stretch there, before the socket is looked at."""
    dealer, _router, wake = pair
    calls: list[bool] = []
    io = LoopIO(dealer, wake.fd, lambda: calls.append(True))
    io.wait(0, listen=False)
    io.wait(0, listen=True)
    wake.wake()
    io.wait(1000, listen=False)
    assert calls == [True, True, True]


_FIRST_SEND = """
import zmq
from zmq.utils.garbage import gc
from coordinator.transport.loopio import LoopIO
from coordinator.transport.wake import WakePipe

ctx = zmq.Context()
pull, dealer = ctx.socket(zmq.PULL), ctx.socket(zmq.DEALER)
pull.bind("inproc://first")
dealer.connect("inproc://first")
wake = WakePipe()
assert not gc.is_alive(), "pyzmq's collector runs before any zero-copy send"
io = LoopIO(dealer, wake.fd)
print("started", gc.is_alive())
assert io.send([memoryview(bytes(1 << 17))])
assert pull.poll(5000) and len(pull.recv()) == 1 << 17
wake.close()
dealer.close(linger=0)
pull.close(linger=0)
ctx.term()
"""


def test_making_the_loop_io_starts_what_zero_copy_sends_need_so_the_first_one_does_not() -> None:
    """pyzmq starts its garbage-collector thread inside the first zero-copy send (hundreds of µs
    holding the GIL, mid-training); the sender's loop starts it when it is made, at start-up."""
    out = subprocess.run([sys.executable, "-c", _FIRST_SEND], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "started True" in out.stdout, out.stdout
