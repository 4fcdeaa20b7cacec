"""The rank's sender thread, configured from the run's settings and numbering steps by the client's rule."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from coordinator.client.ringlog import RingLog
from coordinator.client.steps import StepNumbering
from coordinator.settings import AUTO_BATCHES_PER_S, FLUSH_INTERVAL_S, Settings
from coordinator.transport.buffer import Buffer
from coordinator.transport.security import CurveKeys
from coordinator.transport.sender import SenderConfig, SenderThread

__all__ = ["start_sender"]

_log = logging.getLogger("coordinator")


def start_sender(
    settings: Settings,
    buf: Buffer,
    *,
    run_id: str,
    rank: int,
    world_size: int,
    incarnation: int,
    endpoint: str | None,
    spool_root: str | None,
    curve: CurveKeys | None,
    name: str,
    project: str,
    numbering: StepNumbering | None = None,
    ring: RingLog | None = None,
) -> SenderThread:
    """Start the thread that ships ``buf`` to ``endpoint`` (``None``: offline, spool only).

    Args:
        spool_root: the run's spool directory; this rank's spool is a directory in it, named by
            rank and incarnation. ``None`` keeps unacknowledged batches in memory only.
        numbering: the rank's automatic step numbering (default: a fresh one).
        ring: the rank's ring (``Settings.rings``), offered in the HELLO; each WELCOME says whether it is read.

    With an endpoint, returns once the aggregator welcomed the rank (at most ``ack_timeout_s``):
    its WELCOME says where a resumed rank's steps continue, which must be known before the first
    point logged without a step is numbered.
    """
    flush_s = settings.flush_interval(world_size)
    kill_s = _kill_window(settings, world_size, flush_s, spool_root, endpoint)
    if rank == 0 and flush_s > FLUSH_INTERVAL_S and settings.flush_interval_s is None:
        _log.info(
            "%d ranks: each rank flushes every %.2f s (Settings.flush_interval_s unset), so that the "
            "aggregator receives at most ~%d batches a second; a SIGKILLed rank may lose its last %s",
            world_size,
            flush_s,
            AUTO_BATCHES_PER_S,
            f"{flush_s:.2f} s"
            if kill_s is None
            else f"{kill_s:.2f} s of its metrics (copied between flushes), {flush_s:.2f} s of fields and texts",
        )
    cfg = SenderConfig(
        run_id=run_id,
        rank=rank,
        incarnation=incarnation,
        endpoint=endpoint,
        spool_dir=None if spool_root is None else f"{spool_root}/rank-{rank}-{incarnation}",
        backpressure=settings.backpressure,
        max_backlog_points=settings.max_buffer_points,
        max_spool_bytes=settings.max_spool_bytes,
        spool_segment_bytes=settings.spool_segment_bytes,
        flush_interval_s=flush_s,
        kill_window_s=kill_s,
        copies_cut=settings.kill_window_s is not None,  # the automatic window keeps the interval's batch rate
        max_batch_points=settings.max_batch_points,
        max_window=settings.max_window_batches,
        ack_timeout_s=settings.ack_timeout_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        curve=curve,
        hello=_hello(world_size, name, project),
    )
    numbering = numbering or StepNumbering(rank)
    if ring is not None:
        ring.offer_in(cfg.hello)
        numbering.on_welcome = ring.welcome
        ring.numbered = numbering.last  # where a key the sender numbered continues once the ring numbers it
        cfg.heard = ring.heard
        # While rows come, wake every 5 heartbeats, at most a sixth of the liveness timeout: a rank whose rows
        # stop then PINGs well before the aggregator would give it up.
        beat = settings.heartbeat_interval_s
        cfg.quiet_heartbeat_s = max(beat, min(5 * beat, settings.liveness_timeout_s / 6))
    sender = SenderThread(cfg, buf, numbering)
    if ring is not None:
        ring.nudge = sender.ask_read
    sender.start()
    if endpoint is not None:
        deadline = time.monotonic() + settings.ack_timeout_s
        while not numbering.welcomed.wait(0.05):
            if buf.fatal is not None or not sender.is_alive():
                break  # raised by the first call that waits
            if time.monotonic() > deadline:
                _log.warning(
                    "rank %d: no WELCOME from the aggregator at %s within %.0f s; automatic steps of a resumed "
                    "rank may restart at 0 until it answers",
                    rank,
                    endpoint,
                    settings.ack_timeout_s,
                )
                break
    return sender


def _kill_window(
    settings: Settings, world_size: int, flush_s: float, spool_root: str | None, endpoint: str | None
) -> float | None:
    """The sender's copy interval (:mod:`~coordinator.transport.copies`): the kill window if below the flush.

    Copies need a spool and an aggregator to recover them from; without them a kill window the
    user set is refused with a warning, the automatic one of a large job silently (rank 0's
    line about the interval says what a kill may lose).
    """
    kill = settings.kill_window(world_size)
    if kill is None or kill >= flush_s:
        return None
    if spool_root is None or endpoint is None:
        if settings.kill_window_s is None:
            return None
        _log.warning(
            "Settings.kill_window_s=%s needs a spool and an aggregator: the kill window is the flush interval, %.3f s",
            kill,
            flush_s,
        )
        return None
    return kill


def _hello(world_size: int, name: str, project: str) -> dict[str, Any]:
    """The HELLO payload: who this sender is."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "world_size": world_size,
        "name": name,
        "project": project,
    }
