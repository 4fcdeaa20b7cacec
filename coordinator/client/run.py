"""The worker API: ``init_run`` and the ``Run`` handle every rank logs through."""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import secrets
import shutil
import signal
import threading
import time
import weakref
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from coordinator.client.steps import StepNumbering
from coordinator.core import env as _env
from coordinator.core.columns import Column
from coordinator.core.limits import MAX_KEYS_PER_RUN
from coordinator.core.policies import POLICIES, POLICY_PREFIX, PolicyTable
from coordinator.core.values import check_key, check_step, flatten_fields, to_metric_value
from coordinator.errors import (
    ClosedError,
    ConfigError,
    CoordinatorError,
    CoordinatorTimeoutError,
    DeliveryError,
    SinkError,
)
from coordinator.forward.backend import resolve_backends
from coordinator.forward.forwarder import check_backends
from coordinator.journal.store import MAIN_RANK, LocalStore, resolve_root, run_dir
from coordinator.settings import DEFAULTS
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.discovery import (
    AggregatorProcess,
    AggregatorSupervisor,
    Placement,
    Rendezvous,
    detect_placement,
    new_run_id,
)
from coordinator.transport.security import CurveKeys, bind_address, load_secret
from coordinator.transport.sender import (
    BACKPRESSURE_POLICIES,
    Backpressure,
    Request,
    SenderConfig,
    SenderThread,
    default_hello,
)

__all__ = ["Handle", "Mode", "Run", "init_run"]

_log = logging.getLogger("coordinator")

Mode = Literal["async", "sync", "offline", "disabled", "read-only"]
_MODES = ("async", "sync", "offline", "disabled", "read-only")


def _field_from_wire(tag: str, val: Any) -> Any:
    if tag == "artifact":
        name, size, sha, copied, where = val
        return {"name": name, "size": size, "sha256": sha, "copied": copied, "path": where}
    if tag == "datetime":
        import datetime as dt

        return dt.datetime.fromtimestamp(val).astimezone()
    return val


class Handle:
    """A path inside a run (``run["train/loss"]``): append to a series, assign or fetch a field.

    Handles are cached per path, so ``run["k"].append(v)`` in a loop costs one dict lookup.
    """

    __slots__ = ("_path", "_run")

    def __init__(self, run: Run, path: str) -> None:
        self._run = run
        self._path = path

    def __repr__(self) -> str:
        return f"<Handle {self._path!r}>"

    def __getitem__(self, sub: str) -> Handle:
        return self._run[f"{self._path}/{sub}"]

    def __setitem__(self, sub: str, value: object) -> None:
        self._run[f"{self._path}/{sub}"] = value

    def append(self, value: object, step: int | None = None, *, policy: str | None = None) -> None:
        """Append one point to this series (hot path; see :meth:`Run.log`).

        Args:
            value: a number, bool, numpy scalar or 1-element tensor.
            step: non-negative int; omitted: this rank's previous step for the key + 1.
            policy: cross-rank reduction of this key (see :meth:`Run.log`).
        """
        if policy is not None:
            self._run._declare_policy((self._path,), policy)
        self._run._append(self._path, value, step)

    def extend(self, values: Iterable[object], steps: Iterable[int] | None = None) -> None:
        """Append several points (``steps`` as long as ``values``, or omitted)."""
        vals = list(values)
        if steps is None:
            for v in vals:
                self._run._append(self._path, v, None)
            return
        st = list(steps)
        if len(st) != len(vals):
            raise ValueError(f"extend: {len(vals)} values but {len(st)} steps")
        for v, s in zip(vals, st, strict=True):
            self._run._append(self._path, v, s)

    def upload(
        self, path: str | os.PathLike[str], *, max_copy_bytes: int = DEFAULTS.artifact_max_copy_bytes
    ) -> dict[str, Any]:
        """Store a file with the run (``run["model/ckpt"].upload("ckpt.pt")``); returns its record.

        The file is hashed (sha256) and copied, content-addressed, into the run's artifact
        directory (``<dir>/runs/<id>/artifacts/``); files larger than ``max_copy_bytes`` (100 MB)
        are recorded as a reference (path, size, hash) instead, with a warning. The record is a
        field (``fetch()`` returns it) and backends that take files (MLflow) receive the copy.
        Blocks while hashing and copying; call it from the training thread between steps.

        Raises:
            FileNotFoundError: no such file. ValueError: not a regular file.
        """
        return self._run._upload(self._path, Path(path), max_copy_bytes)

    def assign(self, value: object) -> None:
        """Set this field (same as ``run[path] = value``)."""
        self._run[self._path] = value

    def fetch(self) -> Any:
        """The field's value in this rank's view (own writes, plus others' after ``sync()``).

        For a series, its last reduced value as of the last ``sync()``.

        Raises:
            KeyError: nothing known under this path.
        """
        return self._run._fetch(self._path)

    def fetch_last(self) -> float:
        """The last value of the reduced series as of the last ``sync()``."""
        v = self._run._view_last.get(self._path)
        if v is None:
            raise KeyError(f"no series {self._path!r} in this rank's view; call run.sync() first")
        return v[1]

    def fetch_values(self, rank: int | None = None, timeout: float | None = 60.0) -> list[tuple[int, float]]:
        """The stored series as ``(step, value)`` pairs in step order.

        Args:
            rank: ``None`` for the reduced main series, or one rank's own points.
            timeout: seconds to wait for the aggregator's answer.

        Blocks until the aggregator answers. Reads what is committed: call ``wait()`` first to
        include this rank's own latest points (groups still waiting for other ranks are not in
        the main series yet).
        """
        return self._run._fetch_values(self._path, MAIN_RANK if rank is None else rank, timeout)


class Run:
    """One run as seen by one rank. Create with :func:`init_run`.

    Thread-safety: ``log``/``append``/field writes may be called from several threads; one
    lock guards the buffer. ``wait``/``sync``/``stop`` may be called from any thread.
    """

    def __init__(
        self,
        *,
        run_id: str,
        placement: Placement,
        mode: Mode,
        name: str,
        project: str,
        endpoint: str | None,
        spool_root: str | None,
        backpressure: Backpressure = "spool",
        max_spool_bytes: int = DEFAULTS.max_spool_bytes,
        max_buffer_points: int,
        flush_interval_s: float,
        close_timeout_s: float,
        aggregator: AggregatorProcess | None,
        rendezvous: Rendezvous | None,
        store_path: str | None,
        max_aggregator_restarts: int = DEFAULTS.max_aggregator_restarts,
        handle_sigterm: bool = False,
        curve: CurveKeys | None = None,
        backends: tuple[str, ...] = (),
    ) -> None:
        self.id = run_id
        self.rank = placement.rank
        self.world_size = placement.world_size
        self.mode = mode
        self.name = name
        self.project = project
        self.endpoint = endpoint
        self.store_path = store_path
        self.incarnation = secrets.randbits(62)
        self._close_timeout_s = close_timeout_s
        self._agg = aggregator
        self._supervisor: AggregatorSupervisor | None = None
        if aggregator is not None:
            self._supervisor = AggregatorSupervisor(
                aggregator,
                max_restarts=max_aggregator_restarts,
                start_timeout_s=DEFAULTS.aggregator_start_timeout_s,
                on_fatal=lambda e: self._buf.fail(e, fatal=True),
            )
        self._rdzv = rendezvous
        self._buf = Buffer(max_buffer_points)
        self._handles: dict[str, Handle] = {}
        self._metric_keys: set[str] = set()
        self._key_policy: dict[str, str] = {}
        self._backends = backends
        self._field_paths: set[str] = set()
        self._view_fields: dict[str, Any] = {}
        self._view_last: dict[str, tuple[int, float]] = {}
        self._view_ranks: dict[str, str] = {}
        self._closed = False
        self._closed_why = "is stopped"
        _RUNS.add(self)
        self._close_lock = threading.Lock()
        self._pid = os.getpid()
        self._sender: SenderThread | None = None
        if mode in ("async", "sync", "offline"):
            self._sender = SenderThread(
                SenderConfig(
                    run_id=run_id,
                    rank=self.rank,
                    incarnation=self.incarnation,
                    endpoint=endpoint,
                    flush_interval_s=flush_interval_s,
                    backpressure=backpressure,
                    spool_dir=None if spool_root is None else f"{spool_root}/rank-{self.rank}-{self.incarnation}",
                    max_spool_bytes=max_spool_bytes,
                    max_backlog_points=max_buffer_points,
                    curve=curve,
                    hello=default_hello(self.world_size, name, project),
                ),
                self._buf,
                StepNumbering(),
            )
            self._sender.start()
        if self._supervisor is not None:
            self._supervisor.start()
        self._sigterm_installed = False
        if (
            handle_sigterm
            and self._sender is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            self._sigterm_installed = True
        for path, value in (("sys/id", run_id), ("sys/name", name), ("sys/project", project)):
            self._view_fields[path] = value
        # A partial per run, so stop() unregisters this run's hook and no other.
        self._atexit_cb = functools.partial(_atexit_hook, weakref.WeakMethod(self._atexit_close))
        atexit.register(self._atexit_cb)

    def __repr__(self) -> str:
        return f"<Run {self.id} rank {self.rank}/{self.world_size} mode={self.mode}>"

    # ------------------------------------------------------------------ hot path

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        """Log several metrics at one step.

        Args:
            data: metric key -> value (number, bool, numpy scalar, 1-element tensor).
            step: non-negative int shared by every key; omitted: per key, this rank's
                previous step + 1 (like ``append()``).
            policy: cross-rank reduction for these keys, overriding the ``policies`` globs of
                ``init_run`` (``mean``, ``sum``, ``min``, ``max``, ``rank0``, ``per_rank``,
                ``all``). A key keeps the policy it was first logged with; a different one later
                raises ``ValueError``.

        Non-blocking: validates and appends to an in-memory buffer; blocks only when the
        rank's buffer (``max_buffer_points``) is full. Thread-safe.

        Raises:
            TypeError: a non-numeric value, a non-str key, a non-int step.
            ValueError: a malformed key or a negative step. Nothing of a rejected call is kept.
            ClosedError: the run was stopped.
        """
        if step is None:
            step = -1
        elif type(step) is not int or step < 0:
            step = check_step(step)
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise TypeError(f"log() takes a dict of metrics, got {type(data).__name__}")
            data = dict(data)
        if policy is not None:
            self._declare_policy(data, policy)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; log() did nothing")
            if b.pending >= b.max_points:
                self._wait_for_room()
            cols = b.cols
            try:
                for k, v in data.items():
                    c = cols.get(k)
                    if c is None:
                        c = self._new_column(k)
                    c[1].append(v)  # type: ignore[arg-type]
                    c[0].append(step)
            except BaseException as e:
                self._rollback(data, k)
                if not isinstance(e, (TypeError, ValueError, OverflowError)):
                    raise
                self._log_slow(data, step)
            b.pending += len(data)

    def _declare_policy(self, keys: Iterable[object], policy: str) -> None:
        """Send a per-key policy override ahead of the keys' first points (slow path)."""
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        for k in keys:
            check_key(k)
            assert isinstance(k, str)
            had = self._key_policy.get(k)
            if had == policy:
                continue
            if had is not None or k in self._metric_keys:
                raise ValueError(f"{k!r} already has policy {had or 'from init_run'}; a key keeps its first policy")
            self._key_policy[k] = policy
            with self._buf.lock:
                self._buf.fields.append((f"{POLICY_PREFIX}{k}", ("str", policy)))

    def _append(self, key: str, value: object, step: int | None) -> None:
        if step is None:
            step = -1
        elif type(step) is not int or step < 0:
            step = check_step(step)
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; append() did nothing")
            if b.pending >= b.max_points:
                self._wait_for_room()
            c = b.cols.get(key)
            if c is None:
                c = self._new_column(key)
            try:
                c[1].append(value)  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                c[1].append(to_metric_value(key, value))
            c[0].append(step)
            b.pending += 1

    # ------------------------------------------------------------------ hot-path helpers (lock held)

    def _check_new_key(self, key: object) -> None:
        check_key(key)
        if key in self._field_paths or (isinstance(key, str) and key.startswith("sys/")):
            raise ValueError(f"{key!r} is a field; a path is either a field or a series")
        if len(self._metric_keys) >= MAX_KEYS_PER_RUN:
            raise ValueError(
                f"more than {MAX_KEYS_PER_RUN} distinct metric keys in run {self.id}; "
                "put varying parts (ids, indices) in values, not in keys"
            )

    def _new_column(self, key: str) -> Column:
        if key not in self._metric_keys:
            self._check_new_key(key)
            self._metric_keys.add(key)
        c: Column = (array("q"), array("d"))
        self._buf.cols[key] = c
        return c

    def _log_slow(self, data: dict[str, object], step: int) -> None:
        """Validate every key and value (raising the precise error), then append all or nothing."""
        for k in data:
            if k not in self._metric_keys:
                self._check_new_key(k)
        clean = {k: to_metric_value(k, v) for k, v in data.items()}
        cols = self._buf.cols
        for k, v in clean.items():
            c = cols.get(k) or self._new_column(k)
            c[1].append(v)
            c[0].append(step)

    def _rollback(self, data: dict[str, object], failed: object) -> None:
        """Undo the points of keys before ``failed`` that this call already appended."""
        cols = self._buf.cols
        for k in data:
            if k == failed:
                break
            c = cols[k]
            c[0].pop()
            c[1].pop()
        # The failing key itself: its value may be in (a step append never fails: validated).
        c = cols.get(failed)  # type: ignore[call-overload]
        if c is not None and len(c[1]) > len(c[0]):
            c[1].pop()

    def _wait_for_room(self) -> None:
        b = self._buf
        t0 = time.monotonic()
        warned = False
        while b.pending >= b.max_points:
            if b.fatal is not None:
                raise b.fatal
            if not warned and time.monotonic() - t0 > 5:
                _log.warning(
                    "rank %d: log() blocked: %d points not yet acknowledged by the aggregator "
                    "at %s (max_buffer_points=%d)",
                    self.rank,
                    b.pending,
                    self.endpoint,
                    b.max_points,
                )
                warned = True
            if self._sender is None or not self._sender.is_alive():
                raise ClosedError("the sender thread is not running; cannot make room")
            b.cond.wait(0.5)

    # ------------------------------------------------------------------ fields

    def __getitem__(self, path: str) -> Handle:
        h = self._handles.get(path)
        if h is None:
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
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; the assignment did nothing")
            for p, _ in items:
                if p in self._metric_keys:
                    raise ValueError(f"{p!r} is a series; a path is either a field or a series")
                if p.startswith("sys/"):
                    raise ValueError(f"{p!r}: sys/* fields are written by the coordinator")
            for p, fv in items:
                self._field_paths.add(p)
                b.fields.append((p, fv))
                self._view_fields[p] = _field_from_wire(*fv)
        if self.mode == "sync":
            self.wait()

    def _upload(self, key: str, src: Path, max_copy_bytes: int) -> dict[str, Any]:
        check_key(key, "path")
        if not src.exists():
            raise FileNotFoundError(f"upload {key!r}: no file {src}")
        if not src.is_file():
            raise ValueError(f"upload {key!r}: {src} is not a regular file")
        if self.store_path is None or self.mode in ("disabled", "read-only"):
            raise ClosedError(f"run {self.id} (mode {self.mode}) stores no files")
        digest = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        sha = digest.hexdigest()
        copied = size <= max_copy_bytes
        where = str(src.resolve())
        if copied:
            dest = Path(self.store_path).parent / "artifacts" / sha[:2] / sha
            if not dest.exists():  # content-addressed: the same bytes are stored once
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = dest.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            where = str(dest)
        else:
            _log.warning(
                "upload %r: %s is %d bytes, over max_copy_bytes=%d; logged as a reference "
                "(path, size, sha256), not copied",
                key,
                src,
                size,
                max_copy_bytes,
            )
        record: list[object] = [src.name, size, sha, copied, where]
        b = self._buf
        with b.lock:
            if self._closed:
                raise ClosedError(f"run {self.id} {self._closed_why}; upload() did nothing")
            if key in self._metric_keys:
                raise ValueError(f"{key!r} is a series; a path is either a field or a series")
            self._field_paths.add(key)
            b.fields.append((key, ("artifact", record)))
            out = _field_from_wire("artifact", record)
            self._view_fields[key] = out
        if self.mode == "sync":
            self.wait()
        return dict(out)

    def _fetch(self, path: str) -> Any:
        if path in self._view_fields:
            return self._view_fields[path]
        if path in self._view_last:
            return self._view_last[path][1]
        prefix = path + "/"
        sub = {p[len(prefix) :]: v for p, v in self._view_fields.items() if p.startswith(prefix)}
        if sub:
            nested: dict[str, Any] = {}
            for p, v in sub.items():
                d = nested
                *parents, leaf = p.split("/")
                for part in parents:
                    d = d.setdefault(part, {})
                d[leaf] = v
            return nested
        raise KeyError(f"nothing under {path!r} in rank {self.rank}'s view; call run.sync() to see other ranks' writes")

    # ------------------------------------------------------------------ wait / sync

    def _raise_pending_errors(self) -> None:
        b = self._buf
        if b.fatal is not None:
            raise b.fatal
        if b.errors:
            errs, b.errors = b.errors, []
            first = errs[0]
            if len(errs) > 1:
                first.add_note(f"{len(errs) - 1} more error(s): " + "; ".join(str(e) for e in errs[1:4]))
            raise first

    def wait(self, timeout: float | None = None) -> None:
        """Block until every call this handle made before ``wait()`` is durable in the store and,
        when the run feeds external trackers (``backend=``), until those metric points reached them.

        Args:
            timeout: seconds for all of it; ``None`` waits as long as it takes.

        Raises:
            CoordinatorTimeoutError: not confirmed in time; names the endpoint (or the backend)
                and the count.
            SinkError, DeliveryError, ProtocolError: delivery failed; the message says why.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_acked(timeout, deadline)
        if self._backends and self._sender is not None and self.mode != "offline":
            self._wait_forwarded(self._buf.journal, timeout, deadline)

    def _wait_forwarded(self, position: int, timeout: float | None, deadline: float | None) -> None:
        """Poll the aggregator until every forwarder's cursor passed ``position`` in the journal."""
        assert self._sender is not None
        while True:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            rep = self._sender.submit(Request(wire.STATE, {"forward": 1})).result(left, self.endpoint)
            behind = []
            for name, (cursor, error) in rep.get("forward", {}).items():
                if error:
                    raise SinkError(f"rank {self.rank}: the {name} backend failed: {error}")
                if cursor < position:
                    behind.append(name)
            if not behind:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise CoordinatorTimeoutError(
                    f"rank {self.rank}: the points are durable in the store, but {', '.join(behind)} had not "
                    f"received them within {timeout} s (the forwarder keeps retrying; "
                    f"see `coordinator show {self.id}`)",
                    endpoint=self.endpoint,
                )
            time.sleep(0.05)

    def _wait_acked(self, timeout: float | None, deadline: float | None) -> None:
        """Block until every call made before now is committed to the store (acknowledged)."""
        if self._sender is None:
            return
        b = self._buf
        with b.lock:
            target = b.gen
            b.flush_requested = True
        self._sender.wake()
        with b.lock:
            while b.acked_gen < target:
                self._raise_pending_errors()
                if not self._sender.is_alive():
                    raise ClosedError(
                        f"run {self.id}: the sender thread stopped with {b.pending + b.in_flight} points undelivered"
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CoordinatorTimeoutError(
                        f"rank {self.rank}: {b.pending + b.in_flight} points not confirmed by the aggregator "
                        f"at {self.endpoint} within {timeout} s{self._liveness_hint()}{self._spool_hint()}",
                        endpoint=self.endpoint,
                        undelivered_points=b.pending + b.in_flight,
                    )
                b.cond.wait(0.25 if left is None else min(left, 0.25))
            self._raise_pending_errors()

    def _spool_hint(self) -> str:
        sp = self._sender.spool if self._sender is not None else None
        if sp is None or not sp.size_bytes:
            return ""
        return f"; unacknowledged batches are kept in {sp.dir} (deliver later with `coordinator sync {self.id}`)"

    def _liveness_hint(self) -> str:
        if self._sender is None:
            return ""
        last = self._sender.last_reply_at
        if last == 0:
            return " (it never answered)"
        return f" (last answer {time.monotonic() - last:.1f} s ago)"

    def sync(self, wait: bool = False, timeout: float | None = 60.0) -> None:
        """Refresh this rank's view with what every rank wrote (fields, last values, rank states).

        Args:
            wait: first ``wait()`` for this rank's own calls.
            timeout: seconds for each step.

        After ``sync()``, ``fetch()`` sees every write the aggregator had committed when it
        received the request; writes other ranks make later need another ``sync()``.
        """
        if wait:
            self.wait(timeout)
        if self._sender is None or self.mode == "offline":
            return
        rep = self._sender.submit(Request(wire.STATE, {})).result(timeout, self.endpoint)
        fields = rep.get("fields", {})
        with self._buf.lock:
            for path, (tag, val) in fields.items():
                self._view_fields[path] = _field_from_wire(tag, val)
            for k, (s, v) in rep.get("last", {}).items():
                self._view_last[k] = (s, v)
            self._view_ranks = dict(rep.get("ranks", {}))

    def _fetch_values(self, key: str, rank: int, timeout: float | None) -> list[tuple[int, float]]:
        if self._sender is None or self.mode == "offline":
            raise CoordinatorError(f"fetch_values() needs a live aggregator (mode={self.mode})")
        rep = self._sender.submit(Request(wire.QUERY, {"op": "values", "key": key, "rank": rank})).result(
            timeout, self.endpoint
        )
        return list(zip(rep["steps"], rep["values"], strict=True))

    def rank_states(self) -> dict[int, str]:
        """Each rank's state (live, closed, lost) as of the last ``sync()``."""
        return {int(r): s for r, s in self._view_ranks.items()}

    def stats(self) -> dict[str, Any]:
        """This rank's delivery counters: accepted, pending, acked, lost points."""
        return self._buf.stats()

    # ------------------------------------------------------------------ close

    def __enter__(self) -> Run:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        if et is None:
            self.stop()
            return
        try:
            self.stop()
        except CoordinatorError as e:  # the user's exception is the one to see; ours is attached
            _log.error("run %s: stop() after an exception also failed: %s", self.id, e)
            if ev is not None:
                ev.add_note(f"coordinator: stopping the run also failed: {e}")

    def stop(self, timeout: float | None = None) -> None:
        """Drain, say goodbye, and release everything (idempotent).

        Rank 0 also waits for the aggregator to finish the run, which happens when every rank
        has stopped (or was lost), so rank 0 returns last. One deadline covers everything.

        Args:
            timeout: seconds for the whole stop (default ``close_timeout_s`` of init_run).

        Raises:
            CoordinatorTimeoutError: points were still undelivered at the deadline.
            CoordinatorError: delivery failed earlier (the first error is raised).
        """
        with self._close_lock:
            if self._closed:
                return
            with self._buf.lock:
                self._closed = True
        if self._sigterm_installed and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the drain ends it
        atexit.unregister(self._atexit_cb)
        deadline = time.monotonic() + (self._close_timeout_s if timeout is None else timeout)
        error: BaseException | None = None
        if os.getpid() != self._pid:
            _log.warning("run %s: stop() in a forked child does nothing; the parent owns the run", self.id)
            return
        try:
            if self._sender is not None:
                try:
                    # Journal durability only: the aggregator drains the trackers at the run's end.
                    left = max(0.0, deadline - time.monotonic())
                    self._wait_acked(left, time.monotonic() + left)
                except CoordinatorError as e:
                    error = e
                st = self._buf.stats()
                try:
                    bye = {"undelivered": st["pending"], "accepted": st["accepted"], "dropped_points": st["dropped"]}
                    self._sender.submit(Request(wire.BYE, bye)).result(
                        max(0.1, deadline - time.monotonic()), self.endpoint
                    )
                except CoordinatorError as e:
                    error = error or e
                self._sender.stop()
                self._sender.join(max(0.1, deadline - time.monotonic()))
                if self._sender.is_alive():
                    _log.error("rank %d: sender thread did not exit in time", self.rank)
            if self._agg is not None:
                code = None
                if self._supervisor is not None and self._supervisor.finished.wait(
                    max(0.0, deadline - time.monotonic())
                ):
                    code = self._agg.poll()
                if code is None:
                    _log.error(
                        "run %s: the aggregator was still waiting for other ranks at the deadline; "
                        "stopping it (the run is marked failed)",
                        self.id,
                    )
                    if self._supervisor is not None:
                        self._supervisor.stop(5.0)  # a deliberate stop is not a crash to restart
                    code = self._agg.terminate(10.0)
                    error = error or CoordinatorTimeoutError(
                        f"run {self.id}: not every rank stopped before the deadline", endpoint=self.endpoint
                    )
                if code not in (0, None) and error is None:
                    error = DeliveryError(
                        f"run {self.id} was closed as failed: {self._failure_reasons()} "
                        f"(`coordinator show {self.id}` has the full report)"
                    )
        finally:
            if self._supervisor is not None:
                self._supervisor.stop(5.0)
            if self._agg is not None:
                self._agg.kill()
                self._agg.cleanup()
            if self._rdzv is not None and self.rank == 0:
                self._rdzv.retract()
        if error is not None:
            raise error

    def _failure_reasons(self) -> str:
        if self.store_path is None:
            return "unknown reasons"
        try:
            s = LocalStore(self.store_path, readonly=True)
            try:
                rep = s.run_info().report or {}
            finally:
                s.close()
        except CoordinatorError as e:
            return f"the report could not be read ({e})"
        return "; ".join(rep.get("reasons", [])) or "unknown reasons"

    def _atexit_close(self) -> None:
        if not self._closed:
            try:
                self.stop(timeout=min(self._close_timeout_s, 30.0))
            except CoordinatorError as e:
                _log.error("run %s: closing at exit failed: %s", self.id, e)


_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) has the parent's runs but not their sender threads:
    anything it logged would silently stay in its copy of the buffer. Make it raise instead."""
    for run in list(_RUNS):
        run._closed = True
        run._closed_why = (
            f"belongs to process {run._pid}; this is a forked child (e.g. a DataLoader worker): "
            "log from the parent, or open a run in the child with init_run()"
        )
        run._buf.lock = threading.Lock()  # the parent's lock may have been held at fork time
        run._buf.cond = threading.Condition(run._buf.lock)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn the launcher's SIGTERM into SystemExit, so ``with`` blocks and atexit drain the run."""
    _log.warning("SIGTERM: stopping the run (draining within its close timeout)")
    raise SystemExit(128 + signum)


def _atexit_hook(ref: weakref.WeakMethod[Any]) -> None:
    m = ref()
    if m is not None:
        m()


class _DisabledRun(Run):
    """``mode="disabled"``: every call is a no-op."""

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        return None

    def _append(self, key: str, value: object, step: int | None) -> None:
        return None

    def __setitem__(self, path: str, value: object) -> None:
        return None


class _SyncRun(Run):
    """``mode="sync"``: every call returns only once it is durable."""

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        super().log(data, step, policy=policy)
        self.wait()

    def _append(self, key: str, value: object, step: int | None) -> None:
        super()._append(key, value, step)
        self.wait()


class _ReadOnlyRun(Run):
    """``mode="read-only"``: a stored run opened from the store, without an aggregator."""

    def _open(self) -> None:
        assert self.store_path is not None
        self._store = LocalStore(self.store_path, readonly=True)
        info = self._store.run_info()
        self.name = info.name
        self.project = info.project
        self.world_size = info.world_size
        for p, (tag, val) in self._store.fields().items():
            self._view_fields[p] = _field_from_wire(tag, val)
        for s in self._store.series_summary():
            if s["last"] is not None:
                step, value = s["last"]
                self._view_last[s["key"]] = (step, value)

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def _append(self, key: str, value: object, step: int | None) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def __setitem__(self, path: str, value: object) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def sync(self, wait: bool = False, timeout: float | None = 60.0) -> None:
        self._store.close()
        self._open()

    def _fetch_values(self, key: str, rank: int, timeout: float | None) -> list[tuple[int, float]]:
        return self._store.values(key, rank)

    def stop(self, timeout: float | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._store.close()


def init_run(
    project: str = "default",
    name: str | None = None,
    *,
    with_id: str | None = None,
    mode: Mode | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    dir: str | os.PathLike[str] | None = None,
    policies: dict[str, str] | None = None,
    default_policy: str = "mean",
    max_buffer_points: int = DEFAULTS.max_buffer_points,
    flush_interval_s: float = DEFAULTS.flush_interval_s,
    close_timeout_s: float = DEFAULTS.close_timeout_s,
    group_timeout_s: float = DEFAULTS.group_timeout_s,
    liveness_timeout_s: float = DEFAULTS.liveness_timeout_s,
    stop_grace_s: float = DEFAULTS.stop_grace_s,
    rendezvous_timeout_s: float = DEFAULTS.rendezvous_timeout_s,
    backpressure: Backpressure = "spool",
    spool_dir: str | os.PathLike[str] | None = None,
    max_spool_bytes: int = DEFAULTS.max_spool_bytes,
    handle_sigterm: bool = True,
    transport: Literal["auto", "ipc", "tcp"] = "auto",
    insecure_tcp: bool = False,
    backend: str | list[str] | None = None,
    backend_options: dict[str, Any] | None = None,
    forward_timeout_s: float = 60.0,
) -> Run:
    """Open the run on this rank; call it with the same arguments on every rank.

    Global rank 0 starts the aggregator process and publishes its endpoint; every rank
    (rank 0 included) connects to it. Rank and world size come from torchrun, MPI or SLURM
    variables unless given.

    Args:
        project: project name recorded with the run.
        name: human-readable run name (default: the run id).
        with_id: an existing run id: ``mode="read-only"`` reopens it; otherwise the new run
            takes this id (every rank must pass the same one).
        mode: ``async`` (default), ``sync`` (every call waits until durable), ``offline``
            (each rank writes a local spool; upload with ``coordinator sync``), ``disabled``
            (no-ops), ``read-only`` (open a stored run). Default: ``$COORDINATOR_MODE`` or async.
        rank, world_size: override the launcher's environment.
        dir: store root (default ``$COORDINATOR_DIR`` or ``./.coordinator``).
        policies: glob -> reduction policy (``mean``, ``sum``, ``min``, ``max``, ``rank0``,
            ``per_rank``, ``all``) for the main series of matching keys.
        default_policy: policy of keys no glob matches.
        max_buffer_points: points a rank holds unacknowledged before ``log()`` blocks.
        flush_interval_s: how often the sender thread ships the buffer.
        close_timeout_s: default deadline of ``stop()``.
        group_timeout_s: longest a (key, step) group waits for ranks that never logged the key.
        liveness_timeout_s: a silent rank is reported lost after this long.
        stop_grace_s: after rank 0 stops, how long to wait for ranks that never connected.
        rendezvous_timeout_s: how long ranks wait for rank 0's endpoint.
        backpressure: when the aggregator does not keep up or cannot be reached: ``spool``
            (default: batches go to a write-ahead spool on disk and are replayed in order;
            lossless while disk lasts), ``block`` (``log()`` waits once ``max_buffer_points`` are
            buffered; lossless), ``drop_oldest`` (bounded memory; every dropped point is counted,
            warned about and listed in the final report).
        spool_dir: where this run's ranks spool (default ``<dir>/spool/<run id>``); local disk.
        max_spool_bytes: disk a rank's spool may use before ``log()`` blocks.
        handle_sigterm: in the main thread, if SIGTERM has its default action, turn it into
            ``SystemExit`` so a launcher's SIGTERM drains the run instead of killing it mid-batch.
        transport: ``ipc`` (one node: a socket in a private 0700 directory), ``tcp`` (many
            nodes: TCP on the interface that reaches ``MASTER_ADDR``, CURVE-authenticated with
            keys derived from ``$COORDINATOR_SECRET`` or ``$COORDINATOR_SECRET_FILE``; needs an
            initialised torch.distributed process group to publish the endpoint), or ``auto``
            (``tcp`` when ``LOCAL_WORLD_SIZE < WORLD_SIZE``).
        insecure_tcp: allow TCP without a job secret (anyone who can reach the port can write
            to the run); warns loudly.
        backend: external tracker(s) fed from the run's store by the aggregator: ``mlflow``,
            ``tensorboard``, ``wandb``, ``neptune`` (a name, a list, or ``$COORDINATOR_BACKEND``).
            Rank 0 checks each (credentials, URI, project) before the run starts; a bad one
            raises ``SinkError`` with the backend's own message on rank 0, and on the other
            ranks as soon as they look for the aggregator.
        backend_options: options of the backend (or a dict keyed by backend name); also
            ``$COORDINATOR_BACKEND_OPTIONS`` as JSON. See ``coordinator.sinks.<name>``.
        forward_timeout_s: at the end of the run, how long the aggregator lets the trackers
            catch up; what is left is resumable with ``coordinator sync <run> --to <backend>``.

    Returns:
        The :class:`Run`, also a context manager (``with init_run(...) as run:``).

    Raises:
        ConfigError: bad arguments or environment; CoordinatorError: the aggregator did not
        start or could not be found.
    """
    _debug_logging()
    mode = mode or os.environ.get(_env.COORDINATOR_MODE) or "async"  # type: ignore[assignment]
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    for nm, val in (("project", project), ("name", name)):
        if val is not None and (type(val) is not str or not val or len(val) > 256):
            raise ConfigError(f"{nm} must be a non-empty str of at most 256 characters, got {val!r:.80}")
    if max_buffer_points < 1:
        raise ConfigError(f"max_buffer_points must be >= 1, got {max_buffer_points}")
    if backpressure not in BACKPRESSURE_POLICIES:
        raise ConfigError(f"backpressure must be one of {', '.join(BACKPRESSURE_POLICIES)}, got {backpressure!r}")
    if flush_interval_s <= 0:
        raise ConfigError(f"flush_interval_s must be > 0, got {flush_interval_s}")
    try:
        PolicyTable(policies, default_policy)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    placement = detect_placement(rank, world_size)
    root = resolve_root(dir)
    backends = resolve_backends(backend, backend_options) if mode in ("async", "sync") else {}
    common: dict[str, Any] = dict(
        placement=placement,
        name=name or "",
        project=project,
        max_buffer_points=max_buffer_points,
        flush_interval_s=flush_interval_s,
        close_timeout_s=close_timeout_s,
    )

    if mode == "read-only":
        if not with_id:
            raise ConfigError("mode='read-only' needs with_id= (a run id, or 'latest')")
        run_id = _resolve_run_id(root, with_id)
        ro = _ReadOnlyRun(
            run_id=run_id,
            mode=mode,
            endpoint=None,
            spool_root=None,
            aggregator=None,
            rendezvous=None,
            store_path=str(run_dir(root, run_id) / "run.db"),
            **common,
        )
        ro._open()
        return ro
    if mode == "disabled":
        return _DisabledRun(
            run_id=with_id or "disabled",
            mode=mode,
            endpoint=None,
            spool_root=None,
            aggregator=None,
            rendezvous=None,
            store_path=None,
            **common,
        )

    use_tcp = transport == "tcp" or (transport == "auto" and placement.multi_node)
    if transport not in ("auto", "ipc", "tcp"):
        raise ConfigError(f"transport must be auto, ipc or tcp, got {transport!r}")
    curve: CurveKeys | None = None
    if use_tcp and mode != "offline":
        secret = load_secret()
        if secret is not None:
            curve = CurveKeys.from_secret(secret)
        elif not insecure_tcp:
            raise ConfigError(
                f"a multi-node (TCP) run needs a job secret: set {_env.COORDINATOR_SECRET} (16+ characters, the "
                f"same on every rank) or {_env.COORDINATOR_SECRET_FILE}; or pass insecure_tcp=True to accept "
                "unauthenticated writers"
            )
        else:
            _log.warning("insecure_tcp=True: the aggregator accepts unauthenticated TCP connections")
    env_endpoint = os.environ.get(_env.COORDINATOR_ENDPOINT)
    env_run = os.environ.get(_env.COORDINATOR_RUN_ID)
    agg: AggregatorProcess | None = None
    rdzv: Rendezvous | None = None
    endpoint: str | None
    if env_endpoint and mode != "offline":
        if not env_run:
            raise ConfigError(f"{_env.COORDINATOR_ENDPOINT} is set; set {_env.COORDINATOR_RUN_ID} too")
        run_id, endpoint = env_run, env_endpoint
    else:
        rdzv = Rendezvous(placement) if placement.world_size > 1 else None
        if rdzv is not None and placement.multi_node and rdzv.via != "torch.distributed store":
            raise ConfigError(
                "a multi-node run finds its aggregator through the torch.distributed store: call "
                f"torch.distributed.init_process_group() before init_run(), or set {_env.COORDINATOR_ENDPOINT} "
                f"and {_env.COORDINATOR_RUN_ID} on every rank"
            )
        if placement.rank == 0:
            run_id = with_id or env_run or _elastic_run_id() or new_run_id()
            run_dir(root, run_id)  # validates the id
            endpoint = None
            if backends:
                try:
                    check_backends(backends, run_dir(root, run_id))
                except (CoordinatorError, ImportError) as e:
                    if rdzv is not None:  # the other ranks fail at once instead of timing out
                        rdzv.publish({"run_id": run_id, "endpoint": None, "error": str(e), "pid": os.getpid()})
                    raise
            if mode != "offline":
                agg = AggregatorProcess(
                    run_id,
                    {
                        "store_path": str(run_dir(root, run_id) / "run.db"),
                        "world_size": placement.world_size,
                        "project": project,
                        "name": name or run_id,
                        "policies": dict(policies or {}),
                        "default_policy": default_policy,
                        "group_timeout_s": group_timeout_s,
                        "liveness_timeout_s": liveness_timeout_s,
                        "stop_grace_s": stop_grace_s,
                        "spool_root": str(Path(spool_dir) if spool_dir is not None else root / "spool" / run_id),
                        "curve": curve is not None,
                        "backends": backends,
                        "forward_timeout_s": forward_timeout_s,
                    },
                    tcp_host=bind_address(os.environ.get(_env.MASTER_ADDR), os.environ.get(_env.MASTER_PORT))
                    if use_tcp
                    else None,
                    stderr_path=os.environ.get(_env.COORDINATOR_AGG_STDERR),
                )
                try:
                    agg.start(DEFAULTS.aggregator_start_timeout_s)
                except BaseException:
                    agg.kill()
                    agg.cleanup()
                    raise
                endpoint = agg.endpoint
            if rdzv is not None:
                rdzv.publish({"run_id": run_id, "endpoint": endpoint, "pid": os.getpid()})
        else:
            assert rdzv is not None
            rec = rdzv.lookup(rendezvous_timeout_s)
            if rec.get("error"):
                raise SinkError(f"rank 0 could not start the run: {rec['error']}")
            run_id, endpoint = rec["run_id"], rec["endpoint"]
    if mode == "offline":
        endpoint = None
    spool_root = (
        None
        if spool_dir is None and backpressure != "spool" and mode != "offline"
        else (str(Path(spool_dir) if spool_dir is not None else root / "spool" / run_id))
    )
    cls = _SyncRun if mode == "sync" else Run
    run = cls(
        run_id=run_id,
        mode=mode,
        endpoint=endpoint,
        spool_root=spool_root,
        aggregator=agg,
        rendezvous=rdzv,
        store_path=str(run_dir(root, run_id) / "run.db"),
        backpressure=backpressure,
        max_spool_bytes=max_spool_bytes,
        handle_sigterm=handle_sigterm,
        curve=curve,
        backends=tuple(backends),
        **common,
    )
    if mode == "offline" and placement.rank == 0:
        from coordinator.transport.spool import SpoolWriter

        meta = SpoolWriter(root / "spool" / run_id / "run.meta")
        meta.append(
            0,
            0,
            b"",
            wire.encode_map(
                {
                    "run_id": run_id,
                    "project": project,
                    "name": name or run_id,
                    "world_size": placement.world_size,
                    "policies": dict(policies or {}),
                    "default_policy": default_policy,
                }
            ),
        )
        meta.close()
    _log.debug("rank %d: run %s (%s) via %s", placement.rank, run_id, mode, endpoint)
    return run


def _debug_logging() -> None:
    """``COORDINATOR_DEBUG=1``: log connections, batches, acks and retries of this process to stderr."""
    if os.environ.get(_env.COORDINATOR_DEBUG) != "1" or getattr(_debug_logging, "done", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"))
    _log.addHandler(handler)
    _log.setLevel(logging.DEBUG)
    _debug_logging.done = True  # type: ignore[attr-defined]


_elastic_calls: dict[str, int] = {}


def _elastic_run_id() -> str | None:
    """Under torchrun, the same id in every restart of the job (one per init_run call), else None.

    A restarted worker group (``--max-restarts``) thus continues the run it was writing.
    """
    job = os.environ.get(_env.TORCHELASTIC_RUN_ID, "")
    if not job or job == "none":
        return None
    n = _elastic_calls.get(job, 0)
    _elastic_calls[job] = n + 1
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in job)[:64]
    return f"te-{safe}-{n}"


def _resolve_run_id(root: os.PathLike[str], with_id: str) -> str:
    from coordinator.journal.store import list_runs

    if with_id != "latest":
        if not (run_dir(Path(root), with_id) / "run.db").exists():
            raise ConfigError(f"no run {with_id!r} under {root}")
        return with_id
    runs = list_runs(Path(root))
    if not runs:
        raise ConfigError(f"no runs under {root}")
    return runs[-1].id
