"""The page pool: a map is reused only once its array and every view of it are gone, ZeroMQ's zero-copy view too."""

from __future__ import annotations

import gc
import mmap
import os
import time
from array import array
from pathlib import Path

import numpy as np
import pytest
import zmq

from coordinator.transport import pages
from coordinator.transport.pages import PagePool, give_back

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


def _mapped(address: int) -> bool:
    """Whether a map of this process starts at ``address`` (``/proc/self/maps``)."""
    start = f"{address:x}-"
    return any(line.startswith(start) for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's maps from /proc")
def test_a_map_the_pool_does_not_keep_is_unmapped_once_its_array_is_gone() -> None:
    """A map past ``keep``, and the own map of a payload larger than the capacity, go back to the
    system when the last view of their array goes, not before."""
    pool = PagePool(capacity=1 << 20, keep=0)
    a = pool.take(_N)
    big = pool.take((1 << 20) + 1)
    big[-1] = 9
    at, big_at = _address(a), _address(big)
    view, big_view = memoryview(a)[5:], big[10:]
    del a, big
    assert _mapped(at) and _mapped(big_at), "a view keeps the map"
    assert big_view[-1] == 9
    del view, big_view
    assert not _mapped(at) and not _mapped(big_at)
    assert pool.idle == 0 and pool.in_use == 0


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's maps from /proc")
def test_the_idle_maps_of_a_pool_that_goes_are_unmapped() -> None:
    pool = PagePool(capacity=1 << 20, keep=2)
    a = pool.take(_N)
    at = _address(a)
    del a
    assert pool.idle == 1 and _mapped(at)
    del pool
    gc.collect()  # the pool and its arrays' weak references form a cycle
    assert not _mapped(at)


def test_without_libcs_mmap_the_pool_makes_its_maps_with_the_mmap_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libc's ``mmap`` cannot be called through ctypes, the maps still come, reused the same way."""
    monkeypatch.setattr(pages, "_MMAP", None)
    pool = PagePool(capacity=1 << 20, keep=1)
    a = pool.take(_N)
    a[:] = 3
    first = _address(a)
    del a
    b = pool.take(_N)
    assert _address(b) == first and pool.made == 1 and int(b[0]) == 3
    big = pool.take((1 << 20) + 1)
    big[:] = 1
    assert int(big.sum()) == (1 << 20) + 1
    del b, big


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


def _resident_bytes(a: np.ndarray) -> int:
    """Resident bytes of the map under ``a`` (its ``/proc/self/smaps`` entry starts at ``a``'s address)."""
    start = f"{_address(a):x}-"
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(start):
            for field in lines[i + 1 :]:
                if field.startswith("Rss:"):
                    return int(field.split()[1]) * 1024
    raise AssertionError(f"no map at {start}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads the map's resident size from /proc")
def test_a_map_is_faulted_in_before_it_is_handed_out_once_per_byte_range() -> None:
    """The pages a payload will be written to are resident before the write (faulted in with the
    GIL released), and only those: a reused map is faulted in again only past what it had."""
    pool = PagePool(capacity=1 << 20, keep=4)
    a = pool.take(_N)
    if _kernel() < (5, 14):
        assert not pool.populated and _resident_bytes(a) == 0
        pytest.skip("MADV_POPULATE_WRITE came with Linux 5.14: pages fault in when written")
    assert _N <= _resident_bytes(a) < _N + 2 * 4096, "the payload's pages, no more"
    first = _address(a)
    del a
    b = pool.take(_N // 2)
    assert _address(b) == first and pool.populated == 1, "pages already in are not faulted again"
    del b
    c = pool.take(3 * _N)
    assert _address(c) == first and pool.populated == 2 and _resident_bytes(c) >= 3 * _N
    del c


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the process's resident size from /proc")
def test_giving_back_an_arrays_pages_zeroes_whole_pages_only_and_shrinks_the_process() -> None:
    """The whole pages inside the buffer go (the process's resident size falls by them and they read
    as zeros); the partial pages at its ends, where the allocator keeps its own words, keep their bytes."""
    a = array("d", range(1, 2_000_001))  # 16 MB, every item non-zero
    address, n = a.buffer_info()
    page = mmap.PAGESIZE
    # The range starts and ends inside a page whatever the allocator's alignment (a large block may
    # start on a page boundary): items k and n - 1 - j sit on its partial pages.
    k = next(i for i in range(1, 3) if (address + 8 * i) % page)
    j = next(i for i in range(1, 3) if (address + 8 * (n - i)) % page)
    start, end = address + 8 * k, address + 8 * (n - j)
    before = _process_resident()
    assert give_back(start, end - start)
    assert before - _process_resident() > 14 * 2**20
    lo, hi = -(-start // page) * page, end // page * page
    first, last = (lo - address) // 8, (hi - address) // 8  # the items on whole pages: [first, last)
    assert k < first and last < n - j
    assert a[k] == k + 1 and a[first - 1] == first, "the partial first page is kept"
    assert a[first] == 0 and a[last - 1] == 0 and a[(first + last) // 2] == 0
    assert a[last] == last + 1 and a[n - 1 - j] == n - j, "the partial last page is kept"
    del a[:]


def _process_resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
