"""Where runs live on disk: the store root, one run's directory, and the list of runs under a root.

Layout: ``<root>/runs/<run_id>/run.db`` (with its WAL, the aggregator's ``writer.lock``, the
forwarders' cursors and ``artifacts/``); a run's ranks spool under ``<root>/spool/<run_id>/``.
Also what retention needs to know of a run directory: its size, its last activity, whether a
live process holds its writer lock, its tags.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import stat
from pathlib import Path

from coordinator.core.limits import DIR_NAME
from coordinator.core.tags import TAGS_PATH
from coordinator.errors import ConfigError, SinkError
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import RunInfo
from coordinator.journal.schema import connect
from coordinator.settings import env_name

__all__ = [
    "WRITER_LOCK",
    "dir_bytes",
    "last_activity",
    "list_runs",
    "resolve_root",
    "run_dir",
    "run_tags",
    "spool_dir",
    "writer_active",
]

WRITER_LOCK = "writer.lock"
"""The file in a run directory its writer (the aggregator, an upload) holds an exclusive ``flock`` on."""

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


def spool_dir(root: Path, run_id: str) -> Path:
    """Where the run's ranks spool by default (``Settings.spool_dir`` unset): ``<root>/spool/<run_id>``."""
    return run_dir(root, run_id).parent.parent / "spool" / run_id


def dir_bytes(d: Path) -> int:
    """Bytes of the regular files under ``d`` (symbolic links are not followed; 0 when absent)."""
    total = 0
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return 0
    for e in entries:
        st = e.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            total += dir_bytes(Path(e.path))
        elif stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def last_activity(d: Path) -> float:
    """The latest modification time of the run's database, its WAL and its lock file (0 when none exists)."""
    latest = 0.0
    for name in ("run.db", "run.db-wal", WRITER_LOCK):
        try:
            latest = max(latest, (d / name).stat().st_mtime)
        except FileNotFoundError:
            continue
    return latest


def writer_active(d: Path) -> bool:
    """True when a live process holds the run's writer lock (a shared, non-blocking ``flock`` try).

    The probe never takes the lock from its holder, and never creates the lock file: a run
    without one has no writer.
    """
    try:
        fd = os.open(d / WRITER_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops our shared lock, if we took it
    return False


def run_tags(info: RunInfo) -> list[str]:
    """The run's tags (the field ``sys/tags``), sorted; empty when it has none.

    Raises:
        SinkError, sqlite3.Error: the store cannot be read.
    """
    path = info.path / "run.db"
    db = connect(path, readonly=True, durable=False)
    try:
        fv = JournalReader(db, path).field(TAGS_PATH)
    finally:
        db.close()
    if fv is None or fv[0] != "list":
        return []
    return sorted(str(t) for t in fv[1])
