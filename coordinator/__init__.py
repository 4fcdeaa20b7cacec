"""coordinator: the logging coordinator for distributed training.

Every rank logs through one aggregator owned by rank 0, which deduplicates, reduces across
ranks, and is the single writer of the run's store.

Public modules: ``coordinator`` (this package's ``__all__``), ``coordinator.errors``,
``coordinator.settings`` and ``coordinator.integrations.*``. Every other module
(``coordinator.client``, ``coordinator.transport``, ``coordinator.aggregator``,
``coordinator.journal``, ``coordinator.forward``, ``coordinator.core``, ``coordinator.cli``, ...)
is internal and may change without notice.
"""

from __future__ import annotations

from coordinator.client.handle import Handle
from coordinator.client.models import Model, ModelVersion, init_model, init_model_version
from coordinator.client.run import Run
from coordinator.client.start import init_run
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
from coordinator.settings import Mode, Settings

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigError",
    "CoordinatorError",
    "CoordinatorTimeoutError",
    "DeliveryError",
    "Handle",
    "Mode",
    "Model",
    "ModelVersion",
    "ProtocolError",
    "RetryableTransportError",
    "Run",
    "Settings",
    "SinkError",
    "TransportError",
    "__version__",
    "init_model",
    "init_model_version",
    "init_run",
]
