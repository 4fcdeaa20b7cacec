"""``Run``: one run as one rank sees it; the hot path that puts points and fields into the buffer.

Under one short lock, ``log()`` and ``append()`` validate a call and write it: at a step, of plain numbers, into
the rank's ring the aggregator reads (``client/ringlog.py``, the default); else into the buffer's columns (a dict:
its frame, ``client/hotpath.py``), for the sender thread to number, encode and send. The run composes the rest:
its view (:mod:`~coordinator.client.view`), its waits and requests (:mod:`~coordinator.client.delivery`) and its
end (:mod:`~coordinator.client.lifecycle`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from array import array
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from coordinator.client.artifacts import upload_record
from coordinator.client.console import start_console
from coordinator.client.context import start_capture
from coordinator.client.delivery import Delivery, ErrorQueue, Series, TextSeries
from coordinator.client.devices import DeviceScalars, is_tensor
from coordinator.client.endings import reason_text
from coordinator.client.handle import Handle
from coordinator.client.hotpath import NOTHING_YET, as_dict, log_frame, log_slow, rollback, undo_point, wait_for_room
from coordinator.client.keys import KeyRegistry
from coordinator.client.lifecycle import Lifecycle
from coordinator.client.redaction import Redactor
from coordinator.client.ringlog import IN_RING, SPLIT
from coordinator.client.ringopen import open_ring
from coordinator.client.rowpath import c_method, fast_calls
from coordinator.client.sending import start_sender
from coordinator.client.steps import StepNumbering
from coordinator.client.supervision import OwnedAggregator
from coordinator.client.system import start_sampler
from coordinator.client.texts import TextAppender
from coordinator.client.view import LocalView, field_from_wire
from coordinator.core.columns import Column
from coordinator.core.redact import secret_values
from coordinator.core.values import check_key, check_step, flatten_fields, to_metric_value
from coordinator.errors import ClosedError, CoordinatorError
from coordinator.settings import Mode, Settings
from coordinator.transport.buffer import Buffer
from coordinator.transport.discovery import Placement, Rendezvous
from coordinator.transport.launcher import AggregatorProcess
from coordinator.transport.security import CurveKeys
from coordinator.transport.sender import SenderThread

__all__ = ["Run"]

_log = logging.getLogger("coordinator")


class Run:
    """One run as seen by one rank. Create with :func:`~coordinator.init_run`.

    Thread-safety: ``log``/``append``/field writes may be called from several threads; one lock guards the
    buffer and the ring. ``wait``/``sync``/``stop`` may be called from any thread."""

    def __init__(
        self,
        *,
        run_id: str,
        placement: Placement,
        settings: Settings,
        name: str,
        project: str,
        endpoint: str | None = None,
        spool_root: str | None = None,
        aggregator: AggregatorProcess | None = None,
        rendezvous: Rendezvous | None = None,
        store_path: str | None = None,
        curve: CurveKeys | None = None,
        backends: tuple[str, ...] = (),
    ) -> None:
        self.id = run_id
        self.rank = placement.rank
        self.world_size = placement.world_size
        self.mode: Mode = settings.mode
        self.name = name
        self.project = project
        self.endpoint = endpoint
        self.store_path = store_path
        self.incarnation = secrets.randbits(62)
        self._settings = settings
        self._redact = Redactor.from_settings(settings)  # before anything starts: a bad setting raises here
        self._buf = Buffer(settings.max_buffer_points)
        self._buf.errors = ErrorQueue()
        self._dev = DeviceScalars(self._buf.lock, self._buf.fail)
        self._handles: dict[str, Handle] = {}
        self._keys = KeyRegistry(run_id)
        self._view = LocalView(self.rank)
        self._view.fields.update({"sys/id": run_id, "sys/name": name, "sys/project": project})
        self._closed, self._closed_why = False, "is stopped"
        self._close_lock = threading.Lock()
        self._agg = aggregator
        owned = None
        if aggregator is not None:
            owned = OwnedAggregator(
                aggregator,
                run_id=run_id,
                endpoint=endpoint,
                store_path=store_path,
                max_restarts=settings.max_aggregator_restarts,
                start_timeout_s=settings.aggregator_start_timeout_s,
                on_fatal=lambda e: self._buf.fail(e, fatal=True),
            )
        self._sender: SenderThread | None = None
        live = self.mode == "async" and endpoint is not None and placement.beside_rank0
        ring_name = f"{run_id}-{self.rank}-{self.incarnation}"
        self._ring = open_ring(settings, live, ring_name, spool_root, self._keys, self._buf)
        if self.mode in ("async", "sync", "offline"):
            self._sender = start_sender(
                settings,
                self._buf,
                run_id=run_id,
                rank=self.rank,
                world_size=self.world_size,
                incarnation=self.incarnation,
                endpoint=endpoint,
                spool_root=spool_root,
                curve=curve,
                name=name,
                project=project,
                numbering=StepNumbering(self.rank, self._dev.resolve, self._dev.deferred),
                ring=self._ring,
            )
        if owned is not None:
            owned.start()
        self._delivery = Delivery(
            run_id=run_id,
            rank=self.rank,
            endpoint=endpoint,
            buf=self._buf,
            sender=self._sender,
            offline=self.mode == "offline",
            forwarded=bool(backends),
            ring=self._ring,
        )
        self._life = Lifecycle(
            run_id=run_id,
            rank=self.rank,
            endpoint=endpoint,
            close_timeout_s=settings.close_timeout_s,
            buf=self._buf,
            sender=self._sender,
            delivery=self._delivery,
            aggregator=owned,
            rendezvous=rendezvous,
            handle_sigterm=settings.handle_sigterm,
            stop=self.stop,
            refuse_calls=self._refuse_calls,
            secrets=secret_values(settings.backend_options),
        )
        self._texts = TextAppender(run_id, self.rank, endpoint, self._buf, self._keys, self._view, self._redact)
        self._texts.sender, self._texts.refusal = self._sender, lambda: self._closed_why if self._closed else None
        if self._ring is not None:
            self._ring.check_numeric = self._texts.check_numeric
        # log() and append()'s ring rows (or socket points) in one C call with the extension (client/rowpath.py)
        vars(self).update(fast_calls(self, Run, self._ring, self._buf))
        if self._redact is not None:
            self._life.redacted = self._redact.count  # the redactor's, not the run's: no cycle
        if self._sender is not None:  # off the training thread; stopped by stop() before the drain
            self._life.sampler = start_sampler(self.log, rank=self.rank, interval_s=settings.system_metrics_interval_s)
        capture = settings.capture_env and self._sender is not None  # git, packages: on a thread, never waited for here
        self._context = start_capture(self.rank, self._write_sys, store_path, redact=self._redact) if capture else None
        self._console = start_console(self._append_text, settings, self.rank, self._sender is not None, self._life)

    def __repr__(self) -> str:
        return f"<Run {self.id} rank {self.rank}/{self.world_size} mode={self.mode}>"

    # ------------------------------------------------------------------ hot path

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        """Log several metrics at one step.

        Args:
            data: metric key -> value (number, bool, numpy scalar, 1-element tensor). A tensor is kept as a
                snapshot and read on the sender thread: a CUDA loss does not make ``log()`` wait for the GPU.
            step: non-negative int shared by every key; omitted: per key, the previous step + 1 (like ``append()``).
            policy: cross-rank reduction for these keys, overriding the ``policies`` globs of ``init_run``
                (``mean``, ``sum``, ``min``, ``max``, ``rank0``, ``per_rank``, ``all``). A key keeps the policy it
                was first logged with; a different one later raises ``ValueError``.

        Non-blocking: validates and appends to an in-memory buffer; blocks only when the rank's buffer
        (``max_buffer_points``) is full. Thread-safe.

        Raises:
            TypeError: a non-numeric value, a non-str key, a non-int step.
            ValueError: a malformed key, a step below 0 or past 2**63-1. Nothing of a rejected call is kept.
            ClosedError: the run was stopped.
        """
        if step is None:
            step = -1
        elif type(step) is not int or step < 0:
            step = check_step(step)
        d: dict[str, Any] = data if type(data) is dict else as_dict(data)
        if policy is not None:
            self._declare_policy(d, policy)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; log() did nothing")
            if (r := self._ring) is not None and (
                (step >= 0 and policy is None and r.row(d, step)) or (step := r.route(d, step, policy)) == IN_RING
            ):
                return  # one record in the ring the aggregator reads (client/ringlog.py)
            steps = r.steps if step == SPLIT and r is not None else None  # taken before a wait lets go of the lock
            if b.pending >= b.mark and b.past_mark():  # a full batch wakes the sender; a full buffer waits
                wait_for_room(b, self._sender, self.rank, self.endpoint)
            if steps is not None:  # no step, keys numbered apart: each at its own (client/ringlog.py)
                log_slow(d, -1, self._keys, b.cols, self._new_column, self._dev, steps)
                b.pending += len(d)
                return
            if len(d) > 1 and log_frame(b, d, step, self._keys, self._texts.keys, self._dev):
                b.pending += len(d)
                return
            cols = b.cols
            k: object = NOTHING_YET
            try:
                for k, v in d.items():
                    c = cols.get(k)
                    if c is None:
                        c = self._new_column(k)
                    if v.__class__ is not float and is_tensor(v):
                        self._dev.defer(k, v, c[0], c[1])  # no GPU sync here: read on the sender thread
                    else:
                        c[1].append(v)
                    c[0].append(step)
            except (TypeError, ValueError, OverflowError):
                rollback(b.cols, d, k, self._dev)  # the slow path below raises the precise error
            except BaseException:
                rollback(b.cols, d, k, self._dev)
                raise
            else:
                b.pending += len(d)
                return
            # Outside the handler: a rejected call raises its own error, no internal one chained to it.
            log_slow(d, step, self._keys, b.cols, self._new_column, self._dev)
            b.pending += len(d)

    def _append(self, key: str, value: Any, step: int | None) -> None:
        if step is None:
            step = -1
        elif type(step) is not int or step < 0:
            step = check_step(step)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; append() did nothing")
            if (r := self._ring) is not None and (
                (step >= 0 and r.row({key: value}, step)) or (step := r.route({key: value}, step, None)) == IN_RING
            ):
                return
            if b.pending >= b.mark and b.past_mark():  # a full batch wakes the sender; a full buffer waits
                wait_for_room(b, self._sender, self.rank, self.endpoint)
            c = b.cols.get(key) or self._new_column(key)
            try:
                if value.__class__ is not float and is_tensor(value):
                    self._dev.defer(key, value, c[0], c[1])
                else:
                    try:
                        c[1].append(value)
                    except (TypeError, ValueError, OverflowError):
                        c[1].append(to_metric_value(key, value))
                c[0].append(step)
            except BaseException as e:  # also a signal's exception (Ctrl-C) between the two appends
                if (bad := undo_point(e, b.cols, key, step, self._dev)) is e:
                    raise
                raise bad from None  # a step past int64: the ValueError of a bad step, nothing chained
            b.pending += 1

    def _append_text(self, key: str, text: object, step: int | None, block: bool = True) -> bool:
        return self._texts.append(key, text, step, block)  # client/texts.py

    def _declare_policy(self, keys: Iterable[object], policy: str) -> None:
        """Send a per-key policy override ahead of the keys' first points (slow path)."""
        for path in self._keys.declare_policy(keys, policy):  # each claim is queued before the next
            with self._buf.lock:
                self._buf.add_fields([(path, ("str", policy))])

    # ------------------------------------------------------------------ hot-path helpers (lock held)

    def _new_column(self, key: str) -> Column:
        b = self._buf
        if key in b.framed:  # the key's earlier points of this generation sit in a frame: they stay first
            b.spill(key, self._dev.split)  # a tensor's read follows its point
            return b.cols[key]
        self._texts.check_numeric(key)
        self._keys.add_series(key)
        c: Column = (array("q"), array("d"))
        b.cols[key] = c
        return c

    # ------------------------------------------------------------------ fields

    @c_method("item")  # a handle already made: returned in C with the extension (client/rowpath.py)
    def __getitem__(self, path: str) -> Handle:
        if (h := self._handles.get(path)) is None:
            check_key(path, "path")
            h = self._handles[path] = Handle(self, path)
        return h

    def __setitem__(self, path: str, value: object) -> None:
        """Set a field, or a dict of fields under ``path`` (``run["parameters"] = {...}``).

        Accepted values: bool, int, float, str, datetime, flat lists of those, numpy scalars,
        1-element tensors, and (nested) dicts of those. Raises TypeError/ValueError otherwise;
        nothing of a rejected assignment is kept.
        """
        items = flatten_fields(path, value)
        if self._redact is not None:  # before anything is buffered; outside the lock (a user callable)
            items = self._redact.apply(items)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; the assignment did nothing")
            self._keys.check_fields(p for p, _ in items)
            self._texts.check_fields(items)
            for p, fv in items:
                self._keys.fields.add(p)
                self._view.fields[p] = field_from_wire(*fv)
            b.add_fields(items)

    def _upload(self, key: str, src: Path, max_copy_bytes: int | None) -> dict[str, Any]:
        limit = self._settings.artifact_max_copy_bytes if max_copy_bytes is None else max_copy_bytes
        record = upload_record(key, src, self.store_path, self.mode, f"run {self.id} (mode {self.mode})", limit)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; upload() did nothing")
            if key in self._keys.series:
                raise ValueError(f"{key!r} is a series; a path is either a field or a series")
            self._keys.fields.add(key)
            b.add_fields([(key, ("artifact", record))])
            out = self._view.fields[key] = field_from_wire("artifact", record)
        return dict(out)

    def _write_sys(self, items: list[tuple[str, Any]], view: Callable[[dict[str, Any]], None]) -> None:
        """Queue the client's own ``sys/*`` writes (tags, environment), then update the view with ``view``."""
        with self._buf.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; the sys/* write did nothing")
            self._buf.add_fields(items)
            view(self._view.fields)

    # ------------------------------------------------------------------ reading, waiting

    def wait(self, timeout: float | None = None) -> None:
        """Block until every call this handle made before ``wait()`` is durable in the store and,
        when the run feeds external trackers (``backend=``), until those metric points reached them.

        Args:
            timeout: seconds for all of it; ``None`` waits as long as it takes.

        Raises:
            CoordinatorTimeoutError: not confirmed in time; names the endpoint (or the backend) and the count.
            SinkError, DeliveryError, ProtocolError: delivery failed; the message says why.
        """
        self._delivery.wait(timeout)

    def sync(self, wait: bool = False, timeout: float | None = 60.0) -> None:
        """Refresh this rank's view with what every rank wrote (fields, last values, rank states). ``fetch()`` then
        sees what the aggregator had committed at the request; later writes need another ``sync()``.

        Args:
            wait: first ``wait()`` for this rank's own calls.
            timeout: seconds for each step.
        """
        if wait:
            self.wait(timeout)
        rep = self._delivery.state(timeout)
        if rep is None:
            return
        with self._buf.lock:
            self._view.apply_state(rep)

    def _fetch_values(self, key: str, rank: int, timeout: float | None) -> Series | TextSeries:
        return self._delivery.fetch_values(key, rank, timeout, mode=self.mode)

    def rank_states(self) -> dict[int, str]:
        """Each rank's state (live, closed, lost) as of the last ``sync()``."""
        return self._view.rank_states()

    def stats(self) -> dict[str, Any]:
        """This rank's delivery counters: accepted, pending, acked, lost points (and its ring's, with ``rings``)."""
        return self._buf.stats() if self._ring is None else self._ring.stats(self._buf.stats())

    # ------------------------------------------------------------------ close

    def __enter__(self) -> Run:
        return self

    def fail(self, reason: str | BaseException) -> None:
        """Mark this rank as failed: the run ends ``failed`` (whatever else happens), with this reason. The rank keeps
        running; its ``stop()`` (or the end of its ``with`` block) sends the ending. A ``with`` block left by an
        exception, and an uncaught exception, mark it by themselves.

        Args:
            reason: a message, or the exception (its type, message and traceback are recorded: at most 4 KiB of the
                reason and 16 KiB of the traceback, the secrets of the run's backend options masked).

        Raises:
            TypeError: ``reason`` is neither a str nor an exception.
            ClosedError: the run was stopped (its ending was already sent).
        """
        why = reason_text(reason)
        if self._closed:
            raise ClosedError(f"run {self.id} {self._closed_why}; fail() did nothing")
        self._life.ending.mark("failed", why, reason if isinstance(reason, BaseException) else None)
        self._life.ending.declared = True

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        self._life.ending.mark_exception(ev)
        try:
            self.stop()
        except CoordinatorError as e:  # the user's exception is the one to see; ours is attached
            if et is None:
                raise
            _log.error("run %s: stop() after an exception also failed: %s", self.id, e)
            if ev is not None:
                ev.add_note(f"coordinator: stopping the run also failed: {e}")

    def stop(self, timeout: float | None = None) -> None:
        """Drain, say goodbye, and release everything (idempotent). Rank 0 returns last: it waits until the
        aggregator finished the run. One deadline for all.

        Args:
            timeout: seconds for the whole stop (default ``close_timeout_s`` of the settings).

        Raises:
            CoordinatorTimeoutError: points were still undelivered at the deadline.
            CoordinatorError: delivery failed earlier (the first error is raised).
        """
        interrupted = self._context.join_for_stop(self._life.ending.mark_exception) if self._context else None
        if self._console is not None:
            self._console.stop()  # the real streams back first; a last partial line goes out with the drain
        with self._close_lock:
            stopped_elsewhere = self._closed  # e.g. by the SIGTERM watchdog: let it finish
            with self._buf.lock:
                self._closed = True
        self._life.join(timeout) if stopped_elsewhere else self._life.stop(timeout)
        if interrupted is not None:
            raise interrupted

    def _refuse_calls(self, why: str) -> None:
        """Make every later call raise ``ClosedError`` saying the run ``why`` (after a fork)."""
        self._closed, self._closed_why = True, why
