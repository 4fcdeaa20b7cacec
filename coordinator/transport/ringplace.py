"""Where a rank's ring lives (:mod:`.ring`), and which files may be rings.

A ring is made in the node's shared memory where it has room (a smaller one where only that fits, at
the default size), else in the rank's spool directory (:func:`place_ring`, :func:`pick_ring_dir`);
only a process on the same machine (the same boot id, :func:`boot_id`) can read it. Paths that a
HELLO or a journal names are mapped or deleted only when they are named as rings
(:func:`ring_named`): the aggregator's reader (:mod:`coordinator.aggregator.rings`) and
``coordinator purge`` share that check.

A ring's writer and its reader each hold a shared ``flock`` on its file while they have it
(:mod:`.ring`). A ring no process holds was left by a job whose ranks and aggregator died before
they removed it: its memory stays taken (in ``/dev/shm`` until the machine restarts) and its
unread rows wait for ``coordinator sync``. :func:`left_rings` finds them (the aggregator warns of
them as it attaches its first ring, and ``coordinator rings`` lists them); :func:`remove_left`
deletes one only while it can hold the file's lock alone.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from coordinator.transport.ring import HEADER_BYTES, read_header
from coordinator.transport.ringrows import names_path

__all__ = [
    "SHM",
    "RingFile",
    "boot_id",
    "left_rings",
    "no_room",
    "pick_ring_dir",
    "place_ring",
    "remove_left",
    "ring_files",
    "ring_named",
    "unread_bytes",
]

SHM = Path("/dev/shm")
"""The node's shared memory, where a rank's ring goes first."""


class RingFile(NamedTuple):
    """A ring's file as :func:`ring_files` found it."""

    path: Path
    held: bool
    """Whether a process has it (its writer or a reader holds its lock); False: a job left it."""
    run_id: str
    rank: int
    incarnation: int
    bytes: int
    """The memory (or disk) its file takes."""
    unread: int
    """Bytes of rows no aggregator has committed (``coordinator sync`` of its run stores them)."""
    writer_pid: int


def ring_named(path: Path) -> bool:
    """Whether ``path`` is named as a rank's ring may be (absolute, ``coordinator-*.ring``): what the
    aggregator maps, and what ``coordinator purge`` deletes, of a path a HELLO or a journal names."""
    return path.is_absolute() and path.name.startswith("coordinator-") and path.name.endswith(".ring")


def boot_id() -> str:
    """This machine's boot id ("" where there is none to read): two processes with the same one share its memory."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pick_ring_dir(capacity: int, candidates: list[Path], *, headroom: float = 4.0) -> Path:
    """The first of ``candidates`` (e.g. ``/dev/shm``, then the rank's spool directory) with room for a ring.

    A directory qualifies if it exists, is writable and has ``headroom`` times the ring's bytes
    free: containers often give ``/dev/shm`` only 64 MiB for the whole node. A file in a disk's
    directory, mapped, outlives a killed process the same way (its pages stay in the page cache).

    Raises:
        ValueError: no candidate qualifies.
    """
    tried = []
    for d in candidates:
        why = no_room(d, capacity, headroom=headroom)
        if why is None:
            return d
        tried.append(why)
    raise ValueError(f"no directory has room for a {capacity}-byte ring: {'; '.join(tried) or 'none given'}")


def place_ring(
    capacity: int, candidates: list[Path], *, smallest: int | None = None, headroom: float = 4.0, keep: float = 0.5
) -> tuple[Path, int]:
    """Where a ring goes, and its size: :func:`pick_ring_dir`'s choice at ``capacity``, except that with
    ``smallest`` the first candidate (the node's shared memory) first takes a smaller ring, halved down to
    ``smallest``, before a later one (a disk's directory) takes the whole.

    A smaller ring goes there only while ``keep`` of that file system (half) stays free after it, for the job's
    other users (a DataLoader's shared tensors): a container's 64 MiB ``/dev/shm`` takes no 16 MiB
    ring (it asks four times its size free) but takes three of 8 MiB, then one each of 4, 2 and 1 MiB,
    whose rows the aggregator reads as they fill, and the next ranks' rings go to disk.

    Raises:
        ValueError: no candidate qualifies.
    """
    if smallest is not None and candidates:
        size = capacity
        while size >= smallest:
            if no_room(candidates[0], size, headroom=headroom) is None and (
                size == capacity or _leaves(candidates[0], size, keep)
            ):
                return candidates[0], size
            size //= 2
    return pick_ring_dir(capacity, candidates, headroom=headroom), capacity


def _leaves(d: Path, capacity: int, keep: float) -> bool:
    """Whether a ring of ``capacity`` bytes in ``d`` leaves ``keep`` of its file system free."""
    try:
        st = os.statvfs(d)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize - (HEADER_BYTES + capacity) >= keep * st.f_blocks * st.f_frsize


def no_room(d: Path, capacity: int, *, headroom: float = 4.0) -> str | None:
    """Why directory ``d`` takes no ring of ``capacity`` bytes (:func:`pick_ring_dir`); None where it does."""
    need = headroom * (HEADER_BYTES + capacity)
    try:
        st = os.statvfs(d)
    except OSError as e:
        return f"{d}: {e.strerror}"
    free = st.f_bavail * st.f_frsize
    if not os.access(d, os.W_OK):
        return f"{d}: not writable"
    if free < need:
        return f"{d}: {free} bytes free, under {need:.0f}"
    return None


def _parse_name(path: Path) -> tuple[str, int, int]:
    """(run id, rank, incarnation) of a ring's file ``coordinator-<run id>-<rank>-<incarnation>.ring``; a name
    of another shape is all run id, with rank and incarnation -1."""
    middle = path.name[len("coordinator-") : -len(".ring")]
    run, _, inc = middle.rpartition("-")
    run, _, rank = run.rpartition("-")
    if run and rank.isdigit() and inc.isdigit():
        return run, int(rank), int(inc)
    return middle, -1, -1


def _probe(path: Path, fd: int) -> RingFile | None:
    """What the ring open at ``fd`` is, trying its lock alone (held on return when it was free).

    A file whose header is all zeros, with no lock, is a ring whose writer died (or failed) after
    allocating it and before stamping it: it takes its memory all the same, so it is one (empty).
    Any other file that is not a ring is not.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True
    head = read_header(fd)
    if head is None:
        if held or os.pread(fd, HEADER_BYTES, 0) != bytes(HEADER_BYTES):
            return None
        head = (0, 0, 0, 0, False)
    _, pid, written, released, _ = head
    run, rank, inc = _parse_name(path)
    return RingFile(path, held, run, rank, inc, os.fstat(fd).st_blocks * 512, written - released, pid)


def unread_bytes(path: Path) -> int | None:
    """Bytes of rows written into the ring at ``path`` that no commit released yet (0: it is gone; None: it is
    not a ring)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        head = read_header(fd)
    finally:
        os.close(fd)
    return None if head is None else head[2] - head[3]


def ring_files(dirs: Iterable[Path]) -> list[RingFile]:
    """The rings in ``dirs`` (files named as rings that hold a ring's header), held or left, by path.

    A directory that does not exist or cannot be read has none; a file that vanishes while it is
    looked at is skipped.
    """
    found: list[RingFile] = []
    for d in dict.fromkeys(dirs):
        try:
            paths = sorted(d.glob("coordinator-*.ring"))
        except OSError:
            continue
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                ring = _probe(path, fd)
            finally:
                os.close(fd)  # lets the lock go
            if ring is not None:
                found.append(ring)
    return found


def left_rings(dirs: Iterable[Path]) -> list[RingFile]:
    """The rings in ``dirs`` that no process holds: jobs that ended without removing them left them."""
    return [r for r in ring_files(dirs) if not r.held]


def remove_left(path: Path) -> RingFile | None:
    """Delete the ring at ``path`` and its names file if no process holds it; what was deleted (None: held,
    gone, or not a ring). Its lock is held while it is deleted, so no writer or reader takes it meanwhile."""
    if not ring_named(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        ring = _probe(path, fd)
        if ring is None or ring.held:
            return None
        path.unlink(missing_ok=True)
        names_path(path).unlink(missing_ok=True)
        return ring
    finally:
        os.close(fd)
