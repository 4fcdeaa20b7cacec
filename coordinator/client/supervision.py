"""Rank 0's ownership of the aggregator process: keep it running, then see the run to its end.

Rank 0 started the aggregator (see :mod:`coordinator.client.connect`); here it restarts it
when it dies (bounded), waits for it to finish the run at ``stop()``, and turns how it ended
into the error ``stop()`` raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator.errors import CoordinatorError, CoordinatorTimeoutError, DeliveryError
from coordinator.journal.store import LocalStore
from coordinator.transport.launcher import AggregatorProcess, AggregatorSupervisor

__all__ = ["OwnedAggregator"]

_log = logging.getLogger("coordinator")


class OwnedAggregator:
    """The aggregator rank 0 started, and the watchdog that restarts it.

    Args:
        process: the started aggregator.
        run_id, endpoint, store_path: the run it serves (for messages and the final report).
        max_restarts: restarts before a crash is fatal to the run.
        start_timeout_s: how long a restarted aggregator may take to bind its socket.
        on_fatal: called with the error when the aggregator cannot be kept running.
    """

    def __init__(
        self,
        process: AggregatorProcess,
        *,
        run_id: str,
        endpoint: str | None,
        store_path: str | None,
        max_restarts: int,
        start_timeout_s: float,
        on_fatal: Callable[[CoordinatorError], None],
    ) -> None:
        self.process = process
        self._run_id = run_id
        self._endpoint = endpoint
        self._store_path = store_path
        self._supervisor = AggregatorSupervisor(
            process, max_restarts=max_restarts, start_timeout_s=start_timeout_s, on_fatal=on_fatal
        )

    def start(self) -> None:
        """Start watching the process."""
        self._supervisor.start()

    def finish(self, wait_s: float) -> CoordinatorError | None:
        """Wait up to ``wait_s`` for the aggregator to end the run; stop it if it has not.

        Returns:
            Why the run did not end well (a timeout, or the reasons of a run closed as failed),
            or ``None``.
        """
        code = None
        if self._supervisor.finished.wait(max(0.0, wait_s)):
            code = self.process.poll()
        if code is None:
            _log.error(
                "run %s: the aggregator was still waiting for other ranks at the deadline; "
                "stopping it (the run is marked failed)",
                self._run_id,
            )
            self._supervisor.stop(5.0)  # a deliberate stop is not a crash to restart
            self.process.terminate(10.0)
            return CoordinatorTimeoutError(
                f"run {self._run_id}: not every rank stopped before the deadline", endpoint=self._endpoint
            )
        if code != 0:
            state, reasons = self._outcome()
            return DeliveryError(
                f"run {self._run_id} was closed as {state}: {reasons} "
                f"(`coordinator show {self._run_id}` has the full report)"
            )
        return None

    def release(self) -> None:
        """Stop the watchdog and make sure the process is gone and its files removed."""
        self._supervisor.stop(5.0)
        self.process.kill()
        self.process.cleanup()

    def _outcome(self) -> tuple[str, str]:
        """The run's final state and the report's reasons, as the aggregator stored them."""
        if self._store_path is None:
            return "failed", "unknown reasons"
        try:
            s = LocalStore(self._store_path, readonly=True)
            try:
                info = s.run_info()
            finally:
                s.close()
        except CoordinatorError as e:
            return "failed", f"the report could not be read ({e})"
        rep = info.report or {}
        return info.state, "; ".join(rep.get("reasons", [])) or "unknown reasons"
