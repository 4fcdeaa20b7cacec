"""Every tunable of the coordinator, once: its default, its environment variable and its doc.

A :class:`Settings` is frozen. Each field ``x`` is also read from ``$COORDINATOR_X`` (the field's
name in capitals). ``init_run`` resolves each field in this order: an explicit keyword argument,
then a field of ``settings=`` that differs from its default, then the environment, then the
default. ``COORDINATOR_*`` variables that name no field are warned about: a typo must not be
silent.

Secrets are not settings: the job secret is read from ``$COORDINATOR_SECRET`` or
``$COORDINATOR_SECRET_FILE`` where it is used, so it never sits in an object that is printed,
logged or passed to a child process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from coordinator.errors import ConfigError

__all__ = [
    "AUTO_BATCHES_PER_S",
    "DEFAULTS",
    "ENV_PREFIX",
    "FLUSH_INTERVAL_S",
    "MAX_AUTO_FLUSH_INTERVAL_S",
    "RING_BYTES",
    "Backpressure",
    "Mode",
    "Settings",
    "Transport",
    "env_name",
]

_log = logging.getLogger("coordinator")

ENV_PREFIX = "COORDINATOR_"
FLUSH_INTERVAL_S = 0.05
"""A rank's flush interval in a job of up to 128 ranks (``Settings.flush_interval_s`` unset)."""
MAX_AUTO_FLUSH_INTERVAL_S = 2.0
"""The longest automatic flush interval (5,120 ranks and more): well inside ``group_timeout_s`` and
``liveness_timeout_s``; past it the batches grow with the job again (relays per node are the way on)."""
AUTO_BATCHES_PER_S = 2560
"""Batches a second the ranks of a job send together at most when ``flush_interval_s`` is unset (up
to 5,120 ranks): an eighth of what one aggregator takes hot, so that it keeps up with the points
they carry and its commits on a core it shares (``python -m benchmarks.scale --senders 1024 --rate
R --steps S --aligned``)."""
Mode = Literal["async", "sync", "offline", "disabled", "read-only"]
Backpressure = Literal["block", "spool", "drop_oldest"]
Transport = Literal["auto", "ipc", "tcp"]

MODES: tuple[str, ...] = typing.get_args(Mode)
BACKPRESSURE_POLICIES: tuple[str, ...] = typing.get_args(Backpressure)
TRANSPORTS: tuple[str, ...] = typing.get_args(Transport)

_NOT_SETTINGS = frozenset(
    {
        "COORDINATOR_SECRET",  # the job secret: read where it is used, never stored in a Settings
        "COORDINATOR_SECRET_FILE",
        "COORDINATOR_PUREPYTHON",  # the ring rows' Python path with the C extension built (client/rowpath.py)
    }
)
"""Our variables that are deliberately not :class:`Settings` fields (so not warned about)."""


def env_name(field_name: str) -> str:
    """The environment variable of a settings field: ``flush_interval_s`` -> ``COORDINATOR_FLUSH_INTERVAL_S``."""
    return ENV_PREFIX + field_name.upper()


RING_BYTES = 16 * 1024**2
"""``Settings.ring_bytes``'s default: the size that a short ``/dev/shm`` may halve (``client/ringlog.py``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Every knob of a run. Pass one to ``init_run(settings=...)``; unset fields come from the environment.

    Example::

        init_run(project="p", settings=Settings(flush_interval_s=0.02, backpressure="block"))
    """

    # --------------------------------------------------------------- where, who, how
    mode: Mode = "async"
    """``async`` (calls return at once), ``sync`` (every call waits until durable), ``offline``
    (spool only; upload with ``coordinator sync``), ``disabled`` (no-ops), ``read-only``."""
    dir: str | os.PathLike[str] | None = None
    """Root of the embedded store (default ``./.coordinator``)."""
    rank: int | None = None
    """This process's global rank; default: from torchrun, MPI or SLURM variables."""
    world_size: int | None = None
    """Number of ranks; default: from torchrun, MPI or SLURM variables."""
    run_id: str | None = None
    """Run id shared by every rank when the launcher chooses it."""
    endpoint: str | None = None
    """Explicit aggregator endpoint; skips discovery (set ``run_id`` too)."""
    debug: bool = False
    """Log every connection, batch, ack and retry at DEBUG level to stderr."""
    agg_stderr: str | None = None
    """File the aggregator's log goes to instead of rank 0's stderr."""

    # --------------------------------------------------------------- cross-rank semantics
    default_policy: str = "mean"
    """Reduction policy of keys that no ``policies`` glob matches."""
    group_timeout_s: float = 10.0
    """Longest a (key, step) group waits for ranks that never logged the key."""
    liveness_timeout_s: float = 30.0
    """A rank silent this long is reported lost."""
    straggler_lag_s: float = 0.05
    """A rank reaching steps this much later than the median rank is reported as a straggler."""

    # --------------------------------------------------------------- buffer, sender, spool
    max_buffer_points: int = 2_000_000
    """Points a rank may hold unacknowledged (buffered, in flight) before ``log()`` blocks."""
    flush_interval_s: float | None = None
    """How often the sender thread swaps the buffer out, spools and sends it (``wait()``, ``sync()``
    and ``close()`` flush at once). A SIGKILLed rank loses at most the points of its last interval.
    A paced job's logging CPU is paid per wake-up of the sender, its ZeroMQ thread and the
    aggregator, once per interval each: a longer interval costs less CPU per point (4 ranks, a
    100-key dict at 50 steps/s: ~3 µs at 50 ms, ~1-1.5 at 200 ms, ~0.6-0.75 at 500 ms on a 2-core VM;
    ``python -m benchmarks.flush_intervals``), a shorter one more. Unset: 50 ms up to
    128 ranks, ``world_size / 2560`` s above (400 ms at 1024 ranks; at most 2 s), so that the run's one
    aggregator receives at most ~2,560 batches a second (:meth:`flush_interval`), the kill window
    staying 50 ms (:meth:`kill_window`). After two empty flushes the sender sleeps until the next
    write (which starts an interval) or its heartbeat."""
    kill_window_s: float | None = None
    """What a SIGKILLed rank may lose, when shorter than the flush interval: between flushes the
    training thread copies the points logged since the last copy to a file in the rank's spool
    directory about every half window, in the ``log()``/``append()`` call that finds a copy due
    (~50-70 µs of CPU each; a point logged without a step is numbered when read back, as the
    sender numbers it; a timer wakes the sender for
    what a rank that stopped logging left), and every cut is written ahead to the spool before it
    is sent; recovery (a lost rank's spool at the run's end, ``coordinator sync``) takes what the
    spool does not hold from the copies. A GPU tensor whose copy to the host is still queued, a
    field or a text makes the sender cut instead, within the window. With ``flush_interval_s=1``
    and ``kill_window_s=0.05`` a paced job keeps a 50 ms kill window at about a third of the CPU
    of 50 ms flushes (docs/performance.md, round 36). Unset: 50 ms where ``flush_interval_s`` is
    unset too and grows past 50 ms with the job (over 128 ranks), else the flush interval
    (:meth:`kill_window`)."""
    max_batch_points: int = 65_536
    """Most points in one wire batch; a larger flush is split. A generation that reaches it is sent
    at once, without waiting for the flush interval."""
    max_window_batches: int = 64
    """Batches in flight without an ack; past it the sender stops sending."""
    ack_timeout_s: float = 10.0
    """An unacked batch older than this is sent again (the aggregator drops duplicates)."""
    heartbeat_interval_s: float = 1.0
    """Idle senders ping this often (and an idle sender wakes only for that or a write); the
    aggregator records liveness from it."""
    backpressure: Backpressure = "spool"
    """When the aggregator does not keep up: ``spool`` (write-ahead spool on disk, lossless while
    disk lasts), ``block`` (``log()`` waits; lossless), ``drop_oldest`` (bounded memory; every
    dropped point is counted and reported)."""
    spool_dir: str | os.PathLike[str] | None = None
    """Where runs spool: each run in its own ``<spool_dir>/<run id>`` (default ``<dir>/spool/<run id>``); local disk."""
    max_spool_bytes: int = 4 * 1024**3
    """Disk a rank's spool may use before ``log()`` blocks."""
    spool_segment_bytes: int = 64 * 1024**2
    """Size at which a spool starts a new segment file (acknowledged segments are deleted)."""
    rings: bool = True
    """A ``log()`` of plain numbers at an explicit step (or an ``append()`` at one) writes its row
    into a ring shared with the aggregator (a mapped file in ``/dev/shm``, else the spool
    directory), which reads it before each commit; no socket, no sender work. A killed rank loses
    none of those rows. Only in ``async`` mode, where the aggregator runs on the rank's machine;
    everything else, and a row the full ring has no room for (counted), goes over the socket. A key
    written through the ring has its steps numbered on the rank (``client/ringlog.py``). ``False``
    (``COORDINATOR_RINGS=0``): every point goes over the socket."""
    ring_bytes: int = RING_BYTES
    """With ``rings``: the ring's size (a power of two, 4 KiB to 16 GiB): about 20,000 rows of 100 keys. At
    this default, where ``/dev/shm`` has no room for it (a ring asks four times its size free: a
    container's 64 MiB), the ring is made smaller there, down to 1 MiB, while half of ``/dev/shm``
    stays free, before it goes to the spool directory; any other size is kept whole."""
    ring_dir: str | os.PathLike[str] | None = None
    """With ``rings``: where the rings are made (default ``/dev/shm``, else the spool directory where
    it has no room). A ring a killed job left is read by ``coordinator sync``, or stays until the
    machine restarts."""

    # --------------------------------------------------------------- network
    transport: Transport = "auto"
    """``ipc`` (one node), ``tcp`` (many nodes, CURVE-authenticated), ``auto`` (``tcp`` when
    ``LOCAL_WORLD_SIZE < WORLD_SIZE``)."""
    insecure_tcp: bool = False
    """Allow TCP without a job secret (anyone who reaches the port can write to the run); warns."""
    rendezvous_timeout_s: float = 120.0
    """Other ranks wait this long for rank 0 to publish the aggregator endpoint."""

    # --------------------------------------------------------------- lifecycle
    close_timeout_s: float = 120.0
    """Deadline of ``stop()``: drain, say goodbye, and (rank 0) wait for the aggregator."""
    stop_grace_s: float = 30.0
    """After rank 0 said goodbye, the aggregator waits this long for ranks that never connected."""
    handle_sigterm: bool = True
    """In the main thread, turn a default SIGTERM into ``SystemExit`` so the run drains."""
    aggregator_start_timeout_s: float = 30.0
    """Rank 0 waits this long for the aggregator process to bind its socket."""
    max_aggregator_restarts: int = 5
    """How often rank 0 restarts an aggregator that died before the run ended."""
    aggregator_nice: int = 10
    """CPU niceness added to the aggregator process: training processes get the CPU first."""
    durable: bool = False
    """SQLite ``synchronous=FULL`` (a commit survives power loss) instead of ``NORMAL``."""
    artifact_max_copy_bytes: int = 100 * 1024 * 1024
    """Files up to this size are copied into the run by ``upload()``; larger ones are references."""
    capture_env: bool = True
    """At start, off the training thread, record git (commit, branch, dirty, remote, diff), the
    Python/torch/CUDA versions, the installed packages and each rank's host, pid, argv, launcher."""
    system_metrics_interval_s: float = 10.0
    """Every rank samples its process's (and its node's local rank 0 the node's) CPU, memory, disk,
    network and GPU this often into ``system/*`` series (policy ``per_rank``); 0 turns it off."""
    capture_output: bool = False
    """Each rank's stdout and stderr lines (``print()``, ``logging``) also become its text series
    ``monitoring/stdout`` and ``monitoring/stderr``; still written to the real streams, restored at close."""
    console_max_lines_per_s: float = 100.0
    """With ``capture_output``: lines per second (per rank, a burst of as many) kept; more are dropped and counted."""
    console_max_line_bytes: int = 4096
    """With ``capture_output``: a longer line is cut to this many bytes (UTF-8) and counted."""
    redact_keys: tuple[str, ...] = ()
    """Globs of field paths (``user/*``, ``*/email``) whose values become ``"[redacted]"`` on the rank,
    before they are buffered (fields and the environment capture; never metric values)."""
    redact_values: tuple[str, ...] = ()
    """Regexes whose matches in str field values (and list items) become ``"[redacted]"``
    (in the environment: comma-separated, so only patterns without a comma)."""
    redact: Callable[[str, Any], Any] | None = None
    """``callable(path, value) -> value`` applied after the globs and regexes; ``None`` drops the
    field; if it raises, the field is dropped, counted and warned about once."""

    # --------------------------------------------------------------- external trackers
    backend: tuple[str, ...] = ()
    """External trackers fed from the journal: ``mlflow``, ``tensorboard``, ``wandb``, ``neptune``
    (in the environment: comma-separated)."""
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the backend, or a dict keyed by backend name (in the environment: JSON)."""
    forward_timeout_s: float = 60.0
    """At the run's end, how long the trackers may take to catch up (what is left is resumable)."""
    forward_batch_points: int = 50_000
    """Points a forwarder reads from the journal per batch."""
    forward_poll_interval_s: float = 1.0
    """How often a caught-up forwarder looks for new chunks."""
    forward_fields_interval_s: float = 10.0
    """While the run is live, changed fields are forwarded at most this often (always at the end)."""
    forward_base_backoff_s: float = 0.5
    """First retry delay of a forwarder; doubles per failed attempt."""
    forward_max_backoff_s: float = 30.0
    """Longest retry delay without a ``Retry-After``."""
    forward_max_retry_after_s: float = 300.0
    """Longest wait a server's ``Retry-After`` can impose."""
    forward_max_rejected_attempts: int = 3
    """Attempts of a batch a backend refuses as invalid before its forwarder stops."""
    forward_per_rank: bool = True
    """Also forward each rank's own series (named by ``forward_rank_key``)."""
    forward_rank_key: str = "ranks/{rank}/{key}"
    """Name of a rank's series in a tracker: a template with ``{key}`` and ``{rank}``."""
    forward_max_points_per_key_per_s: float | None = None
    """Downsampling: most points per series per second of journal time sent to a tracker."""
    forward_sys_ranks: bool = False
    """Also forward the per-rank health fields ``sys/ranks/*`` (many ranks: many tags)."""

    def __post_init__(self) -> None:
        for name, allowed in (
            ("mode", MODES),
            ("backpressure", BACKPRESSURE_POLICIES),
            ("transport", TRANSPORTS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"Settings.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            if f.name.endswith(("_s", "_bytes", "_points", "_batches")) and numeric and v < 0:
                raise ConfigError(f"Settings.{f.name} must be a number >= 0, got {v!r}")
        if self.flush_interval_s is not None and not self.flush_interval_s > 0:
            raise ConfigError(f"Settings.flush_interval_s must be > 0 (or unset), got {self.flush_interval_s!r}")
        if self.kill_window_s is not None and not self.kill_window_s > 0:
            raise ConfigError(f"Settings.kill_window_s must be > 0 (or unset), got {self.kill_window_s!r}")
        for name in (
            "max_buffer_points",
            "max_batch_points",
            "max_window_batches",
            "console_max_lines_per_s",
            "console_max_line_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Settings.{name} must be > 0, got {getattr(self, name)!r}")
        if self.rings and not (4096 <= self.ring_bytes <= 2**34 and self.ring_bytes & (self.ring_bytes - 1) == 0):
            raise ConfigError(f"Settings.ring_bytes must be a power of two from 4096 to 2**34, got {self.ring_bytes!r}")
        if self.max_aggregator_restarts < 0:
            raise ConfigError(f"Settings.max_aggregator_restarts must be >= 0, got {self.max_aggregator_restarts}")
        if not isinstance(self.backend, tuple):
            raise ConfigError(f"Settings.backend must be a tuple of backend names, got {self.backend!r}")
        if self.redact is not None and not callable(self.redact):
            raise ConfigError(f"Settings.redact must be a callable(path, value) -> value, got {self.redact!r:.80}")
        for pat in self.redact_values if isinstance(self.redact_values, tuple) else ():
            try:
                re.compile(pat)
            except (re.error, TypeError) as e:
                raise ConfigError(f"Settings.redact_values: {pat!r:.200} is not a valid regex: {e}") from None

    def flush_interval(self, world_size: int) -> float:
        """The flush interval of a rank of a ``world_size``-rank job: the field, or its automatic value.

        A batch costs the aggregator about 50 µs of CPU whatever it carries, so one aggregator
        takes about 20,000 a second; 1024 ranks flushing every 50 ms send 20,480. Unset, the
        interval grows with the job so that the ranks send at most :data:`AUTO_BATCHES_PER_S`
        batches a second together: 50 ms up to 128 ranks, 400 ms at 1024, 1.6 s at 4096, at most
        :data:`MAX_AUTO_FLUSH_INTERVAL_S` (2 s, from 5,120 ranks). The kill window does not grow
        with it (:meth:`kill_window`).
        """
        if self.flush_interval_s is not None:
            return self.flush_interval_s
        return min(max(FLUSH_INTERVAL_S, world_size / AUTO_BATCHES_PER_S), MAX_AUTO_FLUSH_INTERVAL_S)

    def kill_window(self, world_size: int) -> float | None:
        """What a SIGKILLed rank of a ``world_size``-rank job may lose, where copies keep it below the flush interval.

        The field, if set. Unset, the kill window is the default interval's, 50 ms, in a job whose
        automatic flush interval grew past it (so a larger job does not lose more of a killed
        rank: its ranks copy between flushes); ``None`` (the flush interval is the kill window)
        where the interval is 50 ms or set by the user, who chose what a kill may lose with it.
        """
        if self.kill_window_s is not None:
            return self.kill_window_s
        if self.flush_interval_s is None and self.flush_interval(world_size) > FLUSH_INTERVAL_S:
            return FLUSH_INTERVAL_S
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, base: Settings | None = None) -> Settings:
        """Settings from ``COORDINATOR_*`` variables over ``base`` (default: the defaults).

        Unknown ``COORDINATOR_*`` names are logged as a warning (once per name per process).

        Raises:
            ConfigError: a variable's value does not parse as its field's type.
        """
        env = os.environ if environ is None else environ
        hints = _hints()
        known = {env_name(f.name): f.name for f in dataclasses.fields(cls)}
        for var in env:
            if var.startswith(ENV_PREFIX) and var not in known and var not in _NOT_SETTINGS:
                _warn_unknown(var, known)
        changes: dict[str, Any] = {}
        for var, name in known.items():
            raw = env.get(var)
            if raw is not None and raw != "":
                changes[name] = _parse(name, hints[name], raw, var)
        return dataclasses.replace(base or DEFAULTS, **changes)

    def explicit(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what a ``settings=`` argument sets)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(DEFAULTS, f.name)
        }

    @classmethod
    def resolve(
        cls,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> Settings:
        """Explicit arguments over ``settings`` (its non-default fields) over the environment over defaults.

        Raises:
            ConfigError: a bad value, or an argument that is not a field.
        """
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigError(f"settings= must be a coordinator.Settings, got {type(settings).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(explicit) - names
        if bad:
            raise ConfigError(f"not a Settings field: {', '.join(sorted(bad))}")
        s = cls.from_env(environ)
        over = settings.explicit() if settings is not None else {}
        over.update({k: v for k, v in explicit.items() if v is not None})
        try:
            return dataclasses.replace(s, **over)
        except TypeError as e:
            raise ConfigError(str(e)) from e


DEFAULTS = Settings()
"""The defaults, for modules that need one field's default (e.g. a config dataclass)."""


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _parse(name: str, hint: Any, raw: str, var: str) -> Any:
    """One environment value as its field's type."""
    args = typing.get_args(hint)  # ordered: the first non-None member is the type to parse as
    base = hint
    if type(None) in args:  # X | None: an empty value was skipped, so parse X
        base = next(a for a in args if a is not type(None))
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if typing.get_origin(base) is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if typing.get_origin(base) is Mapping or base is Mapping:
            val = json.loads(raw)
            if not isinstance(val, dict):
                raise ValueError("expected a JSON object")
            return val
        return raw  # str and Literal[str, ...] (checked in __post_init__)
    except ValueError as e:
        raise ConfigError(f"{var}={raw!r:.80}: not a valid value for Settings.{name}: {e}") from None


_warned: set[str] = set()


def _warn_unknown(var: str, known: Mapping[str, str]) -> None:
    if var in _warned:
        return
    _warned.add(var)
    import difflib

    close = difflib.get_close_matches(var, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    _log.warning("%s is set but is not a coordinator setting (ignored)%s", var, hint)
