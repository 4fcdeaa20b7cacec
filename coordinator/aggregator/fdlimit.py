"""The aggregator's open-file limit: one descriptor per connected rank, plus slack."""

from __future__ import annotations

import logging
import resource

__all__ = ["ensure_fd_limit"]

_log = logging.getLogger("coordinator.aggregator")

_FD_SLACK = 256
"""Descriptors besides the ranks' connections: the journal and its WAL, spools read at recovery,
the query reader, forwarders' files and sockets, ZeroMQ's own."""


def ensure_fd_limit(world_size: int) -> int:
    """Raise the soft open-file limit to one descriptor per rank plus slack (up to the hard limit).

    The ROUTER holds one descriptor per connected rank. Under the usual soft limit of 1024, a job
    of about a thousand ranks or more had its last ranks' connections refused by accept() (their
    HELLOs never answered); the hard limit is usually far higher, and raising the soft one is
    allowed without privileges. Below the hard limit it is left as it is; a hard limit too low is
    warned about. Returns the soft limit now in force.
    """
    need = world_size + _FD_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < need:
        _log.warning(
            "open-file limit %d is below the %d that %d ranks need: ranks past it cannot connect (raise ulimit -n)",
            new,
            need,
            world_size,
        )
    return max(new, soft)
