"""The forwarders a serving aggregator runs: start, report their standing, close at the run's end.

A tracker problem never fails the run: the journal has everything, and
``coordinator sync <run> --to <backend>`` resumes from the forwarder's cursor. An offline upload
runs none.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from coordinator.aggregator.outbox import Outbox
from coordinator.core.redact import redact_text, redact_tree, secret_values
from coordinator.errors import SinkError
from coordinator.forward.forwarder import Forwarder

__all__ = ["Forwarders"]

_log = logging.getLogger("coordinator.aggregator")


class Forwarders:
    """The run's forwarders (one per backend); empty unless :meth:`start` was called."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self.forwarders: list[Forwarder] = []
        self._warned: set[str] = set()
        self._secrets: list[str] = []  # the trackers' credentials, masked in every message we pass on

    def __bool__(self) -> bool:
        return bool(self.forwarders)

    def start(self, store_path: str, backends: dict[str, dict[str, Any]]) -> None:
        """Start one forwarder thread per backend (name -> options)."""
        self._secrets = secret_values(backends)
        for name, options in backends.items():
            f = Forwarder(store_path, name, options)
            self.forwarders.append(f)
            f.start()

    def positions(self) -> dict[str, list[Any]]:
        """Per forwarder ``[chunk cursor, fatal error or None, text cursor]``: how far it has the journal.

        An ACK names the journal position as the last chunk id (``j``) and the last text id
        (``jt``); ``wait()`` returns once every forwarder's two cursors passed both.
        """
        return {
            f.backend_name: [
                f.position,
                None if f.error is None else redact_text(str(f.error), self._secrets),
                f.text_position,
            ]
            for f in self.forwarders
        }

    def warn_first_errors(self, outbox: Outbox, rank0_incarnation: int | None) -> None:
        """Send a forwarder's first error to rank 0 (logged there as a warning), once."""
        for f in self.forwarders:
            err = f.error or f.last_error
            if err and f.backend_name not in self._warned:
                self._warned.add(f.backend_name)
                if rank0_incarnation is not None:
                    msg = redact_text(f"{f.backend_name} forwarder: {err}", self._secrets)
                    outbox.warn(0, rank0_incarnation, msg)

    def close(self, timeout_s: float, final_state: str) -> dict[str, Any]:
        """Let each forwarder catch up (bounded), finish the tracker's run; per backend what it did."""
        out: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        for f in self.forwarders:
            try:
                out[f.backend_name] = f.close(max(0.0, deadline - time.monotonic()), final_state=final_state)
            except SinkError as e:
                out[f.backend_name] = {**f.stats(), "error": redact_text(str(e), self._secrets)}
                _log.error("%s (resume with `coordinator sync %s --to %s`)", e, self._run_id, f.backend_name)
        return dict(redact_tree(out, self._secrets))

    def abort(self) -> None:
        """Stop every forwarder without finishing (as a crash would)."""
        for f in self.forwarders:
            f.abort(1.0)
