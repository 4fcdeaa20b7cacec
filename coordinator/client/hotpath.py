"""The hot path's rare branches, kept out of ``Run``: precise validation, undoing a rejected call, waiting for room.

Both run on the training thread with the buffer lock held (``wait_for_room`` releases it while
it waits, through the buffer's condition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from coordinator.client.devices import DeviceScalars, check_tensor, is_tensor
from coordinator.client.keys import KeyRegistry
from coordinator.core.columns import Column
from coordinator.core.values import to_metric_value
from coordinator.errors import ClosedError
from coordinator.transport.buffer import Buffer
from coordinator.transport.sender import SenderThread

__all__ = ["log_slow", "rollback", "wait_for_room"]

_log = logging.getLogger("coordinator")


def log_slow(
    data: dict[str, object],
    step: int,
    keys: KeyRegistry,
    cols: dict[str, Column],
    new_column: Callable[[str], Column],
    dev: DeviceScalars,
) -> None:
    """Validate every key and value of a ``log()`` call (raising the precise error), then append all or nothing."""
    for k in data:
        if k not in keys.series:
            keys.check_new(k)
    tensors = {k: check_tensor(k, v) for k, v in data.items() if is_tensor(v)}
    clean = {k: to_metric_value(k, v) for k, v in data.items() if k not in tensors}
    for k, v in data.items():
        c = cols.get(k) or new_column(k)
        if k in tensors:
            dev.defer(k, v, c[0], c[1])  # checked above: cannot raise now
        else:
            c[1].append(clean[k])
        c[0].append(step)


def rollback(cols: dict[str, Column], data: dict[str, object], failed: object, dev: DeviceScalars) -> None:
    """Undo the points of keys before ``failed`` that this ``log()`` call already appended."""
    for k in data:
        if k == failed:
            break
        c = cols[k]
        dev.discard_last(c[0], c[1])
        c[0].pop()
        c[1].pop()
    # The failing key itself: its value may be in (a step append never fails: validated).
    c = cols.get(failed)  # type: ignore[call-overload]
    if c is not None and len(c[1]) > len(c[0]):
        dev.discard_last(c[0], c[1])
        c[1].pop()


def wait_for_room(b: Buffer, sender: SenderThread | None, rank: int, endpoint: str | None) -> None:
    """Block until the buffer has room (the sender took or acknowledged points), warning after 5 s.

    Raises:
        CoordinatorError: the delivery failed for good. ClosedError: no sender thread to make room.
    """
    t0 = time.monotonic()
    warned = False
    while b.pending >= b.max_points:
        if b.fatal is not None:
            raise b.fatal
        if not warned and time.monotonic() - t0 > 5:
            _log.warning(
                "rank %d: log() blocked: %d points not yet acknowledged by the aggregator at %s (max_buffer_points=%d)",
                rank,
                b.pending,
                endpoint,
                b.max_points,
            )
            warned = True
        if sender is None or not sender.is_alive():
            raise ClosedError("the sender thread is not running; cannot make room")
        b.cond.wait(0.5)
