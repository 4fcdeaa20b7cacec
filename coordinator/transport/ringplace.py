"""Where a rank's ring lives (:mod:`.ring`), and which files may be rings.

A ring is made in the node's shared memory where it has room, else in the rank's spool directory
(:func:`pick_ring_dir`); only a process on the same machine (the same boot id, :func:`boot_id`)
can read it. Paths that a HELLO or a journal names are mapped or deleted only when they are named
as rings (:func:`ring_named`): the aggregator's reader (:mod:`coordinator.aggregator.rings`) and
``coordinator purge`` share that check.
"""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.transport.ring import HEADER_BYTES

__all__ = ["boot_id", "pick_ring_dir", "ring_named"]


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
    need = headroom * (HEADER_BYTES + capacity)
    tried = []
    for d in candidates:
        try:
            st = os.statvfs(d)
        except OSError as e:
            tried.append(f"{d}: {e.strerror}")
            continue
        free = st.f_bavail * st.f_frsize
        if not os.access(d, os.W_OK):
            tried.append(f"{d}: not writable")
        elif free < need:
            tried.append(f"{d}: {free} bytes free, under {need:.0f}")
        else:
            return d
    raise ValueError(f"no directory has room for a {capacity}-byte ring: {'; '.join(tried) or 'none given'}")
