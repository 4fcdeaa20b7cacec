"""What the aggregator produces between two commits: the open transaction, and warnings for ranks.

Every part of the aggregator (senders, fields, liveness, health, recovery) writes into the one
:class:`Outbox`; the loop commits its transaction as a whole, then acks, and a rank's warnings
ride on its next ack. Nothing is acknowledged that is not committed.
"""

from __future__ import annotations

import json

from coordinator.aggregator.counters import Counters
from coordinator.journal.store import LocalStore, TxnData

__all__ = ["Outbox"]


class Outbox:
    """The open transaction (replaced by a fresh one after each commit) and the pending warnings."""

    __slots__ = ("txn", "warnings")

    def __init__(self) -> None:
        self.txn = TxnData()
        self.warnings: dict[tuple[int, int], list[str]] = {}
        """(rank, incarnation) -> warnings for its next ack."""

    def event(self, ts: float, kind: str, rank: int | None, detail: str) -> None:
        """Record a run event (``rank_joined``, ``rank_lost``, ...) in the open transaction."""
        self.txn.events.append((ts, kind, rank, detail))

    def warn(self, rank: int, incarnation: int, message: str) -> None:
        """Queue a warning for a sender; it is logged on the rank at its next ack."""
        self.warnings.setdefault((rank, incarnation), []).append(message)

    def take_warnings(self, rank: int, incarnation: int) -> list[str]:
        """Warnings addressed to a sender since its last ack."""
        return self.warnings.pop((rank, incarnation), [])

    def commit(self, store: LocalStore, counters: Counters) -> None:
        """Commit the open transaction with the counters as they stand.

        Raises:
            SinkError: the store refused it; the transaction is kept for a retry.
        """
        if self.txn.empty():
            return
        self.txn.meta["counters"] = json.dumps(counters)
        store.commit(self.txn)
        self.txn = TxnData()
