"""What one sender thread is (its run, rank and endpoint) and the settings it runs with.

Kept apart from :mod:`.sender` (which re-exports it): the client builds it from the run's
:class:`~coordinator.settings.Settings` (:mod:`coordinator.client.sending`), the thread only reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.settings import DEFAULTS, FLUSH_INTERVAL_S, Backpressure
from coordinator.transport.security import CurveKeys

__all__ = ["SenderConfig"]


@dataclass(kw_only=True, slots=True)
class SenderConfig:
    """Identity and tunables of one sender."""

    run_id: str
    rank: int
    incarnation: int
    endpoint: str | None
    """Aggregator endpoint; ``None`` means offline (spool only)."""
    spool_dir: str | None = None
    """Write-ahead spool of this sender; ``None`` keeps batches in memory only."""
    backpressure: Backpressure = DEFAULTS.backpressure
    """What happens when the aggregator does not keep up: see init_run."""
    max_backlog_points: int = DEFAULTS.max_buffer_points
    """Points held in memory awaiting a send slot (block: none; drop_oldest: then drop)."""
    max_spool_bytes: int = DEFAULTS.max_spool_bytes
    spool_segment_bytes: int = DEFAULTS.spool_segment_bytes
    flush_interval_s: float = FLUSH_INTERVAL_S
    kill_window_s: float | None = None
    """The kill window when copies of the uncut generation keep it below the flush interval
    (:mod:`.copies`; with a spool and an endpoint); None: the flush interval is the kill window."""
    copies_cut: bool = True
    """Cut what a copy cannot take within the kill window (False: it waits for the flush interval)."""
    max_batch_points: int = DEFAULTS.max_batch_points
    max_window: int = DEFAULTS.max_window_batches
    ack_timeout_s: float = DEFAULTS.ack_timeout_s
    heartbeat_interval_s: float = DEFAULTS.heartbeat_interval_s
    hello: dict[str, Any] = field(default_factory=dict)
    heard: Callable[[], bool] = lambda: False
    """Whether the aggregator heard from the rank since the last call without a message (rows in its ring)."""
    quiet_heartbeat_s: float = 0.0  # the silence allowed while heard() says yes (at least the heartbeat's)
    curve: CurveKeys | None = None
    """Connect as a CURVE client with the job's keys (multi-node TCP)."""
