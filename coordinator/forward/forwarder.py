"""The forwarder: feeds one external backend from the run's journal with its own durable cursor.

The embedded store is the journal (docs/architecture.md). A forwarder reads it read-only, in journal
order (chunk row ids), builds large batches, hands them to a :class:`~coordinator.forward.backend.Backend`,
and only once the backend accepted a batch (``flush()`` returned) moves its cursor, which it
keeps in ``<run dir>/forward-<backend>.json`` (written to a temporary file, fsynced, then
``os.replace``-d). So:

* a slow or failing tracker never blocks the ranks or the aggregator: it only delays its own
  cursor; the journal keeps accepting;
* a crash loses nothing: the next forwarder resumes at the committed cursor;
* a crash never doubles what was committed: points after the cursor are re-sent as exactly the
  same batch (same steps, values and timestamps), which MLflow's SQL store recognises as
  duplicates and TensorBoard's writer cuts off (it truncates its event file to the size saved
  with the cursor). W&B and Neptune get the same points again for the at most one batch that
  was in flight; both drop non-increasing steps of a resumed run server-side (see their modules).

Retrying: every failed batch is retried unchanged with exponential backoff (``base_backoff_s``
doubling up to ``max_backoff_s``, jittered to 50-100 %), or after the server's ``Retry-After``
when the client exposes it (bounded by ``max_retry_after_s``). Errors the backend marks as
permanent (:class:`~coordinator.forward.backend.BackendRejectedError`: bad request, refused
credentials) are tried ``max_rejected_attempts`` times, then the forwarder stops and reports the
error; the journal still holds everything, and ``coordinator sync <run> --to <backend>``
resumes from the cursor once the cause is fixed.

Replacement rule (elastic restarts): the journal may hold a later main-series value for a step
that was already forwarded (the reducer re-emits steps a restarted incarnation re-logged). The
forwarder sends the latest value it sees: within a batch only the last value of a (key, step)
of the main series is sent; a value for a step forwarded in an earlier batch is sent again, and
each backend treats that repeated step in its own way (documented in its module). A rank's own
points that a later incarnation of that rank has already replaced in the journal are not sent
(counted as ``stale_points``).

Downsampling (optional, per backend): ``max_points_per_key_per_s`` keeps at most that many
points per series per second of journal time (a token bucket with one second of burst, points
of a chunk kept evenly spaced, its last point first). Only what goes to this backend is thinned,
the journal keeps everything, and the thinned points are counted (``thinned_points``).

Options (``Forwarder(..., options)``, ``--option k=v``, ``init_run(backend_options=...)``): the
keys of :class:`ForwarderSettings` configure the forwarder; every other key goes to the backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import (
    Backend,
    BackendRejectedError,
    Point,
    Series,
    field_text,
    get_backend,
    option_bool,
    option_float,
    option_int,
    option_str,
    retry_after_of,
)
from coordinator.journal.store import MAIN_RANK, LocalStore, StoredChunk

__all__ = ["Forwarder", "ForwarderSettings", "check_backends", "cursor_path"]

_log = logging.getLogger(__name__)

_CURSOR_VERSION = 1
_PERMANENT = (BackendRejectedError, ConfigError, TypeError, ValueError, AttributeError, KeyError, AssertionError)
"""Errors a retry of the same batch cannot fix (a refused request, or a bug in an adapter)."""


def cursor_path(run_dir: Path, backend: str) -> Path:
    """Where the forwarder to ``backend`` keeps its cursor: ``<run dir>/forward-<backend>.json``."""
    return run_dir / f"forward-{backend}.json"


def check_backends(backends: Mapping[str, Mapping[str, object]], run_dir: Path) -> None:
    """Build each configured backend and run its ``check()``: rank 0 calls it at ``init_run``.

    Validates the forwarder options too, so a typo fails at start, not at the end of a run.
    Blocks (network, up to the backends' check timeouts).

    Raises:
        ConfigError: an unknown backend or option. ImportError: a client library is missing
        (the message names the extra). SinkError: the backend refused the configuration,
        with its own message, prefixed by the backend's name.
    """
    for name, options in backends.items():
        _, backend_options = ForwarderSettings.split(options)
        backend = get_backend(name)(backend_options, run_dir)  # type: ignore[call-arg]
        backend.check()


@dataclass(kw_only=True, slots=True)
class ForwarderSettings:
    """How one forwarder batches, retries, names and thins; every field is also an option key."""

    batch_points: int = 50_000
    """Points read from the journal per batch (the backend splits it into its own request sizes)."""
    poll_interval_s: float = 1.0
    """How often a caught-up forwarder looks for new chunks."""
    fields_interval_s: float = 10.0
    """While the run is live, changed fields are sent at most this often (always at the end)."""
    base_backoff_s: float = 0.5
    """First retry delay; doubles per failed attempt."""
    max_backoff_s: float = 30.0
    """Longest retry delay without a ``Retry-After``."""
    max_retry_after_s: float = 300.0
    """Longest wait a server's ``Retry-After`` can impose."""
    max_rejected_attempts: int = 3
    """Attempts of a batch the backend refuses as invalid before the forwarder stops."""
    per_rank: bool = True
    """Also send each rank's own series (named by ``rank_key``)."""
    rank_key: str = "ranks/{rank}/{key}"
    """Name of a rank's series in the backend: ``str.format`` template with ``{key}`` and ``{rank}``."""
    max_points_per_key_per_s: float | None = None
    """Downsampling: most points per series per second of journal time sent to this backend."""
    sys_ranks: bool = False
    """Also send the per-rank health fields ``sys/ranks/*`` (many ranks: many tags)."""

    def __post_init__(self) -> None:
        if self.batch_points < 1:
            raise ConfigError(f"batch_points must be >= 1, got {self.batch_points}")
        for nm in ("poll_interval_s", "fields_interval_s", "base_backoff_s", "max_backoff_s", "max_retry_after_s"):
            if getattr(self, nm) < 0:
                raise ConfigError(f"{nm} must be >= 0, got {getattr(self, nm)}")
        if self.max_rejected_attempts < 1:
            raise ConfigError(f"max_rejected_attempts must be >= 1, got {self.max_rejected_attempts}")
        if self.max_points_per_key_per_s is not None and self.max_points_per_key_per_s <= 0:
            raise ConfigError(f"max_points_per_key_per_s must be > 0, got {self.max_points_per_key_per_s}")
        try:
            probe = self.rank_key.format(key="k", rank=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"rank_key {self.rank_key!r} must use only {{key}} and {{rank}}: {e}") from None
        if probe == "k" or "{rank}" not in self.rank_key or "{key}" not in self.rank_key:
            raise ConfigError(f"rank_key {self.rank_key!r} must contain both {{key}} and {{rank}}")

    @classmethod
    def split(cls, options: Mapping[str, object]) -> tuple[ForwarderSettings, dict[str, object]]:
        """Take the forwarder's keys out of ``options``; returns (settings, the backend's options).

        Raises:
            ConfigError: a forwarder option has a bad value.
        """
        mine = {f.name for f in fields(cls)}
        d = cls()
        kw: dict[str, Any] = {}
        for k in mine & set(options):
            default = getattr(d, k)
            if isinstance(default, bool):
                kw[k] = option_bool(options, k, default)
            elif isinstance(default, int):
                kw[k] = option_int(options, k, default)
            elif k == "rank_key":
                kw[k] = option_str(options, k, default)
            else:
                kw[k] = option_float(options, k, default)
        return cls(**kw), {k: v for k, v in options.items() if k not in mine}


@dataclass(slots=True)
class _Pending:
    """One batch built from the journal, sent (and re-sent) unchanged until accepted."""

    series: list[Series]
    params: dict[str, Any]
    tags: dict[str, str]
    cursor: int
    chunks: int
    points: int
    thinned: int
    stale: int
    replaced: int
    collisions: int
    thin_state: dict[str, list[float]]
    fields_sent: dict[str, str]
    dropped: int = 0
    """Points the backend said it cannot store (set by the accepted send)."""

    def empty(self) -> bool:
        return not (self.series or self.params or self.tags) and self.chunks == 0


class _Interrupted(Exception):
    """The stop event or the deadline came while a batch was still unsent."""


@dataclass(slots=True)
class _State:
    cursor: int = 0
    backend_state: dict[str, Any] = field(default_factory=dict)
    fields_sent: dict[str, str] = field(default_factory=dict)
    thin: dict[str, list[float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    finished: str | None = None


class Forwarder:
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
    ) -> None:
        """Configure (nothing is opened or sent yet).

        Args:
            store_path: the run's ``run.db`` (opened read-only).
            backend_name: a registered backend (``mlflow``, ``tensorboard``, ``wandb``, ``neptune``).
            options: forwarder settings (:class:`ForwarderSettings` keys) and backend options.
            backend: an already built backend (tests, custom backends); ``options`` then only
                configure the forwarder.

        Raises:
            ConfigError: unknown backend or a bad option. ImportError: the backend's client
            library is missing (the message names the extra).
        """
        self.store_path = Path(store_path)
        self.run_dir = self.store_path.parent
        self.backend_name = backend_name
        self.settings, backend_options = ForwarderSettings.split(options or {})
        if backend is None:
            backend = get_backend(backend_name)(backend_options, self.run_dir)  # type: ignore[call-arg]
        self.backend: Backend = backend
        self.path = cursor_path(self.run_dir, backend_name)
        self._store: LocalStore | None = None
        self._lock_file: Any = None
        self._opened = False
        self._state = _State()
        self._loaded = False
        self._counters = {
            "forwarded_points": 0,
            "forwarded_batches": 0,
            "retries": 0,
            "failed_points": 0,
            "thinned_points": 0,
            "dropped_points": 0,
            "stale_points": 0,
            "replaced_points": 0,
            "name_collisions": 0,
            "params_sent": 0,
            "tags_sent": 0,
        }
        self.error: SinkError | None = None
        self.last_error: str | None = None
        self._last_fields = -math.inf
        self._main_keys: set[str] = set()
        self._warned: set[str] = set()
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
            except Exception as e:  # noqa: BLE001 - closing a client must not hide the caller's outcome
                _log.warning("%s: closing the client failed: %s", self.backend_name, e)
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

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
                except _Interrupted:
                    return
                if not sent:
                    stop.wait(self.settings.poll_interval_s)
        except Exception as e:  # noqa: BLE001 - a thread must not die silently: keep it for drain()
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
        journal's run state once it is ``finished``/``failed``; a still running run is left open.

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
                state = st if st in ("finished", "failed") else None
            if state is not None and self._state.finished != state:
                self._attempt(lambda: self._finish(state), None, deadline, points=0)
        except _Interrupted:
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

    def stats(self) -> dict[str, Any]:
        """Counters of this forwarder (this process) plus its cursor and state."""
        total = dict(self._state.counters)
        out: dict[str, Any] = {**self._counters, "cursor": self._state.cursor, "backend": self.backend_name}
        out["total"] = total
        out["last_error"] = self.last_error
        out["failed"] = None if self.error is None else str(self.error)
        out["finished"] = self._state.finished
        return out

    # ------------------------------------------------------------------ internals

    def _load(self) -> None:
        if self._loaded:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.run_dir / f"forward-{self.backend_name}.lock", "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SinkError(
                f"{self.backend_name}: another forwarder is already sending run {self.run_dir.name} to this backend"
            ) from None
        self._lock_file = lock
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                if raw.get("version") != _CURSOR_VERSION:
                    raise ValueError(f"version {raw.get('version')!r}")
                self._state = _State(
                    cursor=int(raw["cursor"]),
                    backend_state=dict(raw.get("backend_state") or {}),
                    fields_sent=dict(raw.get("fields_sent") or {}),
                    thin={k: [float(a), float(b)] for k, (a, b) in (raw.get("thin") or {}).items()},
                    counters={k: int(v) for k, v in (raw.get("counters") or {}).items()},
                    finished=raw.get("finished"),
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SinkError(f"{self.backend_name}: cursor file {self.path} is unreadable: {e}") from e
        self._loaded = True

    def _open_store(self) -> LocalStore:
        if self._store is None:
            self._store = LocalStore(self.store_path, readonly=True)
        return self._store

    def _ensure_open(self) -> None:
        self._load()
        if not self._opened:
            info = self._open_store().run_info()
            self.backend.open(info, self._state.backend_state or None)
            self._opened = True

    def _save(self) -> None:
        s = self._state
        data = {
            "version": _CURSOR_VERSION,
            "backend": self.backend_name,
            "cursor": s.cursor,
            "backend_state": s.backend_state,
            "fields_sent": s.fields_sent,
            "thin": s.thin,
            "counters": s.counters,
            "finished": s.finished,
            "settings": asdict(self.settings),
            "updated": time.time(),
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.run_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _count(self, name: str, n: int) -> None:
        if n:
            self._counters[name] += n
            self._state.counters[name] = self._state.counters.get(name, 0) + n

    def _cycle(self, *, stop: threading.Event | None, deadline: float | None, with_fields: bool) -> bool:
        """Build one batch and send it until accepted; False when there was nothing to send."""
        self._load()
        pending: _Pending | None = self._attempt(lambda: self._build(with_fields), stop, deadline, points=0)
        if pending is None or pending.empty():
            if with_fields:
                self._last_fields = time.monotonic()
            return False
        self._attempt(lambda: self._send(pending), stop, deadline, points=pending.points)
        self._commit(pending)
        if with_fields:
            self._last_fields = time.monotonic()
        return pending.chunks > 0

    def _attempt(
        self, fn: Callable[[], Any], stop: threading.Event | None, deadline: float | None, *, points: int
    ) -> Any:
        """Call ``fn`` until it succeeds, backing off between attempts; see the module docstring."""
        attempt = 0
        rejected = 0
        while True:
            if self.error is not None:
                raise _Interrupted
            try:
                return fn()
            except _PERMANENT as e:
                rejected += 1
                err: Exception = e
                if rejected >= self.settings.max_rejected_attempts:
                    self.last_error = f"{type(e).__name__}: {e}"
                    self._count("failed_points", points)
                    self.error = SinkError(
                        f"{self.backend_name}: the backend refused a batch of {points} points "
                        f"{rejected} times, forwarding stopped: {e}"
                    )
                    self.error.__cause__ = e
                    _log.error("%s", self.error)
                    self._persist_counters()
                    raise _Interrupted from e
            except Exception as e:  # noqa: BLE001 - any client error (network, 5xx, 429) is retried with backoff
                err = e
            attempt += 1
            self._count("retries", 1)
            self.last_error = f"{type(err).__name__}: {err}"
            after = retry_after_of(err)
            if after is not None:
                delay = min(after, self.settings.max_retry_after_s)
            else:
                delay = min(self.settings.max_backoff_s, self.settings.base_backoff_s * 2 ** min(attempt - 1, 30))
                delay *= 0.5 + random.random() / 2
            if attempt == 1 or attempt % 10 == 0:
                _log.warning(
                    "%s: attempt %d failed (%s); retrying in %.1f s", self.backend_name, attempt, self.last_error, delay
                )
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Interrupted
                if delay > left:
                    time.sleep(max(0.0, left))
                    raise _Interrupted
            if stop is not None:
                if stop.wait(delay):
                    raise _Interrupted
            else:
                time.sleep(delay)

    def _persist_counters(self) -> None:
        try:
            self._save()
        except OSError as e:
            _log.warning("%s: could not save the cursor file %s: %s", self.backend_name, self.path, e)

    def _send(self, p: _Pending) -> None:
        self._ensure_open()
        b = self.backend
        if p.params:
            b.log_params(p.params)
            upload = getattr(b, "log_artifact", None)
            for path, (tag, v) in p.params.items():
                if tag == "artifact" and v[3] and upload is not None:
                    upload(path, Path(v[4]), str(v[0]))
        if p.tags:
            b.set_tags(p.tags)
        p.dropped = b.log_metrics(p.series) if p.series else 0
        b.flush()

    def _commit(self, p: _Pending) -> None:
        s = self._state
        s.cursor = p.cursor
        s.thin = p.thin_state
        s.fields_sent = p.fields_sent
        s.backend_state = self.backend.state()
        sent = sum(len(x.points) for x in p.series)
        self._count("forwarded_points", sent)
        self._count("forwarded_batches", 1 if p.chunks else 0)
        self._count("thinned_points", p.thinned)
        self._count("stale_points", p.stale)
        self._count("replaced_points", p.replaced)
        self._count("name_collisions", p.collisions)
        self._count("dropped_points", p.dropped)
        self._count("params_sent", len(p.params))
        self._count("tags_sent", len(p.tags))
        self._save()

    def _finish(self, state: str) -> None:
        self._ensure_open()
        self.backend.finish(state)
        self._state.finished = state
        self._state.backend_state = self.backend.state()
        self._save()

    # ------------------------------------------------------------------ batch building

    def _build(self, with_fields: bool) -> _Pending:
        store = self._open_store()
        st = self._state
        chunks = store.chunks_after(st.cursor, self.settings.batch_points)
        params: dict[str, Any] = {}
        tags: dict[str, str] = {}
        fields_sent = st.fields_sent
        if with_fields:
            fields_sent = dict(st.fields_sent)
            for path, fv in store.fields().items():
                if path.startswith("sys/ranks/") and not self.settings.sys_ranks:
                    continue
                digest = hashlib.sha256(json.dumps(fv, sort_keys=True, default=str).encode()).hexdigest()[:16]
                if fields_sent.get(path) == digest:
                    continue
                fields_sent[path] = digest
                if path.startswith("sys/"):
                    tags[path] = field_text(fv)
                else:
                    params[path] = fv
        p = _Pending([], params, tags, st.cursor, len(chunks), 0, 0, 0, 0, 0, st.thin, fields_sent)
        if not chunks:
            return p
        p.cursor = chunks[-1].id
        p.thin_state = {k: list(v) for k, v in st.thin.items()}
        if any(c.rank == MAIN_RANK for c in chunks) or not self._main_keys:
            self._main_keys = set(store.key_policies())
        multi = store.multi_incarnation_ranks() if any(c.rank >= 0 for c in chunks) else set()
        p.series = self._series(chunks, multi, store, p)
        p.points = sum(len(c.steps) for c in chunks)
        return p

    def _series(self, chunks: list[StoredChunk], multi: set[int], store: LocalStore, p: _Pending) -> list[Series]:
        cfg = self.settings
        # Main series: within the batch only the last value of a (key, step) is sent.
        last_main: dict[tuple[str, int], tuple[int, int]] = {}
        for ci, c in enumerate(chunks):
            if c.rank == MAIN_RANK:
                for i, s in enumerate(c.steps):
                    last_main[(c.key, s)] = (ci, i)
        cuts: dict[tuple[str, int, int], int | None] = {}
        out: dict[str, tuple[str, int | None, list[Point]]] = {}
        for ci, c in enumerate(chunks):
            if c.rank == MAIN_RANK:
                name, rank = c.key, None
            else:
                if not cfg.per_rank:
                    continue
                name, rank = cfg.rank_key.format(key=c.key, rank=c.rank), c.rank
                if name in self._main_keys:
                    p.collisions += len(c.steps)
                    self._warn_once(
                        f"collision:{name}",
                        "%s: rank %d's series of %r would be named %r, which is also a metric key; its points "
                        "are not sent (choose another rank_key)",
                        self.backend_name,
                        c.rank,
                        c.key,
                        name,
                    )
                    continue
            cut: int | None = None
            if rank is not None and rank in multi:
                ck = (c.key, rank, c.incarnation)
                if ck not in cuts:
                    incs = store.rank_incarnations(c.key, rank)
                    order = [i for i, _, _ in incs]
                    later = order[order.index(c.incarnation) + 1 :] if c.incarnation in order else []
                    firsts = {i: f for i, _, f in incs}
                    cuts[ck] = min((firsts[i] for i in later), default=None)
                cut = cuts[ck]
            pts: list[Point] = []
            for i, (s, v) in enumerate(zip(c.steps, c.values, strict=True)):
                if rank is None and last_main[(c.key, s)] != (ci, i):
                    p.replaced += 1
                    continue
                if cut is not None and s >= cut:
                    p.stale += 1
                    continue
                pts.append((s, v, c.ts))
            if cfg.max_points_per_key_per_s is not None and pts:
                pts = self._thin(name, pts, c.ts, p)
            if not pts:
                continue
            entry = out.get(name)
            if entry is None:
                out[name] = (c.key, rank, pts)
            else:
                entry[2].extend(pts)
        return [Series(name, key, rank, pts) for name, (key, rank, pts) in out.items()]

    def _thin(self, name: str, pts: list[Point], ts: float, p: _Pending) -> list[Point]:
        rate = self.settings.max_points_per_key_per_s
        assert rate is not None
        tokens, last = p.thin_state.get(name, [rate, ts])
        tokens = min(rate, tokens + max(0.0, ts - last) * rate)
        allowed = int(tokens)
        n = len(pts)
        if n <= allowed:
            keep = pts
        elif allowed <= 0:
            keep = []
        else:
            # Evenly spaced, always including the chunk's last point (the freshest value).
            idx = sorted({n - 1 - round(i * (n - 1) / allowed) for i in range(allowed)})
            keep = [pts[i] for i in idx]
        p.thinned += n - len(keep)
        p.thin_state[name] = [tokens - len(keep), max(ts, last)]
        return keep

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(msg, *args)
