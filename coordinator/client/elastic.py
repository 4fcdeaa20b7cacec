"""Under torchrun, which run an ``init_run`` call writes: the restart identity, kept in the store.

A run id is short and random (``ddp-spirals-3f9a2c``), so the rendezvous identity a restarted
worker group must find its run by is kept beside the runs instead of in the id: one small index
file per (``TORCHELASTIC_RUN_ID``, ``init_run`` call number of the process) under
``<root>/elastic/``. Rank 0 of a fresh job (``TORCHELASTIC_RESTART_COUNT`` 0) adds a record
for its new run; rank 0 of a restarted group (count > 0) continues the run of its own job's
record: the one written by the same elastic agent (host and agent pid: the agent outlives
its workers' restarts), else the latest. So a fresh job with the same ``--rdzv-id`` gets a new
run while a restart continues its job's run. Every read-modify-write of an index file holds an
exclusive ``flock`` on its ``.lock`` file, and the file is replaced atomically, so rank 0s of
concurrent jobs never lose or tear each other's records. The layout is in docs/store.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Set
from pathlib import Path
from typing import Any

from coordinator.core import env as _env
from coordinator.errors import ConfigError
from coordinator.journal.paths import run_dir
from coordinator.transport.discovery import Placement, new_run_id, slug

__all__ = ["MAX_RECORDS", "elastic_run_id", "index_path", "unused_run_id"]

_log = logging.getLogger("coordinator")

MAX_RECORDS = 32
"""Records kept per index file (the oldest are dropped: only the latest jobs can restart)."""

_ID_TRIES = 32
"""Fresh ids drawn before giving up on one no run and no record holds (6 hex digits: a clash is rare)."""

_calls: dict[str, int] = {}
"""Per rendezvous id: how many ``init_run`` calls this process made (a script may open several runs)."""


def index_path(root: Path, rdzv_id: str, call: int) -> Path:
    """The index file of one rendezvous id and ``init_run`` call number under the store root."""
    digest = hashlib.sha256(rdzv_id.encode()).hexdigest()[:12]
    return root / "elastic" / f"{slug(rdzv_id, 32) or 'rdzv'}-{digest}-{call}.json"


def elastic_run_id(root: Path, placement: Placement, label: str | None) -> str | None:
    """Under torchrun, rank 0's run id for this ``init_run`` call; ``None`` outside torchrun.

    Args:
        root: the store root.
        placement: this rank (its ``restart_count`` says whether the group was restarted).
        label: the run's name, else its project (the new id's readable part).

    Raises:
        ConfigError: the index cannot be read or written (the store root is not writable).
    """
    job = os.environ.get(_env.TORCHELASTIC_RUN_ID, "")
    if not job or job == "none":
        return None
    call = _calls.get(job, 0)
    _calls[job] = call + 1
    path = index_path(root, job, call)
    agent = {"host": socket.gethostname(), "agent_pid": os.getppid()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for the read-modify-write; released by close
            records = _read(path)
            if placement.restart_count > 0 and records:
                mine = [r for r in records if all(r.get(k) == v for k, v in agent.items())]
                return str((mine or records)[-1]["run_id"])
            run_id = unused_run_id(root, label, {str(r["run_id"]) for r in records})
            if records:
                _log.info(
                    "torchrun rendezvous id %r already wrote run %s; this is a new job (restart count %d): "
                    "writing run %s",
                    job,
                    records[-1]["run_id"],
                    placement.restart_count,
                    run_id,
                )
            records.append(
                {"run_id": run_id, **agent, "restart_count": placement.restart_count, "created": time.time()}
            )
            _write(path, {"rdzv_id": job, "call": call, "runs": records[-MAX_RECORDS:]})
            return run_id
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"cannot keep the torchrun restart index {path}: {e}") from e


def unused_run_id(root: Path, label: str | None, recorded: Set[str] = frozenset()) -> str:
    """A fresh run id that names no stored run and no ``recorded`` id (a clash would continue an old run).

    Raises:
        ConfigError: every draw clashed (a store holding millions of runs of this label).
    """
    for _ in range(_ID_TRIES):
        run_id = new_run_id(label)
        if run_id not in recorded and not run_dir(root, run_id).exists():
            return run_id
    raise ConfigError(f"no unused run id for {label!r} under {root} after {_ID_TRIES} tries")


def _read(path: Path) -> list[dict[str, Any]]:
    """The index's records, oldest first (none when the file does not exist yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        # Written atomically, so this is damage from outside: say so, and start a new record list.
        _log.warning("torchrun restart index %s is not valid JSON (%s); starting it again", path, e)
        return []
    runs = data.get("runs") if isinstance(data, dict) else None
    return (
        [r for r in runs if isinstance(r, dict) and isinstance(r.get("run_id"), str)] if isinstance(runs, list) else []
    )


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the index atomically (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
