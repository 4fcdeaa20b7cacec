"""The forwarder: feeds one external backend from the run's journal with its own durable cursor.

The embedded store is the journal (docs/architecture.md). A forwarder reads it read-only, in journal
order (chunk row ids), builds large batches, hands them to a :class:`~coordinator.forward.backend.Backend`,
and only once the backend accepted a batch (``flush()`` returned) moves its cursor, which it
keeps in ``<run dir>/forward-<backend>-<destination hash>.json`` (written to a temporary file, fsynced, then
``os.replace``-d). So:

* a slow or failing tracker never blocks the ranks or the aggregator: it only delays its own
  cursor; the journal keeps accepting;
* a crash loses nothing: the next forwarder resumes at the committed cursor;
* a crash never doubles what was committed: points after the cursor are re-sent as exactly the
  same batch (same steps, values and timestamps), which MLflow's SQL store recognises as
  duplicates and TensorBoard's writer cuts off (it truncates its event file to the size saved
  with the cursor). W&B and Neptune get the same points again for the at most one batch that
  was in flight; both drop non-increasing steps of a resumed run server-side (see their modules).

Retrying: every failed batch (network errors, 5xx, 429, a proxy's undecodable HTML page) is
retried unchanged with the backoff of :mod:`coordinator.core.retry`
(``base_backoff_s`` doubling up to ``max_backoff_s``, jittered), or after the server's
``Retry-After`` (up to ``max_retry_after_s``). Errors the backend marks as permanent
(:class:`~coordinator.forward.backend.BackendRejectedError`: bad request, refused credentials)
are tried ``max_rejected_attempts`` times, then the forwarder stops and reports the error; the
journal still holds everything, and ``coordinator sync <run> --to <backend>`` resumes from the
cursor once the cause is fixed.

Text series have their own position (the last text id), kept in the same cursor file and moved
in the same save; the run's tags and artifact fields ride with the fields (:mod:`.sending` says
how each reaches a tracker). This module is the loop; what a batch holds (replaced and stale points, per-rank names,
downsampling, changed fields) is :mod:`.batches`', the cursor file :mod:`.cursor`'s, and the
options :class:`~coordinator.forward.settings.ForwarderSettings`'.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coordinator.core.retry import Backoff
from coordinator.core.states import TRACKER_STATES
from coordinator.errors import SinkError
from coordinator.forward.backend import Backend, get_backend
from coordinator.forward.batches import Batch, BatchBuilder
from coordinator.forward.cursor import CursorFile, CursorState, destination_of, verified
from coordinator.forward.retrying import Interrupted, Retrying
from coordinator.forward.sending import send_batch
from coordinator.forward.settings import ForwarderSettings
from coordinator.journal.store import LocalStore

__all__ = ["Forwarder"]

_log = logging.getLogger(__name__)

_COUNTERS = (
    "forwarded_points",
    "forwarded_batches",
    "retries",
    "failed_points",
    "thinned_points",
    "dropped_points",
    "stale_points",
    "replaced_points",
    "name_collisions",
    "params_sent",
    "tags_sent",
    "restarts",
    "forwarded_texts",
    "dropped_texts",
    "replaced_texts",
    "stale_texts",
    "cut_texts",
    "texts_skipped",
    "files_sent",
    "missing_files",
)


class Forwarder(Retrying):
    """Feeds one backend from one run's journal.

    Thread-safety: one thread at a time (the thread running :meth:`run_until`, then the one
    calling :meth:`drain` after it returned). :meth:`start`/:meth:`close` wrap that for an owner.
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        backend_name: str,
        options: Mapping[str, object] | None = None,
        *,
        backend: Backend | None = None,
        from_start: bool = False,
    ) -> None:
        """Configure (nothing is opened or sent yet).

        Args:
            store_path: the run's ``run.db`` (opened read-only).
            backend_name: a registered backend (``mlflow``, ``tensorboard``, ``wandb``, ``neptune``).
            options: forwarder settings (:class:`ForwarderSettings` keys) and backend options.
            backend: an already built backend (tests, custom backends); ``options`` then only
                configure the forwarder.
            from_start: ignore the saved cursor and send the whole run again.

        Raises:
            ConfigError: unknown backend or a bad option. ImportError: the backend's client
            library is missing (the message names the extra).
        """
        self.store_path = Path(store_path)
        self.run_dir = self.store_path.parent
        self.backend_name = backend_name
        self.settings, backend_options = ForwarderSettings.split(options or {})
        if backend is None:
            backend = get_backend(backend_name)(backend_options, self.run_dir)
        self.backend: Backend = backend
        self._cursor_file = CursorFile(self.run_dir, backend_name, destination_of(backend))
        self.path = self._cursor_file.path
        self._from_start = from_start
        self._verified = False
        self._store: LocalStore | None = None
        self._opened = False
        self._state = CursorState()
        self._loaded = False
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._builder = BatchBuilder(backend_name, self.settings)
        cfg = self.settings
        self._backoff = Backoff(cfg.base_backoff_s, cfg.max_backoff_s, cfg.max_retry_after_s)
        self.error: SinkError | None = None
        self.last_error: str | None = None
        self._last_fields = -math.inf
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()

    # ------------------------------------------------------------------ owner API

    def start(self) -> None:
        """Run :meth:`run_until` in a daemon thread named ``coordinator-forwarder-<backend>``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.run_until, args=(self._stop,), name=f"coordinator-forwarder-{self.backend_name}", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float | None = None, *, final_state: str | None = None) -> dict[str, Any]:
        """Stop the thread, drain what is left within ``timeout``, finish the backend's run, release.

        Idempotent. Returns :meth:`stats`.

        Raises:
            SinkError: the forwarder failed or could not drain in time (it is released anyway;
                ``coordinator sync <run> --to <backend>`` resumes from the cursor).
        """
        with self._close_lock:
            if self._closed:
                return self.stats()
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if self._thread.is_alive():
                    raise SinkError(f"{self.backend_name}: the forwarder thread did not stop in time")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self.drain(left, final_state=final_state)
        finally:
            self.release()

    def abort(self, timeout: float | None = None) -> None:
        """Stop the thread without draining and release (a crash-like stop; the cursor stays durable)."""
        with self._close_lock:
            self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.release()

    def release(self) -> None:
        """Close the backend client, the store and the cursor lock (idempotent); does not finish the run."""
        if self._opened:
            self._opened = False
            try:
                self.backend.close()
            except Exception as e:  # closing a client must not hide the caller's outcome
                _log.warning("%s: closing the client failed: %s", self.backend_name, e)
        if self._store is not None:
            self._store.close()
            self._store = None
        self._cursor_file.release()

    # ------------------------------------------------------------------ loops

    def run_until(self, stop: threading.Event) -> None:
        """Forward continuously until ``stop`` is set or the forwarder failed; never raises.

        Meant as a thread's target. A failure is kept in :attr:`error` (and logged) and raised
        by :meth:`drain`/:meth:`close`.
        """
        try:
            while not stop.is_set() and self.error is None:
                try:
                    fields_due = time.monotonic() - self._last_fields >= self.settings.fields_interval_s
                    sent = self._cycle(stop=stop, deadline=None, with_fields=fields_due)
                except Interrupted:
                    return
                if not sent:
                    stop.wait(self.settings.poll_interval_s)
        except Exception as e:  # a thread must not die silently: keep it for drain()
            _log.exception("%s: forwarder stopped by an unexpected error", self.backend_name)
            self.error = SinkError(f"{self.backend_name}: forwarder stopped: {e!r}")

    def drain(
        self,
        timeout: float | None = None,
        *,
        final_state: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Forward everything committed so far, then the fields, then finish the backend's run.

        Blocks (network). The backend's run is finished with ``final_state``, or with the
        journal's run state once it has ended (finished, failed, interrupted); a running run is left open.

        Args:
            timeout: seconds for the whole drain, retries included (``None``: no limit).
            final_state: the run's end state, when the caller knows it before the journal does.
            progress: called with :meth:`stats` after every accepted batch.

        Returns:
            :meth:`stats`.

        Raises:
            SinkError: the forwarder failed, or points remain unsent at the deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.error is not None:
            raise self.error
        try:
            while self._cycle(stop=None, deadline=deadline, with_fields=False):
                if progress is not None:
                    progress(self.stats())
            self._cycle(stop=None, deadline=deadline, with_fields=True)
            store = self._open_store()
            state = final_state
            if state is None:
                st = store.run_info().state
                state = st if st in TRACKER_STATES else None
            if state is not None and self._state.finished != state:
                self._attempt(lambda: self._finish(state), None, deadline, points=0)
        except Interrupted:
            if self.error is not None:
                raise self.error from self.error.__cause__
            left = self.pending()[1]
            raise SinkError(
                f"{self.backend_name}: {left} points not forwarded when the drain deadline passed"
                f" (last error: {self.last_error}); resume with: coordinator sync {self.run_dir.name}"
                f" --to {self.backend_name}"
            ) from None
        if self.error is not None:
            raise self.error
        if progress is not None:
            progress(self.stats())
        return self.stats()

    def pending(self) -> tuple[int, int]:
        """(chunks, points) in the journal after the cursor."""
        self._load()
        return self._open_store().points_after(self._state.cursor)

    @property
    def position(self) -> int:
        """The journal position (chunk id) up to which the backend has everything."""
        return self._state.cursor

    @property
    def text_position(self) -> int:
        """The journal position of text-series entries (text id) up to which the backend has everything."""
        return self._state.texts

    def stats(self) -> dict[str, Any]:
        """Counters of this forwarder (this process) plus its cursor and state."""
        total = dict(self._state.counters)
        out: dict[str, Any] = {**self._counters, "cursor": self._state.cursor, "backend": self.backend_name}
        out["text_cursor"] = self._state.texts
        out["total"] = total
        out["last_error"] = self.last_error
        out["failed"] = None if self.error is None else str(self.error)
        out["finished"] = self._state.finished
        return out

    # ------------------------------------------------------------------ internals

    def _load(self) -> None:
        if not self._loaded:
            st = self._cursor_file.acquire()
            self._state = CursorState(counters=st.counters) if self._from_start else st
            self._loaded = True

    def verify(self) -> None:
        """Start over when the destination does not hold what the cursor claims (blocks: network).

        Done once, before the first batch; call it early to have :meth:`pending` count right.
        """
        self._load()
        if not self._verified:
            before = self._state
            self._state = verified(before, self.backend, self.backend_name)
            if self._state is not before:
                self._count("restarts", 1)
            self._verified = True

    def _open_store(self) -> LocalStore:
        if self._store is None:
            self._store = LocalStore(self.store_path, readonly=True)
        return self._store

    def _ensure_open(self) -> None:
        self.verify()
        if not self._opened:
            info = self._open_store().run_info()
            self.backend.open(info, self._state.backend_state or None)
            self._opened = True

    def _save(self) -> None:
        self._cursor_file.save(self._state, asdict(self.settings))

    def _count(self, name: str, n: int) -> None:
        if n:
            self._counters[name] += n
            self._state.counters[name] = self._state.counters.get(name, 0) + n

    def _cycle(self, *, stop: threading.Event | None, deadline: float | None, with_fields: bool) -> bool:
        """Build one batch and send it until accepted; False when there was nothing to send."""
        if not self._verified:  # before building: a restart sends from the beginning
            self._attempt(self.verify, stop, deadline, points=0)
        batch: Batch | None = self._attempt(lambda: self._build(with_fields), stop, deadline, points=0)
        if batch is None or batch.empty():
            if with_fields:
                self._last_fields = time.monotonic()
            return False
        self._attempt(lambda: self._send(batch), stop, deadline, points=batch.points)
        self._commit(batch)
        if with_fields:
            self._last_fields = time.monotonic()
        return batch.moved()

    def _build(self, with_fields: bool) -> Batch:
        st = self._state
        return self._builder.build(
            self._open_store(),
            st.cursor,
            st.thin,
            st.fields_sent,
            with_fields=with_fields,
            texts=st.texts,
            texts_bound=st.texts_pending,
        )

    def _send(self, batch: Batch) -> None:
        self._ensure_open()
        st = self._state
        if batch.texts and getattr(self.backend, "names_text_files", False) and st.texts_pending != batch.text_cursor:
            # The adapter names files by a batch's range: fix the range before sending it, so a
            # resumed forwarder sends the very same files again (not a second, overlapping one).
            st.texts_pending = batch.text_cursor
            self._save()
        send_batch(self.backend, batch, self.run_dir, st.run_tags)

    def _commit(self, batch: Batch) -> None:
        s = self._state
        s.cursor = batch.cursor
        s.texts = batch.text_cursor
        if batch.run_tags is not None:
            s.run_tags = list(batch.run_tags)
        s.thin = batch.thin_state
        s.fields_sent = batch.fields_sent
        s.backend_state = self.backend.state()
        for name, n in batch.counts().items():
            self._count(name, n)
        self._save()

    def _finish(self, state: str) -> None:
        self._ensure_open()
        self.backend.finish(state)
        self._state.finished = state
        self._state.backend_state = self.backend.state()
        self._save()
