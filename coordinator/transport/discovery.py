"""Who am I (rank, world size) and where is the aggregator (run id, rendezvous).

Rank and world size come from explicit arguments, else torchrun, Open MPI/PMI (Horovod,
mpirun) or SLURM variables. Rank 0 publishes the aggregator's endpoint and the run id (it
starts the aggregator with :mod:`coordinator.transport.launcher`); the other ranks look them
up through the ``torch.distributed`` store when a process group exists, else through a file in
a private per-user directory on this node.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from coordinator.core import env as _env
from coordinator.errors import ConfigError, CoordinatorTimeoutError
from coordinator.settings import env_name

__all__ = [
    "Placement",
    "Rendezvous",
    "detect_placement",
    "new_run_id",
    "pid_alive",
    "private_dir",
    "remove_orphan_record",
    "remove_stale_records",
    "slug",
]

_log = logging.getLogger(__name__)

_NOT_SLUG = re.compile(r"[^a-z0-9]+")

_ERROR_READ_WAIT_S = 10.0
"""At exit, how long a rank 0 that published an error waits for the other ranks to read it."""
_STALE_AGE_S = 1.0
"""A rendezvous file younger than this is never removed as stale (its publisher may be starting)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    restart_count: int
    local_world_size: int = 0
    """Ranks on this node (0: unknown, taken as all of them)."""

    @property
    def multi_node(self) -> bool:
        """True when the launcher says not every rank runs on this node."""
        return 0 < self.local_world_size < self.world_size

    @property
    def beside_rank0(self) -> bool:
        """Whether this rank may run on global rank 0's node, where the aggregator runs and could read its ring:
        in a job on one node, always; in a multi-node job, only a rank whose global rank is its local rank.
        torchrun (and a block placement) numbers node 0's ranks first, so a rank of another node has a global
        rank above its local one. A round-robin placement puts some of node 0's ranks among the others: they
        go over the socket, which costs CPU and loses nothing."""
        return not self.multi_node or self.rank == self.local_rank


def _int_env(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n)
        if v is not None and v.strip():
            try:
                return int(v)
            except ValueError as e:
                raise ConfigError(f"environment variable {n}={v!r} is not an integer") from e
    return None


def detect_placement(rank: int | None = None, world_size: int | None = None) -> Placement:
    """Rank and world size from the arguments, else the launcher's environment, else (0, 1).

    Raises:
        ConfigError: inconsistent or malformed values.
    """
    if rank is None:
        rank = _int_env(_env.RANK, _env.OMPI_RANK, _env.PMI_RANK, _env.SLURM_PROCID)
    if world_size is None:
        world_size = _int_env(_env.WORLD_SIZE, _env.OMPI_SIZE, _env.PMI_SIZE, _env.SLURM_NTASKS)
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    local = _int_env(_env.LOCAL_RANK)
    restarts = _int_env(_env.TORCHELASTIC_RESTART_COUNT) or 0
    local_world = _int_env(_env.LOCAL_WORLD_SIZE, "OMPI_COMM_WORLD_LOCAL_SIZE") or 0
    return Placement(rank, world_size, rank if local is None else local, restarts, local_world)


def new_run_id(label: str | None = None) -> str:
    """A fresh, short, readable run id: ``<slug of label>-<6 hex>``, e.g. ``ddp-spirals-3f9a2c``.

    Args:
        label: the run's name, else its project; lower-cased, every run of other characters than
            letters and digits made one ``-``, cut to 24 characters. Empty or ``None``: ``run``.
    """
    return f"{slug(label or '') or 'run'}-{secrets.token_hex(3)}"


def slug(text: str, limit: int = 24) -> str:
    """``text`` lower-cased, each run of characters but ASCII letters and digits one ``-``, at most ``limit`` long."""
    out = _NOT_SLUG.sub("-", text.lower())[:limit]
    return out.strip("-")


def private_dir() -> Path:
    """This user's 0700 runtime directory for sockets and rendezvous files.

    Raises:
        ConfigError: the directory exists but is not private to this user.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    d = Path(base) / f"coordinator-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{d} must be owned by uid {os.getuid()} with mode 0700")
    return d


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (another user's too; a zombie is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # Linux: a killed process nobody reaped yet (a container's init may never reap it)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def remove_stale_records(directory: Path) -> int:
    """Remove the rendezvous files in ``directory`` whose publisher is gone; returns how many.

    A rank 0 that was killed (or failed its tracker check and exited) leaves its record behind;
    nothing reads it again (a lookup ignores a record whose publisher is dead).
    """
    removed = 0
    now = time.time()
    for m in directory.glob("rdzv-*.json.read-*"):  # read markers of a record already gone
        try:
            if not m.with_name(m.name.rsplit(".read-", 1)[0]).exists() and now - m.stat().st_mtime > _STALE_AGE_S:
                m.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile
    for f in directory.glob("rdzv-*.json"):
        try:
            if now - f.stat().st_mtime < _STALE_AGE_S:
                continue
            pid = json.loads(f.read_text()).get("pid")
        except FileNotFoundError:
            continue  # retracted meanwhile
        except (OSError, ValueError, AttributeError) as e:
            _log.warning("removing unreadable rendezvous file %s: %s", f, e)
            pid = None
        if type(pid) is int and pid_alive(pid):
            continue
        try:
            f.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # retracted meanwhile: nothing left to remove
    return removed


def remove_orphan_record(path: Path, owner: int = 0) -> bool:
    """Remove the rendezvous file ``path`` if its publisher (rank 0) is gone, or is ``owner``; True if removed.

    The aggregator calls it at the run's end with its own rank 0's pid as ``owner``: a rank 0 that
    was killed cannot retract its record, and one still running is past needing it (the run it
    points to has ended) but may yet be killed before it retracts it (torchrun SIGTERMs rank 0 when
    another rank failed, after rank 0's close restored the default handler). A record another
    process published since (an elastic restart's new rank 0) is left to it.
    """
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except ValueError:
        rec = {}
    if _publisher_alive(rec) and not (owner > 0 and rec.get("pid") == owner):
        return False
    path.unlink(missing_ok=True)
    return True


class Rendezvous:
    """Rank 0 publishes a small JSON record; the other ranks wait for it.

    Uses the default ``torch.distributed`` store when a process group is initialised,
    otherwise a file keyed by the launcher's job identity (single node only).
    """

    _calls: ClassVar[dict[str, int]] = {}

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self._store: Any = None
        # Only a program that imported torch.distributed can have a process group: never import
        # torch here (seconds and ~200 MB for MPI or plain-process users who have it installed).
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            self._store = dist.distributed_c10d._get_default_store()
        job = "|".join(
            os.environ.get(n, "")
            for n in (
                _env.MASTER_ADDR,
                _env.MASTER_PORT,
                _env.TORCHELASTIC_RUN_ID,
                env_name("run_id"),
                _env.TORCHELASTIC_RESTART_COUNT,
                "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_JOBID",
            )
        )
        # Workers of one torchrun/mpirun agent share its pid as their parent.
        job += f"|{os.getppid()}"
        n = Rendezvous._calls.get(job, 0)
        Rendezvous._calls[job] = n + 1
        self.key = f"coordinator/run/{n}"
        digest = hashlib.sha256(job.encode()).hexdigest()[:16]
        self._file = private_dir() / f"rdzv-{digest}-{n}.json"

    @property
    def file(self) -> Path | None:
        """The rendezvous file; None with the torch.distributed store."""
        return None if self._store is not None else self._file

    @property
    def via(self) -> str:
        """``"torch.distributed store"`` or the rendezvous file path."""
        return "torch.distributed store" if self._store is not None else str(self._file)

    def publish(self, record: dict[str, Any]) -> None:
        """Rank 0: make ``record`` visible to the other ranks."""
        data = json.dumps(record)
        if self._store is not None:
            self._store.set(self.key, data)
            return
        tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, self._file)
        # Removed at rank 0's exit if it is never retracted (no stop()); an error record once the
        # other ranks have read it (bounded), since rank 0 raises and usually exits right away.
        atexit.unregister(self.retract)
        atexit.register(self.retract, _ERROR_READ_WAIT_S if record.get("error") else 0.0)

    def lookup(self, timeout_s: float) -> dict[str, Any]:
        """Other ranks: wait up to ``timeout_s`` for rank 0's record.

        Raises:
            CoordinatorTimeoutError: rank 0 did not publish in time.
        """
        if self._store is not None:
            from datetime import timedelta

            try:
                self._store.wait([self.key], timedelta(seconds=timeout_s))
            except RuntimeError as e:  # torch raises RuntimeError/DistStoreError on timeout
                raise CoordinatorTimeoutError(
                    f"rank {self.placement.rank}: rank 0 did not publish the aggregator endpoint "
                    f"in the torch.distributed store within {timeout_s} s ({e})"
                ) from e
            raw = self._store.get(self.key)
            rec: dict[str, Any] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            return rec
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rec = json.loads(self._file.read_text())
                if _publisher_alive(rec):
                    if rec.get("error"):  # rank 0 removes it once every rank has read it
                        self._read_marker(self.placement.rank).touch(mode=0o600)
                    return rec
                # A record left by a rank 0 that died: wait for this job's rank 0 to replace it.
            except FileNotFoundError:
                pass  # not published yet: poll until the deadline
            except json.JSONDecodeError:
                pass  # os.replace makes this unlikely; poll again
            if time.monotonic() > deadline:
                raise CoordinatorTimeoutError(
                    f"rank {self.placement.rank}: rank 0 did not publish the aggregator endpoint "
                    f"at {self._file} within {timeout_s} s. Is rank 0 running coordinator.init_run()? "
                    "Across nodes, initialise torch.distributed before init_run()."
                )
            time.sleep(0.02)

    def _read_marker(self, rank: int) -> Path:
        return self._file.with_name(f"{self._file.name}.read-{rank}")

    def retract(self, wait_read_s: float = 0.0) -> None:
        """Rank 0 at close (or exit): remove its record so a later job cannot read a stale one.

        Args:
            wait_read_s: first wait up to this long for every other rank to have read it.
        """
        atexit.unregister(self.retract)
        if self._store is None:
            readers = [self._read_marker(r) for r in range(1, self.placement.world_size)]
            deadline = time.monotonic() + wait_read_s
            while not all(m.exists() for m in readers) and time.monotonic() < deadline:
                time.sleep(0.05)
            for m in readers:
                m.unlink(missing_ok=True)
            try:
                rec = json.loads(self._file.read_text())
            except FileNotFoundError:
                return  # already gone: nothing to retract
            except ValueError:
                rec = {}
            if rec.get("pid") not in (None, os.getpid()):
                return  # another rank 0 (a restart) published since: not ours to remove
            try:
                self._file.unlink()
            except FileNotFoundError:
                pass  # already gone: nothing to retract


def _publisher_alive(rec: dict[str, Any]) -> bool:
    """The file rendezvous is single-node: its publisher must be a running process here."""
    pid = rec.get("pid")
    return type(pid) is int and pid_alive(pid)
