"""Reads answered off the ingest loop: a reader thread with its own read-only journal connection.

A ``QUERY`` (``op="values"``: one page of a series, see docs/protocol.md) can read up to a
million points; answered by the server loop it would stall every rank's acks. The loop hands it
here once the round it arrived in is committed (so the answer holds everything acked before it);
the reader builds the reply and passes the encoded frames back over an ``inproc`` socket, which
the loop forwards to the rank. The loop only moves bytes.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from array import array
from pathlib import Path
from typing import Any

import zmq

from coordinator.core.columns import to_le
from coordinator.errors import ProtocolError, SinkError
from coordinator.journal.reader import MAX_PAGE_POINTS
from coordinator.journal.store import MAIN_RANK, LocalStore
from coordinator.transport import wire

__all__ = ["MAX_QUERY_BACKLOG", "QueryReader", "answer"]

_log = logging.getLogger("coordinator.aggregator")

MAX_QUERY_BACKLOG = 64
"""Queries waiting for the reader; past it a query is refused (``ERROR busy``) rather than queued."""

_Job = tuple[bytes, wire.Envelope, dict[str, Any]] | None


def answer(store: LocalStore, q: dict[str, Any]) -> dict[str, Any]:
    """The reply to one query: ``{"steps": LE int64 bytes, "values": LE float64 bytes, "next": int | None}``.

    For a text series the reply has ``"texts"`` (a list of str) instead of ``"values"``, its pages
    bounded in count and bytes (:mod:`coordinator.journal.texts`).

    Raises:
        ProtocolError: an unknown op or a malformed request (``code="bad_query"``), or the main
            series (rank -1) of a text series, which has none.
    """
    if q.get("op") != "values":
        raise ProtocolError(f"unknown query {q.get('op')!r:.40}", code="bad_query")
    key, rank, after, limit = q.get("key"), q.get("rank", MAIN_RANK), q.get("after", -1), q.get("limit")
    if limit is None:
        limit = MAX_PAGE_POINTS
    if type(key) is not str or any(type(x) is not int for x in (rank, after, limit)) or limit <= 0:
        raise ProtocolError("query needs key (str), rank, after (int) and limit (int > 0)", code="bad_query")
    if store.is_text(key):
        if rank < 0:
            raise ProtocolError(f"{key!r} is a text series: texts are per rank; ask for a rank's", code="bad_query")
        tp = store.text_page(key, rank, after, limit)
        return {"steps": to_le(array("q", tp.steps)), "texts": tp.texts, "next": tp.next}
    page = store.values_page(key, rank, after, min(limit, MAX_PAGE_POINTS))
    return {"steps": to_le(page.steps), "values": to_le(page.values), "next": page.next}


class QueryReader:
    """One thread answering queries from its own read-only connection to the run's journal.

    :meth:`submit` and :meth:`stop` are called by the server loop; the replies arrive, encoded, on
    the ``PULL`` socket :attr:`replies` (poll it, forward each message to the ROUTER as it is).
    """

    def __init__(self, ctx: zmq.Context[Any], store_path: str | Path, run_id: str) -> None:
        """Bind the reply channel and start the thread (the store is opened by the thread)."""
        self._path = Path(store_path)
        self._run_id = run_id
        self._endpoint = f"inproc://coordinator-queries-{id(self)}"
        self.replies = ctx.socket(zmq.PULL)
        self.replies.bind(self._endpoint)
        self._ctx = ctx
        self._jobs: queue.Queue[_Job] = queue.Queue(MAX_QUERY_BACKLOG)
        self.answered = 0
        self.failures = 0
        """Queries answered with an error other than a bad request (a store that cannot be read)."""
        self._thread = threading.Thread(target=self._main, name="coordinator-queries", daemon=True)
        self._thread.start()

    def submit(self, ident: bytes, env: wire.Envelope, q: dict[str, Any]) -> bool:
        """Queue one query; False when the backlog is full (the caller refuses it)."""
        try:
            self._jobs.put_nowait((ident, env, q))
        except queue.Full:
            return False
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the queued queries and end the thread (the owner then closes :attr:`replies`)."""
        if self._thread.is_alive():
            try:
                self._jobs.put(None, timeout=timeout_s)
            except queue.Full:
                _log.error("query reader still busy after %.0f s", timeout_s)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("query reader did not stop within %.0f s", timeout_s)
        if self.failures:
            _log.warning("%d queries could not be answered (see the errors above)", self.failures)

    def _main(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.connect(self._endpoint)
        store: LocalStore | None = None
        try:
            while (job := self._jobs.get()) is not None:
                ident, env, q = job
                try:
                    if store is None:
                        store = LocalStore(self._path, readonly=True)
                    kind, payload = wire.QUERY_REPLY, answer(store, q)
                    self.answered += 1
                except ProtocolError as e:
                    kind, payload = wire.ERROR, {"code": e.code, "message": str(e), "re": env.kind}
                except (SinkError, sqlite3.Error, OSError, ValueError, TypeError) as e:
                    self.failures += 1
                    _log.error("query %r of %.80r failed: %s", q.get("op"), q.get("key"), e)
                    kind, payload = wire.ERROR, {"code": "sink", "message": f"query failed: {e}", "re": env.kind}
                head = wire.encode_envelope(kind, self._run_id, env.rank, env.incarnation, env.seq)
                push.send_multipart([ident, head, wire.encode_map(payload)])
        finally:
            if store is not None:
                store.close()
            push.close(linger=1000)
