"""The sender's wake-up pipe: a wake after the sender closed it must not touch a reused fd."""

from __future__ import annotations

import os

from coordinator.transport.wake import WakePipe


def test_wake_after_close_writes_nothing_into_a_file_that_reused_the_descriptor() -> None:
    """A wait() racing the sender's exit would otherwise write into whatever file got the fd number."""
    pipe = WakePipe()
    w = pipe._w
    pipe.close()
    r2, w2 = os.pipe()  # the lowest free numbers: typically the ones just closed
    try:
        os.set_blocking(r2, False)
        pipe.wake()
        got = b""
        try:
            got = os.read(r2, 16)
        except BlockingIOError:
            pass  # empty, as it must be
        assert got == b"", f"wake() wrote into fd {w}, now another pipe"
    finally:
        os.close(r2)
        os.close(w2)


def test_wake_before_close_is_seen_by_the_sender() -> None:
    """The normal case still wakes the poll: the read end has a byte to drain."""
    pipe = WakePipe()
    try:
        pipe.wake()
        assert os.read(pipe.fd, 16) == b"x"
    finally:
        pipe.close()


def test_a_second_close_leaves_a_file_that_reused_the_descriptors_open() -> None:
    """close() twice (two clean-up paths) would otherwise close whatever now has those numbers."""
    pipe = WakePipe()
    numbers = (pipe.fd, pipe._w)
    pipe.close()
    r2, w2 = os.pipe()
    try:
        os.dup2(r2, numbers[0])
        os.dup2(w2, numbers[1])
        pipe.close()
        os.write(numbers[1], b"y")
        assert os.read(numbers[0], 16) == b"y"
    finally:
        for fd in {r2, w2, *numbers}:
            os.close(fd)
