"""Where runs live on disk: the store root, one run's directory, and the list of runs under a root.

Layout: ``<root>/runs/<run_id>/run.db``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from coordinator.core.limits import DIR_NAME
from coordinator.errors import ConfigError, SinkError
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import RunInfo
from coordinator.journal.schema import connect
from coordinator.settings import env_name

__all__ = ["list_runs", "resolve_root", "run_dir"]

_log = logging.getLogger(__name__)


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The store root: the argument, else ``$COORDINATOR_DIR``, else ``./.coordinator``."""
    if root is None:
        root = os.environ.get(env_name("dir")) or DIR_NAME
    return Path(root).expanduser().absolute()


def run_dir(root: Path, run_id: str) -> Path:
    """Directory of one run under the store root.

    Raises:
        ConfigError: ``run_id`` is not a safe directory name.
    """
    if not run_id or "/" in run_id or run_id in (".", "..") or "\x00" in run_id:
        raise ConfigError(f"run id {run_id!r} is not a valid directory name")
    return root / "runs" / run_id


def list_runs(root: Path) -> list[RunInfo]:
    """Every run under ``root``, oldest first; unreadable runs are skipped with a warning."""
    out: list[RunInfo] = []
    runs = root / "runs"
    if not runs.is_dir():
        return out
    for d in sorted(runs.iterdir()):
        path = d / "run.db"
        if not path.exists():
            continue
        try:
            db = connect(path, readonly=True, durable=False)
            try:
                out.append(JournalReader(db, path).run_info())
            finally:
                db.close()
        except (SinkError, sqlite3.Error) as e:
            _log.warning("skipping unreadable run %s: %s", d, e)
    out.sort(key=lambda r: r.created)
    return out
