"""Which ranks are gone: silent past the liveness timeout, their process exited, or rank 0 died.

The registry (:mod:`coordinator.aggregator.senders`) changes a rank's state on its messages; this
module changes it on their absence, and decides when the run is over: rank 0 closed (or died)
and every rank closed, was lost, or never came within the grace period. Silence is measured on
``time.monotonic`` (a wall-clock step neither loses nor keeps a rank).
"""

from __future__ import annotations

import logging
import socket
import time

import psutil

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.health import Health
from coordinator.aggregator.outbox import Outbox
from coordinator.aggregator.reduce import Reducer
from coordinator.aggregator.senders import Senders

__all__ = ["Liveness"]

_log = logging.getLogger("coordinator.aggregator")

_HOST = socket.gethostname()


def _pid_alive(pid: int, seen: dict[int, bool]) -> bool:
    """Whether process ``pid`` exists, asked once per ``seen`` (one sweep)."""
    v = seen.get(pid)
    if v is None:
        v = seen[pid] = psutil.pid_exists(pid)
    return v


class Liveness:
    """Marks ranks lost and says when the run has ended; not thread-safe."""

    def __init__(
        self,
        cfg: AggregatorConfig,
        senders: Senders,
        reducer: Reducer,
        health: Health,
        outbox: Outbox,
        reasons: list[str],
    ) -> None:
        self._cfg = cfg
        self._senders = senders
        self._reducer = reducer
        self._health = health
        self._outbox = outbox
        self._reasons = reasons

    def check(self, now: float) -> None:
        """Mark ranks lost: silent past the liveness timeout, or (same host) their process is gone.

        Args:
            now: wall-clock time, for the events; silence is measured on ``time.monotonic``.
        """
        mono = time.monotonic()
        # One check per process per sweep, not per sender: senders sharing a process (simulated
        # ranks, a rank's incarnations) made this sweep 17% of the aggregator's time at 4096 senders.
        alive: dict[int, bool] = {}
        for s in self._senders.senders.values():
            if s.state != "live":
                continue
            if mono - s.heard > self._cfg.liveness_timeout_s:
                why = f"silent for {mono - s.heard:.1f} s"
            elif s.pid is not None and s.host == _HOST and not _pid_alive(s.pid, alive):
                why = f"process {s.pid} exited without closing"
            else:
                continue
            self._senders.mark_lost(s, why)
            msg = f"rank {s.rank} lost: {why} after {s.points} points (last step {self._health.last_step(s.rank)})"
            self._outbox.event(now, "rank_lost", s.rank, msg)
            _log.warning("%s", msg)

    def parent_lost(self, now: float) -> None:
        """Rank 0's process died: stop waiting for it, record why."""
        reg = self._senders
        if reg.rank_state.get(0) not in ("closed", "lost"):
            reg.rank_state[0] = "lost"
            self._reducer.rank_done(0)
            for s in reg.senders.values():
                if s.rank == 0 and s.state == "live":
                    s.state = "lost"
                    s.reason = "its process died"
                    reg.persist(s)
            self._reasons.append("rank 0's process died before closing the run")
            self._outbox.event(now, "rank_lost", 0, "rank 0's process died")
            _log.error("rank 0's process (pid %d) died; draining the other ranks", self._cfg.parent_pid)
        if reg.rank0_bye_at is None:
            reg.rank0_bye_at = now

    def finished(self, now: float) -> bool:
        """True once rank 0 closed (or died) and every rank closed, was lost, or never came."""
        reg = self._senders
        if reg.rank0_bye_at is None:
            return False
        waiting_for_new = now - reg.rank0_bye_at < self._cfg.stop_grace_s
        for r in range(self._cfg.world_size):
            st = reg.rank_state.get(r)
            if st == "live" or (st is None and waiting_for_new):
                return False
        return True
