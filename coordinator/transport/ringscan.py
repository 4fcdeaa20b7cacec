"""A pass's walk over a ring's records: where each run of records of one size starts, in one C call where built.

:meth:`RingReader.spans <coordinator.transport.ring.RingReader.spans>` walks the records in Python,
~1.2 µs a record where their sizes alternate (a dict, then an ``append()``, at every step: a run of
one record each). The optional extension ``_ringscan.c`` (pyproject.toml) walks the records that
read whole, with the same checks, in one call; the records from the first that does not on (late
or damaged: the extension decides nothing about it) are left to the Python loop, which says which.
``COORDINATOR_PUREPYTHON=1`` keeps the Python loop for every record (read at each pass);
tests/transport/test_ringscan.py holds the two to the same spans.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from coordinator.core.env import COORDINATOR_PUREPYTHON
from coordinator.transport.ring import RingReader

__all__ = ["built", "span_table"]


def _load() -> Callable[[object, int, int, int], tuple[int, bytes]] | None:
    try:
        from coordinator.transport._ringscan import scan
    except ImportError:  # installed without a compiler: the Python loop
        return None
    return scan


_SCAN = _load()


def built() -> bool:
    """Whether the extension was built and imports (``coordinator doctor`` says so)."""
    return _SCAN is not None


def span_table(reader: RingReader, *, final: bool = False) -> np.ndarray:
    """Every run of records past ``reader``'s cursor, as :meth:`RingReader.spans` gives them, one row each:
    (body length, the first's position, count), int64; the cursor moves past them all.

    Raises:
        RingDamaged: as :meth:`RingReader.spans` (the cursor is then past the runs before the damage).
    """
    table: list[np.ndarray] = []
    if _SCAN is not None and os.environ.get(COORDINATOR_PUREPYTHON) != "1":
        reached, spans = _SCAN(reader.map, reader.cursor, reader.written, reader.capacity)
        table.append(np.frombuffer(spans, dtype=np.int64).reshape(-1, 3))
        reader.cursor = reached
    rest = list(reader.spans(final=final))  # the Python loop: every record, or those from where the scan stopped
    if rest or not table:
        table.append(np.array(rest, dtype=np.int64).reshape(-1, 3))
    return table[0] if len(table) == 1 else np.concatenate(table)
