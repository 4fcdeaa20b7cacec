"""The delivery counters a rank reports when it closes (the BYE payload), named once.

The client fills a :class:`ByeCounters` from its buffer; the aggregator keeps every such counter
per rank in the run's final report, and fails the run when :data:`UNDELIVERED` is not zero.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

__all__ = ["UNDELIVERED", "ByeCounters"]


class ByeCounters(TypedDict):
    """A closing rank's own account of its points (every value a non-negative int)."""

    undelivered: int  # accepted but never acknowledged when the rank closed: the run fails
    accepted: int  # every point log() accepted
    dropped_points: int  # dropped under backpressure "drop_oldest" (counted, never silent)
    redacted: int  # field values (or parts) redacted on the rank (redact_keys/redact_values/redact)


UNDELIVERED: Final[Literal["undelivered"]] = "undelivered"
"""The counter the aggregator acts on (a key of :class:`ByeCounters`)."""
