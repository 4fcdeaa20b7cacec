"""Control requests (STATE, QUERY, BYE): the API thread's round trips through the sender thread.

The API thread queues a :class:`Request` and blocks on it; the sender thread sends it under a
request id and resolves it when the reply carrying that id (or an error) comes back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from coordinator.errors import CoordinatorError, CoordinatorTimeoutError
from coordinator.transport import wire

__all__ = ["Request", "RequestTable"]


class Request:
    """A control request (STATE, QUERY, BYE) from the API thread and its eventual reply."""

    def __init__(self, kind: int, payload: dict[str, Any]) -> None:
        self.kind = kind
        self.payload = payload
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: CoordinatorError | None = None

    def answer(self, reply: dict[str, Any]) -> None:
        """Complete the request with ``reply`` (sender thread)."""
        self.reply = reply
        self.done.set()

    def refuse(self, err: CoordinatorError) -> None:
        """Complete the request with ``err``, raised by :meth:`result` (sender thread)."""
        self.error = err
        self.done.set()

    def result(self, timeout: float | None, endpoint: str | None) -> dict[str, Any]:
        """Block until the reply arrives.

        Raises:
            CoordinatorTimeoutError: no reply within ``timeout`` seconds.
            CoordinatorError: the aggregator answered with an error.
        """
        if not self.done.wait(timeout):
            raise CoordinatorTimeoutError(
                f"no reply to {wire.kind_name(self.kind)} from the aggregator at {endpoint} within {timeout} s",
                endpoint=endpoint,
            )
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class RequestTable:
    """Requests queued by the API thread, and those sent and awaiting the reply with their id."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._open: dict[int, Request] = {}
        self._last_id = 0

    def put(self, req: Request) -> None:
        """Queue ``req`` for the sender thread (any thread)."""
        self._queue.put(req)

    @property
    def queued(self) -> bool:
        """Whether a request waits to be taken: the sender looks every wake-up, almost always in vain.

        A C-level check, where :meth:`take` would build a generator and raise ``queue.Empty``.
        """
        return not self._queue.empty()

    def take(self) -> Iterator[Request]:
        """The queued requests, oldest first, each removed from the queue as it is yielded."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def open(self, req: Request) -> int:
        """Register ``req`` as sent and return the request id its reply will carry."""
        self._last_id += 1
        self._open[self._last_id] = req
        return self._last_id

    @property
    def awaiting(self) -> bool:
        """True while a sent request waits for its reply."""
        return bool(self._open)

    def answer(self, req_id: int, reply: dict[str, Any]) -> None:
        """Complete the open request ``req_id`` with ``reply`` (a reply nobody waits for is dropped)."""
        req = self._open.pop(req_id, None)
        if req is not None:
            req.answer(reply)

    def refuse(self, req_id: int, err: CoordinatorError) -> bool:
        """Complete the open request ``req_id`` with ``err``; False when no request has that id."""
        req = self._open.pop(req_id, None)
        if req is None:
            return False
        req.refuse(err)
        return True

    def fail_all(self, err: CoordinatorError) -> None:
        """Complete every open and queued request with ``err`` (the sender cannot serve them)."""
        for req in self._open.values():
            req.refuse(err)
        self._open.clear()
        for req in self.take():
            req.refuse(err)
