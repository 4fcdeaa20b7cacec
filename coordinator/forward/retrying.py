"""The forwarder's retry loop: a call retried with jittered backoff until it succeeds, or given up.

Every failed call (network errors, 5xx, 429, a proxy's undecodable HTML page) is retried with
the backoff of :mod:`coordinator.core.retry`, or after the server's ``Retry-After``. Errors that a
retry cannot fix (:data:`PERMANENT`) are tried ``max_rejected_attempts`` times, then the forwarder
keeps the error (raised by its drain/close) and stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from coordinator.core.retry import Backoff, retry_after_of, wait
from coordinator.errors import ConfigError, SinkError
from coordinator.forward.backend import BackendRejectedError
from coordinator.forward.settings import ForwarderSettings

__all__ = ["PERMANENT", "Interrupted", "Retrying"]

_log = logging.getLogger("coordinator.forward.forwarder")

PERMANENT = (BackendRejectedError, ConfigError, TypeError, AttributeError, AssertionError)
"""Errors a retry of the same batch cannot fix: a refusal (authentication, permission, validation:
adapters raise BackendRejectedError for those), or a bug in an adapter. Anything else (a proxy's
HTML error page the client cannot decode, a connection error, 5xx, 429) is transient."""


class Interrupted(Exception):
    """The stop event or the deadline came while a batch was still unsent."""


class Retrying:
    """The retry loop of :class:`~coordinator.forward.forwarder.Forwarder` (its base class)."""

    backend_name: str
    settings: ForwarderSettings
    error: SinkError | None
    last_error: str | None
    path: Path
    _backoff: Backoff

    def _count(self, name: str, n: int) -> None:
        raise NotImplementedError

    def _save(self) -> None:
        raise NotImplementedError

    def _attempt(
        self, fn: Callable[[], Any], stop: threading.Event | None, deadline: float | None, *, points: int
    ) -> Any:
        """Call ``fn`` until it succeeds, backing off between attempts; see the module docstring."""
        attempt = 0
        rejected = 0
        while True:
            if self.error is not None:
                raise Interrupted
            try:
                return fn()
            except PERMANENT as e:
                rejected += 1
                if rejected >= self.settings.max_rejected_attempts:
                    self._give_up(e, rejected, points)
                err: Exception = e
            except Exception as e:  # any client error (network, 5xx, 429) is retried with backoff
                err = e
            attempt += 1
            self._count("retries", 1)
            self.last_error = f"{type(err).__name__}: {err}"
            delay = self._backoff.delay(attempt, retry_after_of(err))
            if attempt == 1 or attempt % 10 == 0:
                _log.warning(
                    "%s: attempt %d failed (%s); retrying in %.1f s", self.backend_name, attempt, self.last_error, delay
                )
            if not wait(delay, stop=stop, deadline=deadline):
                raise Interrupted

    def _give_up(self, e: Exception, rejected: int, points: int) -> NoReturn:
        """Stop forwarding after the backend refused the same batch ``rejected`` times."""
        self.last_error = f"{type(e).__name__}: {e}"
        self._count("failed_points", points)
        self.error = SinkError(
            f"{self.backend_name}: the backend refused a batch of {points} points "
            f"{rejected} times, forwarding stopped: {e}"
        )
        self.error.__cause__ = e
        _log.error("%s", self.error)
        self._persist_counters()
        raise Interrupted from e

    def _persist_counters(self) -> None:
        try:
            self._save()
        except OSError as e:
            _log.warning("%s: could not save the cursor file %s: %s", self.backend_name, self.path, e)
