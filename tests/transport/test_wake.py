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
