"""Confirmation of a rank's calls: ``wait()`` (durable, then forwarded), state and value requests.

Everything here blocks the caller until the aggregator answers through the sender thread, and
turns a failure into an error that says where it stuck (endpoint, last answer, spool, backend).
"""

from __future__ import annotations

import sys
import time
from array import array
from typing import Any

from coordinator.client.ringlog import RingLog
from coordinator.errors import ClosedError, CoordinatorError, CoordinatorTimeoutError, ProtocolError, SinkError
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.requests import Request
from coordinator.transport.sender import SenderThread

__all__ = ["MAX_QUEUED_ERRORS", "PAGE_POINTS", "Delivery", "ErrorQueue", "Series", "TextSeries"]

MAX_QUEUED_ERRORS = 100
"""Background errors kept for the next ``wait()``; later ones are only counted."""

PAGE_POINTS = 1_000_000
"""Points asked for per ``QUERY values`` page (16 MB of reply; the aggregator's cap)."""

Series = tuple["array[int]", "array[float]"]
"""A stored series as columns: its steps and its values."""

TextSeries = tuple["array[int]", list[str]]
"""A rank's stored text series: its steps and its texts."""


class ErrorQueue(list[CoordinatorError]):
    """The buffer's errors awaiting the next ``wait()``: the first ``limit`` kept, the rest counted.

    A sender that fails every batch for hours (a store that refuses writes) must not grow the
    training process's memory; ``Buffer.fail`` appends here.
    """

    def __init__(self, limit: int = MAX_QUEUED_ERRORS) -> None:
        super().__init__()
        self.limit = limit
        self.more = 0
        """Errors past ``limit``, not kept."""

    def append(self, err: CoordinatorError) -> None:
        if len(self) < self.limit:
            super().append(err)
        else:
            self.more += 1


class Delivery:
    """One rank's requests to the aggregator, and waits for its acknowledgements.

    Args:
        run_id, rank, endpoint: who asks whom (for error messages).
        buf: the run's buffer (its generations are what ``wait()`` waits for).
        sender: the rank's sender thread; ``None`` (disabled, read-only) makes every wait return.
        offline: a spool-only run: nothing to ask, nothing forwarded.
        forwarded: the run feeds external trackers, so ``wait()`` also waits for them.
        ring: the rank's ring (``Settings.rings``): ``wait()``'s STATE is answered after a commit
            that read it, so its rows need no wait of their own, only their count when it times out.
    """

    __slots__ = ("_buf", "_endpoint", "_forwarded", "_live", "_rank", "_run_id", "_sender", "ring")

    def __init__(
        self,
        *,
        run_id: str,
        rank: int,
        endpoint: str | None,
        buf: Buffer,
        sender: SenderThread | None,
        offline: bool,
        forwarded: bool,
        ring: RingLog | None = None,
    ) -> None:
        self.ring = ring
        self._run_id = run_id
        self._rank = rank
        self._endpoint = endpoint
        self._buf = buf
        self._sender = sender
        self._live = sender is not None and not offline
        self._forwarded = forwarded and self._live

    @property
    def live(self) -> bool:
        """There is an aggregator to ask (not disabled, read-only or offline)."""
        return self._live

    def wait(self, timeout: float | None) -> None:
        """Every call made before now is durable and, with trackers, forwarded (see ``Run.wait``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_acked(timeout, deadline)
        if self._forwarded:
            self._wait_forwarded(self._buf.journal, timeout, deadline)
        elif self._live and self._sender is not None:
            # An ack may stand on a staged commit (the aggregator writes rank points as chunk rows
            # about once a second); any STATE makes it write them before replying, so a reader in
            # another process sees every point once wait() returns. The cheapest STATE asks only
            # for the forwarders' positions.
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                self.request(wire.STATE, {"forward": 1}, left)
            except CoordinatorTimeoutError:
                if self.ring is None:
                    raise
                n = self.ring.points - self.ring.confirmed()
                raise CoordinatorTimeoutError(
                    f"rank {self._rank}: {n} points of its ring not confirmed by the aggregator at {self._endpoint} "
                    f"within {timeout} s (they stay in {self.ring.path} for it){self._liveness_hint()}",
                    endpoint=self._endpoint,
                    undelivered_points=n,
                ) from None

    def wait_acked(self, timeout: float | None, deadline: float | None) -> None:
        """Block until every call made before now is committed to the store (acknowledged).

        Raises:
            CoordinatorTimeoutError: not acknowledged by ``deadline``. ClosedError: the sender
            thread died. CoordinatorError: the first delivery error the sender recorded.
        """
        if self._sender is None:
            return
        b = self._buf
        with b.lock:
            target = b.gen
            b.flush_requested = True
            b.awaiting += 1  # before the wake: the sender then listens for the ack at once
        try:
            self._sender.wake()
            self._wait_for_gen(target, timeout, deadline)
        finally:
            with b.lock:
                b.awaiting -= 1

    def _wait_for_gen(self, target: int, timeout: float | None, deadline: float | None) -> None:
        """Block until generation ``target`` is acknowledged (``wait_acked``'s loop)."""
        assert self._sender is not None
        b = self._buf
        with b.lock:
            while b.acked_gen < target:
                self._raise_pending_errors()
                if not self._sender.is_alive():
                    raise ClosedError(
                        f"run {self._run_id}: the sender thread stopped with {b.pending + b.in_flight} points "
                        "undelivered"
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    n = b.pending + b.in_flight + (0 if self.ring is None else self.ring.points - self.ring.confirmed())
                    raise CoordinatorTimeoutError(
                        f"rank {self._rank}: {n} points not confirmed by the aggregator "
                        f"at {self._endpoint} within {timeout} s{self._liveness_hint()}{self._spool_hint()}",
                        endpoint=self._endpoint,
                        undelivered_points=n,
                    )
                b.cond.wait(0.25 if left is None else min(left, 0.25))
            self._raise_pending_errors()

    def request(self, kind: int, payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send a control request (STATE, QUERY, BYE) through the sender and wait for its reply.

        Raises:
            CoordinatorTimeoutError: no reply in time. CoordinatorError: the request failed.
        """
        assert self._sender is not None
        return self._sender.submit(Request(kind, payload)).result(timeout, self._endpoint)

    def state(self, timeout: float | None) -> dict[str, Any] | None:
        """The aggregator's view (fields, last values, rank states); ``None`` when there is none to ask."""
        if not self._live:
            return None
        return self.request(wire.STATE, {}, timeout)

    def fetch_values(
        self, key: str, rank: int, timeout: float | None, page: int | None = None, *, mode: str = ""
    ) -> Series | TextSeries:
        """The stored series ``key`` of ``rank``, asked for page by page (see ``Handle.fetch_values``).

        A text series comes back as its steps and a list of its texts. ``timeout`` covers every
        page. Raises ProtocolError for a malformed page, CoordinatorError without a live aggregator
        (the run's ``mode`` says why).
        """
        if not self._live:
            raise CoordinatorError(f"fetch_values() needs a live aggregator (mode={mode})")
        deadline = None if timeout is None else time.monotonic() + timeout
        steps: array[int] = array("q")
        values: array[float] = array("d")
        texts: list[str] | None = None
        after = -1
        while True:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            q = {"op": "values", "key": key, "rank": rank, "after": after, "limit": page or PAGE_POINTS}
            rep = self.request(wire.QUERY, q, left)
            if "texts" in rep:
                texts = [] if texts is None else texts
                nxt = add_text_page(steps, texts, rep)
            else:
                nxt = add_page(steps, values, rep)
            if nxt is None:
                return (steps, values) if texts is None else (steps, texts)
            if nxt <= after:
                raise ProtocolError(f"the aggregator's pages of {key!r} do not advance (next {nxt} after {after})")
            after = nxt

    def _wait_forwarded(self, position: int, timeout: float | None, deadline: float | None) -> None:
        """Poll the aggregator until every forwarder's cursor passed ``position`` in the journal.

        With a ring, ``position`` becomes the first reply's at least: that reply came after a commit that read
        the ring, and its position (``j``) covers the rows written into it before the call.
        """
        first = self.ring is not None
        while True:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            rep = self.request(wire.STATE, {"forward": 1}, left)
            if first:
                first = False
                j = rep.get("j")
                position = max(position, j if type(j) is int else position)
            behind = []
            for name, (cursor, error, *texts_cursor) in rep.get("forward", {}).items():
                if error:
                    raise SinkError(f"rank {self._rank}: the {name} backend failed: {error}")
                # A forwarder that reports a text cursor (third item) must also have passed the texts' position.
                if cursor < position or (texts_cursor and texts_cursor[0] < self._buf.journal_texts):
                    behind.append(name)
            if not behind:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise CoordinatorTimeoutError(
                    f"rank {self._rank}: the points are durable in the store, but {', '.join(behind)} had not "
                    f"received them within {timeout} s (the forwarder keeps retrying; "
                    f"see `coordinator show {self._run_id}`)",
                    endpoint=self._endpoint,
                )
            time.sleep(0.05)

    def _raise_pending_errors(self) -> None:
        b = self._buf
        if b.fatal is not None:
            raise b.fatal
        if b.errors:
            errs, b.errors = b.errors, ErrorQueue()
            first = errs[0]
            more = len(errs) - 1 + (errs.more if isinstance(errs, ErrorQueue) else 0)
            if more:
                first.add_note(f"{more} more error(s): " + "; ".join(str(e) for e in errs[1:4]))
            raise first

    def _spool_hint(self) -> str:
        sp = self._sender.spool if self._sender is not None else None
        if sp is None or not sp.size_bytes:
            return ""
        return f"; unacknowledged batches are kept in {sp.dir} (deliver later with `coordinator sync {self._run_id}`)"

    def _liveness_hint(self) -> str:
        if self._sender is None:
            return ""
        last = self._sender.last_reply_at
        if last == 0:
            return " (it never answered)"
        return f" (last answer {time.monotonic() - last:.1f} s ago)"


def add_page(steps: array[int], values: array[float], rep: dict[str, Any]) -> int | None:
    """Append one ``QUERY values`` reply (little-endian int64 steps, float64 values) to the columns.

    Returns the reply's ``next`` (the ``after`` of the next page; ``None``: the series is complete).
    Raises ProtocolError for a malformed page.
    """
    sb, vb, nxt = rep.get("steps"), rep.get("values"), rep.get("next")
    if type(sb) is list and type(vb) is list and "next" not in rep:  # an aggregator from before paging
        steps.extend(sb)
        values.extend(vb)
        return None
    if type(sb) is not bytes or type(vb) is not bytes or len(sb) % 8 or len(sb) != len(vb):
        raise ProtocolError("malformed page of values from the aggregator")
    if nxt is not None and type(nxt) is not int:
        raise ProtocolError(f"malformed page cursor {nxt!r:.40} from the aggregator")
    s: array[int] = array("q", sb)
    v: array[float] = array("d", vb)
    if sys.byteorder == "big":
        s.byteswap()
        v.byteswap()
    steps.extend(s)
    values.extend(v)
    return nxt


def add_text_page(steps: array[int], texts: list[str], rep: dict[str, Any]) -> int | None:
    """Append one ``QUERY values`` reply of a text series (LE int64 steps, a list of str) to ``steps``/``texts``.

    Returns the reply's ``next``; raises ProtocolError for a malformed page.
    """
    sb, tl, nxt = rep.get("steps"), rep.get("texts"), rep.get("next")
    if type(sb) is not bytes or type(tl) is not list or len(sb) != 8 * len(tl) or any(type(t) is not str for t in tl):
        raise ProtocolError("malformed page of texts from the aggregator")
    if nxt is not None and type(nxt) is not int:
        raise ProtocolError(f"malformed page cursor {nxt!r:.40} from the aggregator")
    s: array[int] = array("q", sb)
    if sys.byteorder == "big":
        s.byteswap()
    steps.extend(s)
    texts.extend(tl)
    return nxt
