"""coordinator: the logging coordinator for distributed training.

Every rank logs through one aggregator owned by rank 0, which deduplicates, reduces across
ranks, and is the single writer of the run's store.
"""

from __future__ import annotations

from coordinator.client.run import Handle, Mode, Run, init_run
from coordinator.errors import (
    ClosedError,
    ConfigError,
    CoordinatorError,
    CoordinatorTimeoutError,
    DeliveryError,
    ProtocolError,
    RetryableTransportError,
    SinkError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigError",
    "CoordinatorError",
    "CoordinatorTimeoutError",
    "DeliveryError",
    "Handle",
    "Mode",
    "ProtocolError",
    "RetryableTransportError",
    "Run",
    "SinkError",
    "TransportError",
    "__version__",
    "init_run",
]
