"""Exception hierarchy: one root, branched by what the caller can do about it."""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ConfigError",
    "CoordinatorError",
    "CoordinatorTimeoutError",
    "DeliveryError",
    "MissingExtraError",
    "ProtocolError",
    "RetryableTransportError",
    "SinkError",
    "TransportError",
    "missing_extra",
]


class CoordinatorError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigError(CoordinatorError, ValueError):
    """A configuration value or environment setting is wrong; fix it and start again."""


class TransportError(CoordinatorError):
    """The aggregator could not be reached or answered badly."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class RetryableTransportError(TransportError):
    """A transport failure that may pass (a restart, a slow peer); retrying can help."""


class CoordinatorTimeoutError(RetryableTransportError, TimeoutError):
    """A bounded wait ran out before the aggregator confirmed the data."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        undelivered_points: int = 0,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.undelivered_points = undelivered_points


class ProtocolError(CoordinatorError):
    """A frame was malformed, oversized, of another protocol version or run."""

    def __init__(self, message: str, *, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


class SinkError(CoordinatorError):
    """The store or a backend failed to persist data."""


class DeliveryError(CoordinatorError):
    """Accepted points were lost or rejected; carries counts for the report."""

    def __init__(self, message: str, *, lost_points: int = 0) -> None:
        super().__init__(message)
        self.lost_points = lost_points


class ClosedError(CoordinatorError):
    """The run was already stopped; the call did nothing."""


DISTRIBUTION = "ddp-coordinator"
"""Our name on PyPI (the import name ``coordinator`` belongs to an unrelated package there)."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def missing_extra(what: str, extra: str, cause: ImportError) -> MissingExtraError:
    """An ImportError for a missing optional dependency that says how to install it.

    The hint names our distribution, never the bare import name: installing ``coordinator``
    from PyPI gives an unrelated package.
    """
    return MissingExtraError(
        f"{what} needs the {extra!r} extra ({cause}): pip install '{DISTRIBUTION}[{extra}]' "
        f"(from a checkout: pip install -e '.[{extra}]')",
        name=cause.name,
    )
