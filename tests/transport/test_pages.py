"""The page pool: a map is reused only once its array and every view of it are gone, ZeroMQ's zero-copy view too."""

from __future__ import annotations

import time

import numpy as np
import zmq

from coordinator.transport import pages
from coordinator.transport.pages import PagePool

_N = 200_000


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_map_goes_back_to_the_pool_when_its_array_and_every_view_of_it_are_gone() -> None:
    pool = PagePool(capacity=1 << 20, keep=4)
    a = pool.take(_N)
    assert a.nbytes == _N and a.flags.writeable and pool.in_use == 1
    first = _address(a)
    view = memoryview(a).toreadonly()[10:]
    del a
    assert pool.in_use == 1 and pool.idle == 0, "a view keeps the array, and so its map, in use"
    b = pool.take(_N)
    assert _address(b) != first and pool.made == 2, "a map in use is never handed out twice"
    del view
    assert pool.in_use == 1 and pool.idle == 1
    c = pool.take(_N // 2)
    assert _address(c) == first and pool.made == 2, "the idle map is reused"
    del b, c
    assert pool.in_use == 0 and pool.idle == 2


def test_the_pool_keeps_at_most_keep_idle_maps() -> None:
    pool = PagePool(capacity=1 << 20, keep=2)
    arrays = [pool.take(_N) for _ in range(5)]
    assert pool.made == 5 and pool.in_use == 5
    del arrays
    assert pool.idle == 2 and pool.in_use == 0, "the maps past `keep` are unmapped"
    again = [pool.take(_N) for _ in range(3)]
    assert pool.made == 6, "two reused, one made"
    del again


def test_a_payload_larger_than_the_capacity_gets_a_map_of_its_own() -> None:
    pool = PagePool(capacity=1 << 16, keep=2)
    a = pool.take((1 << 16) + 1)
    a[:] = 7
    assert a.nbytes == (1 << 16) + 1 and pool.unpooled == 1 and pool.made == 0 and pool.in_use == 0
    del a
    assert pool.idle == 0


def test_a_map_is_not_reused_while_zeromq_still_holds_its_zero_copy_send() -> None:
    """A payload sent zero-copy stays intact until the receiver has it; only then does its map come back."""
    pool = PagePool(capacity=1 << 20, keep=4)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://pages")
        push.connect("inproc://pages")
        a = pool.take(_N)
        a[:] = np.arange(_N, dtype=np.uint64).astype(np.uint8)
        expected = a.tobytes()
        push.send(memoryview(a).toreadonly(), copy=False)  # >= 64 KiB: pyzmq keeps a reference until libzmq is done
        del a
        assert pool.in_use == 1 and pool.idle == 0
        other = pool.take(_N)
        other[:] = 0xFF  # were the queued message's map reused, this would overwrite it
        assert pool.made == 2
        assert pull.poll(5000), "the message did not arrive"
        got = pull.recv(copy=True)
        assert got == expected, "the payload changed while ZeroMQ held it"
        del other
        deadline = time.monotonic() + 10
        while pool.in_use and time.monotonic() < deadline:  # pyzmq's collector thread lets go of it
            time.sleep(0.01)
        assert pool.in_use == 0 and pool.idle == 2
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_the_process_pool_backs_take() -> None:
    a = pages.take(1000)
    assert a.nbytes == 1000 and a.dtype == np.uint8 and a.base is not None
