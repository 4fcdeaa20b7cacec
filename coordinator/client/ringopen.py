"""Making a rank's ring (``Settings.rings``): where it goes, how large, and when there is none.

The ring is made at the run's start only where an aggregator may read it (an async run on rank 0's node);
:class:`~coordinator.client.ringlog.RingLog` writes into it. A ``/dev/shm`` without room takes a smaller ring
or the run's spool directory, and says which rings of ended jobs fill it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from coordinator.client.keys import KeyRegistry
from coordinator.client.ringlog import RingLog
from coordinator.settings import RING_BYTES, Settings
from coordinator.transport.buffer import Buffer
from coordinator.transport.ring import RingWriter
from coordinator.transport.ringplace import SHM, left_rings, no_room, place_ring
from coordinator.transport.ringrows import RowWriter

__all__ = ["SMALLEST_RING", "open_ring"]

_log = logging.getLogger("coordinator")

SMALLEST_RING = 1 << 20
"""The smallest a default-sized ring is made in a short ``/dev/shm`` (:func:`open_ring`): 1 MiB holds ~1,200 rows
of 100 keys, 25 s of a 100-key dict at 50 steps/s."""


def open_ring(
    settings: Settings,
    live: bool,
    name: str,
    spool_root: str | None,
    keys: KeyRegistry,
    buf: Buffer,
) -> RingLog | None:
    """With ``settings.rings`` and a ``live`` run (an aggregator that may read the ring: async, on
    rank 0's node as the launcher places the rank), make the rank's ring of ``settings.ring_bytes``,
    ``coordinator-<name>.ring`` (``name``: the run, the rank, its incarnation) in ``settings.ring_dir``, or
    ``/dev/shm``, else the run's spool directory, and its :class:`RingLog`. None otherwise, with a warning where
    no directory has room for it. At the default size, a ``/dev/shm`` without room for it takes a smaller ring
    first (down to :data:`SMALLEST_RING`)."""
    if not (settings.rings and live):
        return None
    capacity = settings.ring_bytes
    name = f"coordinator-{name}.ring"
    dirs = [Path(settings.ring_dir)] if settings.ring_dir else [SHM] + ([Path(spool_root)] if spool_root else [])
    shrink = capacity == RING_BYTES and not settings.ring_dir
    try:
        if spool_root:
            os.makedirs(spool_root, exist_ok=True)
        d, size = place_ring(capacity, dirs, smallest=SMALLEST_RING if shrink else None)
        rows = RowWriter(RingWriter(d / name, size))
    except (OSError, ValueError) as e:
        _log.warning("no ring %s (%s); every row goes over the socket", name, e)
        return None
    if d != dirs[0]:
        _say_on_disk(d, dirs[0], capacity)
    elif size < capacity:
        _log.info(
            "rank's ring in %s is %d MiB, not %d: a larger one does not fit (a ring asks 4 times its size free, and "
            "a smaller one leaves half of the file system free)",
            d,
            size >> 20,
            capacity >> 20,
        )
    return RingLog(rows, keys, buf)


def _say_on_disk(d: Path, shm: Path, capacity: int) -> None:
    """Warn that the rank's ring went to ``d`` (its spool directory) because ``shm`` had no room, naming the
    rings that jobs which died left there: they are what usually fills a container's 64 MiB."""
    left = left_rings([shm])
    taken = (
        f"; {len(left)} ring(s) that ended jobs left there take {sum(r.bytes for r in left) / 2**20:.0f} MiB "
        "(`coordinator rings --remove` deletes them)"
        if left
        else ""
    )
    _log.warning("rank's ring is in %s, not in %s (%s)%s", d, shm, no_room(shm, capacity), taken)
