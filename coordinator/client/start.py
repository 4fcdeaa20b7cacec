"""``init_run``: resolve the settings once, place this rank, connect it, and choose the run's mode class."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.client.backends import run_backends
from coordinator.client.connect import Connection, RunSpec, abandon, connect, job_keys, spool_root
from coordinator.client.deprecated import settings_from_keywords
from coordinator.client.modes import DisabledRun, ReadOnlyRun, SyncRun
from coordinator.client.run import Run
from coordinator.client.tags import change_tags
from coordinator.core.limits import DIR_NAME
from coordinator.core.policies import PolicyTable
from coordinator.core.tags import check_tags
from coordinator.errors import ConfigError
from coordinator.journal.paths import spool_dir
from coordinator.journal.refs import resolve_ref
from coordinator.journal.store import resolve_root, run_dir
from coordinator.settings import Mode, Settings
from coordinator.transport import wire
from coordinator.transport.discovery import detect_placement
from coordinator.transport.spool import SpoolWriter

__all__ = ["init_run"]

_log = logging.getLogger("coordinator")

_debug_handlers: list[logging.Handler] = []
"""The stderr handler ``Settings.debug`` added (at most one per process: a second run adds none)."""


def init_run(
    project: str = "default",
    name: str | None = None,
    *,
    with_id: str | None = None,
    mode: Mode | None = None,
    policies: dict[str, str] | None = None,
    backend: str | Sequence[str] | None = None,
    backend_options: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    capture_output: bool | None = None,
    settings: Settings | None = None,
    **deprecated: Any,
) -> Run:
    """Open the run on this rank; call it with the same arguments on every rank.

    Global rank 0 starts the aggregator process and publishes its endpoint; every rank
    (rank 0 included) connects to it. Rank and world size come from torchrun, MPI or SLURM
    variables unless the settings give them.

    Every tunable is a field of :class:`~coordinator.Settings`; each is resolved once, in this
    order: an argument of this function, a field of ``settings`` that differs from its default,
    the ``COORDINATOR_<FIELD>`` environment variable, the default.

    Args:
        project: project name recorded with the run.
        name: human-readable run name (default: the run id).
        with_id: an existing run id: ``mode="read-only"`` reopens it (a unique prefix of the id,
            or ``latest``, also names it); otherwise the new run takes this exact id (every rank
            must pass the same one).
        mode: ``async`` (default), ``sync`` (every call waits until durable), ``offline``
            (each rank writes a local spool; upload with ``coordinator sync``), ``disabled``
            (no-ops), ``read-only`` (open a stored run). Same as ``Settings.mode``.
        policies: glob -> reduction policy (``mean``, ``sum``, ``min``, ``max``, ``rank0``,
            ``per_rank``, ``all``) for the main series of matching keys; other keys use
            ``Settings.default_policy``.
        backend: external tracker(s) fed from the run's store by the aggregator: ``mlflow``,
            ``tensorboard``, ``wandb``, ``neptune`` (a name, a comma-separated string or a list).
            Rank 0 checks each (credentials, URI, project) before the run starts; a bad one
            raises ``SinkError`` with the backend's own message on rank 0, and on the other
            ranks as soon as they look for the aggregator. Same as ``Settings.backend``.
        backend_options: options of the backend (or a dict keyed by backend name); the
            ``Settings.forward_*`` fields are their defaults. Same as ``Settings.backend_options``.
        tags: tags added to the run's tag set ``sys/tags`` (a list of non-empty str of at most
            128 characters). Every rank may pass them (or others): the run's tags are the union.
            Change them later with ``run["sys/tags"].add(...)`` / ``.remove(...)``; list runs by
            tag with ``coordinator runs --tag T``.
        capture_output: each rank's stdout/stderr lines also become its text series
            ``monitoring/stdout`` and ``monitoring/stderr`` (rate-limited, bounded, counted). Same
            as ``Settings.capture_output``.
        settings: every other knob (buffering, timeouts, transport, spool, ...).
        **deprecated: the former keywords (``flush_interval_s=``, ``dir=``, ...): each still
            works, with a ``DeprecationWarning`` naming its ``Settings`` field.

    Returns:
        The :class:`Run`, also a context manager (``with init_run(...) as run:``).

    Raises:
        ConfigError: bad arguments, settings or environment; CoordinatorError: the aggregator
        did not start or could not be found. TypeError: an unknown keyword, or ``tags`` not a
        list of str. ValueError: an empty or too long tag.
    """
    tag_list = [] if tags is None else check_tags(tags, "init_run(tags=)")
    old = settings_from_keywords(deprecated, stacklevel=2)
    s = Settings.resolve(
        settings,
        **old,
        mode=mode,
        backend=_backend_names(backend),
        backend_options=backend_options,
        capture_output=capture_output,
    )
    _debug_logging(s.debug)
    for nm, val in (("project", project), ("name", name)):
        if val is not None and (type(val) is not str or not val or len(val) > 256):
            raise ConfigError(f"{nm} must be a non-empty str of at most 256 characters, got {val!r:.80}")
    try:
        PolicyTable(policies, s.default_policy)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    placement = detect_placement(s.rank, s.world_size)
    root = resolve_root(s.dir or DIR_NAME)
    common: dict[str, Any] = dict(placement=placement, settings=s, name=name or "", project=project)
    if s.mode == "read-only":
        if not with_id:
            raise ConfigError("mode='read-only' needs with_id= (a run id, or 'latest')")
        if tag_list:
            raise ConfigError("init_run(tags=) cannot change a run opened read-only")
        run_id = _resolve_run_id(root, with_id)
        ro = ReadOnlyRun(run_id=run_id, store_path=str(run_dir(root, run_id) / "run.db"), **common)
        ro.open()
        return ro
    if s.mode == "disabled":
        return DisabledRun(run_id=with_id or "disabled", **common)

    backends = run_backends(s) if s.mode in ("async", "sync") else {}
    use_tcp = s.transport == "tcp" or (s.transport == "auto" and placement.multi_node)
    curve = job_keys(s, use_tcp)
    spec = RunSpec(project, name, dict(policies or {}), with_id, root, backends)
    conn = connect(s, placement, spec, use_tcp=use_tcp, curve=curve)
    cls = SyncRun if s.mode == "sync" else Run
    try:
        run = cls(
            run_id=conn.run_id,
            endpoint=conn.endpoint,
            spool_root=_rank_spool_root(s, root, conn.run_id),
            aggregator=conn.aggregator,
            rendezvous=conn.rendezvous,
            store_path=str(run_dir(root, conn.run_id) / "run.db"),
            curve=curve,
            backends=tuple(backends),
            **common,
        )
    except BaseException as e:  # e.g. Ctrl-C while the first WELCOME is awaited
        if conn.aggregator is not None:
            abandon(conn.aggregator, e)
        if conn.rendezvous is not None and placement.rank == 0:
            conn.rendezvous.retract()
        raise
    if s.mode == "offline" and placement.rank == 0:
        _write_offline_meta(s, spec, conn, placement.world_size)
    if tag_list:
        change_tags(run, "add", tag_list)
    _log.debug("rank %d: run %s (%s) via %s", placement.rank, conn.run_id, s.mode, conn.endpoint)
    return run


def _backend_names(backend: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``init_run(backend=)`` as ``Settings.backend``: one name, comma-separated names, or a list."""
    if backend is None:
        return None
    names = backend.split(",") if isinstance(backend, str) else backend
    return tuple(n.strip() for n in names if n.strip())


def _rank_spool_root(s: Settings, root: Path, run_id: str) -> str | None:
    """The spool directory of the run's ranks; ``None`` when a rank keeps batches in memory only."""
    if s.spool_dir is None and s.backpressure != "spool" and s.mode != "offline":
        return None
    return str(spool_root(s, root, run_id))


def _write_offline_meta(s: Settings, spec: RunSpec, conn: Connection, world_size: int) -> None:
    """What ``coordinator sync`` needs to create the run from an offline spool."""
    meta = SpoolWriter(spool_dir(spec.root, conn.run_id) / "run.meta")
    meta.append(
        0,
        0,
        b"",
        wire.encode_map(
            {
                "run_id": conn.run_id,
                "project": spec.project,
                "name": spec.name or conn.run_id,
                "world_size": world_size,
                "policies": spec.policies,
                "default_policy": s.default_policy,
            }
        ),
    )
    meta.close()


def _debug_logging(on: bool) -> None:
    """``Settings.debug``: log connections, batches, acks and retries of this process to stderr."""
    if not on or _debug_handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"))
    _log.addHandler(handler)
    _log.setLevel(logging.DEBUG)
    _debug_handlers.append(handler)


def _resolve_run_id(root: os.PathLike[str], with_id: str) -> str:
    """A read-only run's id: ``with_id`` names it exactly, by a unique prefix, or is ``latest``."""
    return resolve_ref(Path(root), with_id)
