"""How a rank finds its aggregator: a given endpoint, or rank 0 starts one and publishes it.

Rank 0 chooses the run id, checks the trackers, starts the aggregator process and publishes
``{run_id, endpoint}`` through the rendezvous; the other ranks look it up. With
``Settings.endpoint`` (and ``run_id``) a launcher has already done all of that.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.client.elastic import elastic_run_id, unused_run_id
from coordinator.core import env as _env
from coordinator.core.redact import redact_text, secret_values
from coordinator.errors import ConfigError, CoordinatorError, SinkError
from coordinator.forward.backend import check_backends
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import run_dir
from coordinator.settings import Settings, env_name
from coordinator.transport.discovery import Placement, Rendezvous
from coordinator.transport.launcher import AggregatorProcess
from coordinator.transport.security import CurveKeys, bind_address, load_secret

__all__ = ["Connection", "RunSpec", "abandon", "connect", "job_keys", "spool_root"]

_log = logging.getLogger("coordinator")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What every rank says about the run it opens (the same on every rank)."""

    project: str
    name: str | None
    policies: dict[str, str]
    with_id: str | None
    root: Path
    """The store root."""
    backends: dict[str, dict[str, object]]
    """Trackers rank 0 checks and the aggregator feeds (name -> options)."""


@dataclass(slots=True)
class Connection:
    """Where this rank sends: the run id, the endpoint, and what rank 0 owns to get there."""

    run_id: str
    endpoint: str | None
    """``None``: no aggregator (offline)."""
    aggregator: AggregatorProcess | None = None
    """Rank 0's aggregator process, started."""
    rendezvous: Rendezvous | None = None


def job_keys(settings: Settings, use_tcp: bool) -> CurveKeys | None:
    """The CURVE keys of a TCP run, from the job secret; ``None`` for ipc or an insecure run.

    Raises:
        ConfigError: TCP without a secret and without ``insecure_tcp``.
    """
    if not use_tcp or settings.mode == "offline":
        return None
    secret = load_secret()
    if secret is not None:
        return CurveKeys.from_secret(secret)
    if not settings.insecure_tcp:
        raise ConfigError(
            f"a multi-node (TCP) run needs a job secret: set {_env.COORDINATOR_SECRET} (16+ characters, the "
            f"same on every rank) or {_env.COORDINATOR_SECRET_FILE}; or pass insecure_tcp=True to accept "
            "unauthenticated writers"
        )
    _log.warning("insecure_tcp=True: the aggregator accepts unauthenticated TCP connections")
    return None


def connect(
    settings: Settings, placement: Placement, spec: RunSpec, *, use_tcp: bool, curve: CurveKeys | None
) -> Connection:
    """Find (other ranks) or start and publish (rank 0) the aggregator of the run.

    Raises:
        ConfigError: inconsistent settings, or a multi-node run without a process group.
        SinkError: a tracker failed its check on rank 0 (every rank raises it).
        CoordinatorError: the aggregator did not start, or rank 0 was not found in time.
    """
    offline = settings.mode == "offline"
    if settings.endpoint and not offline:
        if not settings.run_id:
            raise ConfigError(f"{env_name('endpoint')} is set; set {env_name('run_id')} too")
        return Connection(settings.run_id, settings.endpoint)
    rdzv = Rendezvous(placement) if placement.world_size > 1 else None
    if rdzv is not None and placement.multi_node and rdzv.via != "torch.distributed store":
        raise ConfigError(
            "a multi-node run finds its aggregator through the torch.distributed store: call "
            f"torch.distributed.init_process_group() before init_run(), or set {env_name('endpoint')} "
            f"and {env_name('run_id')} on every rank"
        )
    if placement.rank != 0:
        assert rdzv is not None
        rec = rdzv.lookup(settings.rendezvous_timeout_s)
        if rec.get("error"):
            raise SinkError(f"rank 0 could not start the run: {rec['error']}")
        return Connection(rec["run_id"], None if offline else rec["endpoint"], rendezvous=rdzv)
    label = spec.name or spec.project  # the id's readable part: ddp-spirals-3f9a2c
    run_id = (
        spec.with_id
        or settings.run_id
        or elastic_run_id(spec.root, placement, label)
        or unused_run_id(spec.root, label)
    )
    run_dir(spec.root, run_id)  # validates the id
    if spec.backends:
        try:
            check_backends(spec.backends, run_dir(spec.root, run_id))
        except (CoordinatorError, ImportError) as e:
            # The tracker's message may quote its URI or options: never a credential in it.
            err = e if isinstance(e, ImportError) else SinkError(redact_text(str(e), secret_values(spec.backends)))
            if rdzv is not None:  # the other ranks fail at once instead of timing out
                rdzv.publish({"run_id": run_id, "endpoint": None, "error": str(err), "pid": os.getpid()})
            if err is e:
                raise
            raise err from None

    def publish(endpoint: str | None) -> None:
        if rdzv is not None:
            rdzv.publish({"run_id": run_id, "endpoint": endpoint, "pid": os.getpid()})

    if offline:
        publish(None)
        return Connection(run_id, None, None, rdzv)
    agg = _start_aggregator(
        settings,
        placement,
        spec,
        run_id,
        use_tcp=use_tcp,
        curve=curve is not None,
        rendezvous_file=rdzv.file if rdzv is not None else None,
        publish=publish,
    )
    return Connection(run_id, agg.endpoint, agg, rdzv)


def spool_root(settings: Settings, root: Path, run_id: str) -> Path:
    """Where the run's ranks spool: ``<Settings.spool_dir>/<run id>``, else ``<root>/spool/<run id>``.

    Always a directory of this run alone: the aggregator replays and deletes every rank spool it
    finds there at the end of the run, so runs sharing one ``spool_dir`` must not share it.
    """
    base = Path(settings.spool_dir).absolute() if settings.spool_dir is not None else None
    return base / run_id if base is not None else spool_dir(root, run_id)


def aggregator_config(settings: Settings, placement: Placement, spec: RunSpec, run_id: str) -> dict[str, Any]:
    """The aggregator's ``--config``: the JSON-safe fields of its AggregatorConfig."""
    return {
        "store_path": str(run_dir(spec.root, run_id) / "run.db"),
        "world_size": placement.world_size,
        "project": spec.project,
        "name": spec.name or run_id,
        "policies": dict(spec.policies),
        "default_policy": settings.default_policy,
        "group_timeout_s": settings.group_timeout_s,
        "liveness_timeout_s": settings.liveness_timeout_s,
        "straggler_lag_s": settings.straggler_lag_s,
        "flush_interval_s": settings.flush_interval(placement.world_size),
        "stop_grace_s": settings.stop_grace_s,
        "durable": settings.durable,
        "nice": settings.aggregator_nice,
        "debug": settings.debug,
        "spool_root": str(spool_root(settings, spec.root, run_id)),
        "backends": spec.backends,
        "forward_timeout_s": settings.forward_timeout_s,
    }


def _start_aggregator(
    settings: Settings,
    placement: Placement,
    spec: RunSpec,
    run_id: str,
    *,
    use_tcp: bool,
    curve: bool,
    rendezvous_file: Path | None,
    publish: Callable[[str | None], None],
) -> AggregatorProcess:
    """Start rank 0's aggregator, wait until it listens, and ``publish`` its endpoint to the other ranks.

    Stopped again if it does not start, or if anything (Ctrl-C, a rendezvous store gone) stops the
    publish: otherwise it would run on until this process exits (a notebook's kernel).
    """
    config = dict(aggregator_config(settings, placement, spec, run_id), curve=curve)
    if rendezvous_file is not None:
        config["rendezvous_file"] = str(rendezvous_file)
    agg = AggregatorProcess(
        run_id,
        config,
        tcp_host=bind_address(os.environ.get(_env.MASTER_ADDR), os.environ.get(_env.MASTER_PORT)) if use_tcp else None,
        stderr_path=settings.agg_stderr,
    )
    try:
        # One that dies before it is ready is started again, within the run's restart budget.
        agg.start(settings.aggregator_start_timeout_s, retries=settings.max_aggregator_restarts)
        publish(agg.endpoint)
    except BaseException as e:
        abandon(agg, e)
        raise
    return agg


def abandon(agg: AggregatorProcess, why: BaseException) -> None:
    """Stop an aggregator whose init_run did not complete, and remove its files.

    Interrupted (Ctrl-C, the launcher's SIGTERM): it is asked to stop, so it records the run as
    ``interrupted``. Any other error: it is killed (the error is raised to the caller).
    """
    if isinstance(why, KeyboardInterrupt | SystemExit):
        agg.terminate(10.0)
    else:
        agg.kill()
    agg.cleanup()
