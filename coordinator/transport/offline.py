"""Offline mode: with no aggregator, the spool is the run's only destination.

The spool then holds the whole conversation (HELLO, every batch, BYE) for ``coordinator sync``
to upload later. A batch is durable once written; one that cannot be written is lost, and
reported as such. Requests that need an aggregator's answer are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.errors import CoordinatorError, DeliveryError
from coordinator.transport import wire
from coordinator.transport.batches import OutBatch
from coordinator.transport.buffer import Buffer
from coordinator.transport.requests import Request
from coordinator.transport.writeahead import WriteAhead

__all__ = ["OfflineSpooler"]


class OfflineSpooler:
    """Writes an offline rank's messages to its spool (sender thread)."""

    def __init__(self, wal: WriteAhead, *, rank: int, buf: Buffer, envelope: Callable[[int, int], bytes]) -> None:
        """Args:
        wal: the rank's write-ahead spool.
        rank: this rank (for messages).
        buf: where delivery (or loss) is reported.
        envelope: the envelope of a message kind and sequence number.
        """
        self._wal = wal
        self._rank = rank
        self._buf = buf
        self._envelope = envelope
        self.lost_points = 0

    def hello(self, payload: dict[str, Any]) -> None:
        """Open the conversation with the rank's HELLO."""
        self._wal.spool.append(wire.HELLO, 0, self._envelope(wire.HELLO, 0), wire.encode_map(payload))

    def store(self, b: OutBatch, now: float) -> None:
        """Spool a numbered batch; it counts as delivered once written."""
        self._wal.write(b, now)
        if b.loc is not None:
            self._buf.progress(b.gen, b.points)
            return
        err = DeliveryError(
            f"offline rank {self._rank}: batch {b.seq} ({b.points} points) could not be written to the spool",
            lost_points=b.points,
        )
        self.lost_points += b.points
        self._buf.fail(err, lost_points=b.points)

    def serve(self, req: Request, counters: dict[str, int]) -> None:
        """Answer a control request: BYE (with the rank's ``counters``) goes to the spool, others are refused."""
        if req.kind != wire.BYE:
            req.refuse(
                CoordinatorError(
                    "offline runs have no aggregator to read from; upload with `coordinator sync` and read the store"
                )
            )
            return
        payload = dict(req.payload, **counters)
        self._wal.spool.append(wire.BYE, 0, self._envelope(wire.BYE, 0), wire.encode_map(payload))
        req.answer({})
