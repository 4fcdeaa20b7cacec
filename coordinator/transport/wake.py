"""The sender thread's wake-up pipe: any thread ends its poll early by writing a byte."""

from __future__ import annotations

import os
import threading

__all__ = ["WakePipe"]


class WakePipe:
    """A self-pipe: any thread writes to it to end the sender thread's poll early."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        # wake() may come from any thread after the sender closed the pipe (a wait() racing the
        # thread's exit); the fd number may by then belong to another file, so never write to it.
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"x")
            except BlockingIOError:
                pass  # the pipe is full, so a wake-up is already pending: nothing is lost

    def drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass  # empty: every wake-up consumed

    def close(self) -> None:
        """Close both ends, once: a second close must not close what reused the fd numbers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self.fd)
            os.close(self._w)
