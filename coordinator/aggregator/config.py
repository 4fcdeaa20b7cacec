"""What one aggregator serves: :class:`AggregatorConfig`, and its JSON form.

Rank 0 passes the config as a JSON file (every field but ``run_id``) in the run's private socket
directory, named by ``--config-file`` (never on the command line: it holds the trackers'
credentials); each tunable's default comes from :data:`coordinator.settings.DEFAULTS`, so the
process and the client agree on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.policies import PolicyTable
from coordinator.settings import DEFAULTS, FLUSH_INTERVAL_S

__all__ = ["AggregatorConfig"]


@dataclass(kw_only=True, slots=True)
class AggregatorConfig:
    """What one aggregator serves."""

    run_id: str
    """The run every rank writes to."""
    store_path: str
    """The run's ``run.db``."""
    world_size: int
    """Number of ranks expected."""
    project: str = "default"
    """Project name recorded with the run."""
    name: str = ""
    """Human-readable run name."""
    endpoint: str = ""
    """ZeroMQ endpoint to bind (socket mode only)."""
    parent_pid: int = 0
    """Rank 0's pid; when it disappears the run is closed as failed after draining the others."""
    policies: dict[str, str] = field(default_factory=dict)
    """Glob -> reduction policy."""
    default_policy: str = DEFAULTS.default_policy
    """Policy of keys no glob matches."""
    group_timeout_s: float = DEFAULTS.group_timeout_s
    """Longest a (key, step) group waits for ranks that never logged the key."""
    liveness_timeout_s: float = DEFAULTS.liveness_timeout_s
    """A rank silent this long is reported lost."""
    straggler_lag_s: float = DEFAULTS.straggler_lag_s
    """A rank reaching steps this much later than the fastest (median of recent steps) is a straggler."""
    flush_interval_s: float = FLUSH_INTERVAL_S
    """The ranks' flush interval (``Settings.flush_interval``): a rank one step behind for less may
    only not have flushed yet (the straggler check's grace)."""
    stop_grace_s: float = DEFAULTS.stop_grace_s
    """After rank 0's goodbye, how long to wait for ranks that never connected."""
    durable: bool = DEFAULTS.durable
    """SQLite ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``."""
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    """External trackers fed from the journal: name -> options (see coordinator.forward.backend)."""
    forward_timeout_s: float = DEFAULTS.forward_timeout_s
    """At the run's end, how long the forwarders may take to catch up before giving up (resumable)."""
    nice: int = DEFAULTS.aggregator_nice
    """CPU niceness added to the aggregator process: training processes get the CPU first."""
    debug: bool = DEFAULTS.debug
    """Log every connection, batch and ack at DEBUG level (``Settings.debug``)."""
    curve: bool = False
    """Require CURVE with keys derived from the job secret (read from the environment, never argv)."""
    spool_root: str = ""
    """The ranks' spool directory; at the end what lost ranks left there is recovered."""
    restart: bool = False
    """This process replaces an aggregator of the same job that died (the launcher's restart): the
    rank states it restores from the store are this job's. The first aggregator of a job on an
    existing run (``init_run(with_id=...)``) restores ranks that closed in earlier jobs: their
    goodbyes do not end this one."""
    rendezvous_file: str = ""
    """Rank 0's rendezvous file (single node); removed at the run's end if rank 0 died without retracting it."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not self.run_id:
            raise ValueError("run_id must not be empty")
        PolicyTable(self.policies, self.default_policy)  # raises naming a bad policy

    @classmethod
    def from_json(cls, run_id: str, text: str) -> AggregatorConfig:
        """The config of ``run_id`` from the JSON object of the other fields.

        Raises:
            ValueError: not JSON, or a bad value.
            TypeError: a key that is not a field.
        """
        return cls(run_id=run_id, **json.loads(text))
